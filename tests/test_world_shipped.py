"""Every shipped file of the stand-in world (data/world) loads, has the shapes and units it claims,
and is listed in data/world/PROVENANCE.md with the command that made it and its current sha256.

Folders that are produced later (dataset/, experiment/, heldout/, base_model/) are tested once
they exist; the relaxed structures must always be there. No calculator is needed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

DATA = Path(__file__).resolve().parents[1] / "data" / "world"
PROVENANCE_OUTPUTS = ("PROVENANCE.md", "provenance.json")
EV_PER_A3_TO_GPA = 160.21766208
SHIPPED = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*")
                 if p.is_file() and p.relative_to(DATA).as_posix() not in PROVENANCE_OUTPUTS)
OPTIONAL = [d for d in ("dataset", "experiment", "heldout", "base_model", "deepmd_model") if (DATA / d).is_dir()]
CELL_ATOMS = {"train56": 56, "cell112": 112, "cell252": 252, "cell448": 448}


def _json(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def _check_labelled_frames(frames, where: str, max_force_eV_A: float = 20.0) -> None:
    """Energies per atom, forces and stresses of labelled frames in physical ranges (eV, Å)."""
    for k, atoms in enumerate(frames):
        n = len(atoms)
        energy = atoms.get_potential_energy() / n
        forces = atoms.get_forces()
        stress = atoms.get_stress(voigt=True)
        assert -10.5 < energy < -7.0, f"{where} frame {k}: {energy} eV/atom"  # C/N solids, CHGNet
        assert forces.shape == (n, 3) and np.isfinite(forces).all(), f"{where} frame {k}"
        assert np.abs(forces).max() < max_force_eV_A, f"{where} frame {k}: force > {max_force_eV_A} eV/Å"
        assert stress.shape == (6,) and np.abs(stress).max() * EV_PER_A3_TO_GPA < 50.0, f"{where} frame {k}"
    rms = np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2))
    assert 0.02 < rms < 5.0, f"{where}: force RMS {rms} eV/Å"


# ------------------------------------------------------------------------------- structures


def test_structures_are_shipped():
    for name in ("teacher_unit.extxyz", "reality_unit.extxyz", "relax.json"):
        assert (DATA / "structures" / name).is_file(), name


@pytest.mark.parametrize("name", ["teacher", "reality"])
def test_relaxed_unit(name):
    atoms = read(DATA / "structures" / f"{name}_unit.extxyz")
    relax = _json("structures/relax.json")[name]
    assert len(atoms) == 28 and atoms.get_chemical_formula() == "C12N16"
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    assert a == pytest.approx(b, abs=1e-3) and gamma == pytest.approx(120.0, abs=0.05)
    assert alpha == pytest.approx(90.0, abs=0.05) and beta == pytest.approx(90.0, abs=0.05)
    assert 6.9 < a < 7.3 and 3.0 < c / 2 < 4.3  # Å: heptazine g-C3N4, AB stacking
    assert relax["a_A"] == pytest.approx((a + b) / 2, abs=1e-6)
    assert relax["spacing_A"] == pytest.approx(c / 2, abs=1e-6)
    assert relax["converged"] and relax["max_force_eV_A"] < 0.02  # eV/Å
    if "forces" in atoms.calc.results:  # the teacher's file stores them, reality's only the energy
        assert np.abs(atoms.get_forces()).max() < 0.02
    assert atoms.get_potential_energy() / 28 == pytest.approx(relax["energy_per_atom_eV"], abs=1e-5)


def test_reality_binds_closer_than_teacher():
    relax = _json("structures/relax.json")
    assert relax["reality"]["spacing_A"] < relax["teacher"]["spacing_A"] - 0.3


# ------------------------------------------------------------------------------- binding curve


@pytest.mark.skipif(not (DATA / "binding_curve.json").exists(), reason="not produced yet")
def test_binding_curve():
    curve = _json("binding_curve.json")
    d = np.array(curve["spacing_A"])
    assert (np.diff(d) > 0).all() and 2.5 <= d[0] and d[-1] < curve["reference_spacing_A"] <= 12.0
    blocks = [curve, curve.get("on_teacher_unit", curve)]
    for block in blocks:
        for who in ("teacher", "reality"):
            e = np.array(block[f"{who}_meV_per_atom"])
            assert e.shape == d.shape and np.isfinite(e).all()
            assert np.abs(e).max() < 500.0  # meV/atom
            m = block["minimum"][who]
            assert d[0] < m["spacing_A"] < d[-1] and 0.0 < m["depth_meV_per_atom"] < 200.0
            assert e.min() == pytest.approx(-m["grid_depth_meV_per_atom"], abs=1e-3)
        assert block["minimum"]["reality"]["spacing_A"] < block["minimum"]["teacher"]["spacing_A"]
        assert (block["minimum"]["reality"]["depth_meV_per_atom"]
                > 2 * block["minimum"]["teacher"]["depth_meV_per_atom"])
    assert curve["structure"]["atoms"] == 28 and curve["versions"]["chgnet"]


# ------------------------------------------------------------------------------- later folders


@pytest.mark.parametrize("folder", OPTIONAL)
def test_optional_folder(folder):
    CHECKS[folder]()


def _check_dataset():
    from difftre_torch.frames import read_frames_file as read_all_frames

    summary = _json("dataset/dataset.json")
    for split in ("train", "val", "test"):
        frames = read_all_frames(DATA / "dataset" / summary["files"][split])  # ase's own .gz read is quadratic
        assert len(frames) == summary["counts"][split], split
        _check_labelled_frames(frames, f"dataset/{split}")
        assert all(a.info.get("split") == split for a in frames)


def _check_heldout():
    from recipes.world.heldout import read_heldout

    summary = _json("heldout/heldout.json")
    cells = read_heldout(DATA / "heldout")
    assert set(cells) == set(summary["cells"])
    for cell, frames in cells.items():
        entry = summary["cells"][cell]
        assert len(frames) == entry["frames"] and len(frames[0]) == entry["atoms"]
        if cell in CELL_ATOMS:
            assert entry["atoms"] == CELL_ATOMS[cell]
        _check_labelled_frames(frames, f"heldout/{cell}")
        d3 = np.concatenate([(a.get_forces() - a.arrays["teacher_forces"]).ravel() for a in frames])
        assert 0.005 < np.sqrt(np.mean(d3**2)) < 0.2  # D3 forces, eV/Å


def _check_experiment():
    from difftre_torch.experiment.readers import read_columns, read_gr

    lattice = _json("experiment/lattice.json")
    assert 6.9 < lattice["a_A"] < 7.3 and 3.0 < lattice["spacing_A"] < 4.3
    assert 0 < lattice["a_err_A"] < 0.05 and 0 < lattice["spacing_err_A"] < 0.05
    summary = _json("experiment/experiment_summary.json")
    for name in summary["files"]:
        assert (DATA / "experiment" / name).is_file(), name
    for path in sorted((DATA / "experiment").glob("*.gr")) + sorted((DATA / "experiment").glob("*.sq")):
        data = read_gr(path)
        assert data.x.min() >= 0 and np.isfinite(data.values).all()
        assert data.x.max() < (40.0 if path.suffix == ".sq" else 30.0)  # Q in Å⁻¹, r in Å
    for path in sorted((DATA / "experiment").glob("*.csv")):
        function = "S" if path.stem.endswith("_S") else ("rdf" if path.stem.endswith("_rdf") else "G")
        data = read_columns(path, function)
        assert np.isfinite(data.values).all() and (data.sigma > 0).all()


def _check_base_model():
    metrics = _json("base_model/metrics.json")
    assert (DATA / "base_model" / "base.ckpt").stat().st_size > 1000
    assert metrics["r_max_A"] >= 6.0
    value = lambda x: x["value"] if isinstance(x, dict) else x  # {"value", "ci"} or a number
    test = metrics["test"]
    assert 0 < value(test["energy_rmse_meV_per_atom"]) < 100  # meV/atom
    assert 0 < value(test["forces_rmse_meV_per_A"]) < 2000  # meV/Å


def _check_deepmd_model():
    """The shipped DeePMD model through difftre_torch on the test split gives the force and
    energy RMSE that DeePMD's own ``dp --pt test`` recorded (an independent evaluation path)."""
    pytest.importorskip("deepmd")
    from difftre_torch.force_matching import ReferenceFrames
    from difftre_torch.frames import read_frames_file
    from difftre_torch.potentials.base import evaluate
    from difftre_torch.potentials.deepmd import load_deepmd

    metrics = _json("deepmd_model/metrics.json")
    potential = load_deepmd(DATA / "deepmd_model" / "model.pth")
    frames = ReferenceFrames.from_atoms(read_frames_file(DATA / "dataset" / "test.extxyz.gz"))
    recorded = {t["system"].rsplit("/", 1)[-1]: t for t in metrics["test"]}
    sums: dict[str, list] = {}  # formula → [frames, Σ ΔF², force components, Σ (ΔE/N)²]
    for numbers, positions, cells, energies, forces in frames.groups:  # one group per atom order
        counts = np.bincount(numbers.numpy(), minlength=8)
        acc = sums.setdefault(f"C{counts[6]}N{counts[7]}", [0, 0.0, 0, 0.0])
        for k in range(0, len(positions), 16):
            ev = evaluate(potential, positions[k:k + 16], cells[k:k + 16], numbers)
            acc[0] += len(ev.energy)
            acc[1] += float(((ev.forces - forces[k:k + 16]) ** 2).sum())
            acc[2] += ev.forces.numel()
            acc[3] += float((((ev.energy.detach() - energies[k:k + 16]) / numbers.numel()) ** 2).sum())
    assert sorted(sums) == sorted(recorded)
    for formula, (n, f2, nf, e2) in sums.items():
        t = recorded[formula]
        assert t["frames"] == n
        assert (f2 / nf) ** 0.5 == pytest.approx(t["force_rmse_eV_per_A"], rel=1e-5)
        assert (e2 / n) ** 0.5 == pytest.approx(t["energy_rmse_per_atom_eV"], rel=1e-5)


CHECKS = {"dataset": _check_dataset, "heldout": _check_heldout, "experiment": _check_experiment,
          "base_model": _check_base_model, "deepmd_model": _check_deepmd_model}


# ------------------------------------------------------------------------------- provenance


def _provenance_rows() -> dict[str, dict]:
    """The file table of PROVENANCE.md: path (relative to data/world) -> bytes, sha256, command."""
    text = (DATA / "PROVENANCE.md").read_text()
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \| `([^`]*)` \|", line)
        if match:
            path = match.group(1)
            rel = path.split("data/world/", 1)[1] if "data/world/" in path else path
            rows[rel] = {"bytes": int(match.group(2)), "sha256": match.group(3), "command": match.group(4)}
    return rows


def test_provenance_is_shipped_with_the_measured_section():
    text = (DATA / "PROVENANCE.md").read_text()
    assert "## Measured for this project, re-measured" in text
    assert all(pkg in text for pkg in ("torch", "nequip", "chgnet", "dftd3", "ase", "numpy"))


@pytest.mark.parametrize("name", SHIPPED)
def test_file_has_provenance(name):
    rows = _provenance_rows()
    assert name in rows, f"data/world/{name} is not in PROVENANCE.md: run python -m recipes.world.provenance"
    row = rows[name]
    assert row["command"].startswith("python -m "), f"{name}: no command ({row['command']})"
    assert row["bytes"] == (DATA / name).stat().st_size, f"{name} changed since PROVENANCE.md was written"
    assert row["sha256"] == hashlib.sha256((DATA / name).read_bytes()).hexdigest(), (
        f"{name} changed since PROVENANCE.md was written: rerun python -m recipes.world.provenance")
