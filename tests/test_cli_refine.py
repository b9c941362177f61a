"""``difftre refine`` end to end on a material the code has never seen, from a YAML file alone.

A rock-salt Na/Cl cell (64 atoms) with a Lennard-Jones base and a learnable pair correction,
sampled by the batched sampler at an NPT state point (refined) and an NVT one at the experiment's
cell (compared only); targets: a G(r) from a CSV and the lattice length from a JSON; labelled
frames (the LJ itself as labels) to evaluate on; two kinds of report checks. No Python is written
for the material: the test only writes files and calls the command line. Very short MD: the test
is about the machinery, not the physics (~30 s on one core).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from difftre_torch.cli import main

SIGMA_A, EPSILON_EV, CUTOFF_A = 2.5, 0.1, 5.0  # nearest neighbours at 2.8 Å ≈ 2^(1/6) σ
LATTICE_A = 5.6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_job(folder: Path) -> Path:
    """The input files and the job YAML of the Na/Cl refinement; returns the config path."""
    cell = bulk("NaCl", "rocksalt", a=LATTICE_A, cubic=True).repeat((2, 2, 2))
    write(folder / "nacl.extxyz", cell)
    # a smooth, plausible total G(r) = 4πρr(g − 1) (Å⁻²) with σ = 0.05 Å⁻²
    r = np.linspace(0.5, 5.0, 46)
    g = 1.0 + 0.8 * np.exp(-((r - 2.8) / 0.25) ** 2) - 0.3 * np.exp(-((r - 3.6) / 0.4) ** 2)
    g = np.where(r < 2.2, 0.0, g)
    G = 4 * np.pi * len(cell) / cell.get_volume() * r * (g - 1.0)
    np.savetxt(folder / "G_nacl.csv", np.c_[r, G, np.full_like(r, 0.05)], delimiter=",", header="r,G,dG",
               comments="")
    (folder / "lattice.json").write_text(json.dumps({"a_A": LATTICE_A, "a_err_A": 0.01}))
    frames = []
    for k in range(3):
        atoms = cell.copy()
        atoms.rattle(0.05, seed=k)
        atoms.calc = AseLennardJones(sigma=SIGMA_A, epsilon=EPSILON_EV, rc=CUTOFF_A, smooth=False)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    write(folder / "labelled.extxyz", frames)
    config = {
        "system": {"structure": "nacl.extxyz"},
        "potential": {"kind": "lennard_jones", "sigma_A": SIGMA_A, "epsilon_eV": EPSILON_EV, "cutoff_A": CUTOFF_A,
                      "correction": {"cutoff_A": CUTOFF_A, "centers_A": [3.0, 4.0], "width_A": 0.7}},
        "sampler": {"kind": "batched", "timestep_fs": 2.0, "barostat_tau_fs": 200.0, "equilibration_steps": 50,
                    "reequilibration_steps": 10, "snapshots_per_replica": 10, "stride": 5, "seed": 3},
        "state_points": [{"name": "npt", "temperature_K": 300.0, "pressure_GPa": 0.0001},
                         {"name": "nvt_exp", "temperature_K": 300.0, "cell": "targets", "refine": False}],
        "targets": [
            {"name": "G_total", "observable": "G", "file": "G_nacl.csv", "function": "G", "x_range": [1.0, 4.8]},
            {"name": "a", "observable": "lattice_length", "file": "lattice.json", "value_key": "a_A",
             "sigma_key": "a_err_A", "options": {"axes": "abc", "repeats": [2, 2, 2]}},
        ],
        "trainer": {"updates": 2, "learning_rate": 0.01, "progress": False, "tensorboard": False},
        "compare": {"n_blocks": 2},
        "evaluation": {"n_boot": 50, "sets": [
            {"name": "rattled", "file": "labelled.extxyz", "references": {"lj": "label"}}]},
        "report": {"title": "Na/Cl: LJ refined against a G(r)", "checks": [
            {"kind": "r_w_cut", "target": "G_total", "state_point": "npt", "threshold": 0.0},
            {"kind": "within", "target": "a", "state_point": "npt", "threshold": 0.5},
            {"kind": "errors_not_worse", "reference": "lj", "metric": "forces_rmse_meV_per_A"}]},
        "output": {"dir": "unused"},
    }
    path = folder / "nacl.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _load_refined(path: Path):
    """The refined model file back: base (LJ state_dict) plus correction."""
    from difftre_torch.potentials.analytic import LennardJones
    from difftre_torch.potentials.io import load_corrected

    def base(p: Path):
        lj = LennardJones(SIGMA_A, EPSILON_EV, CUTOFF_A)
        lj.load_state_dict(torch.load(p, weights_only=True))
        return lj

    return load_corrected(path, base)


def test_refine_a_new_material_from_yaml(tmp_path, capsys):
    config = write_job(tmp_path)
    out = tmp_path / "out"
    command = ["refine", str(config), "--out", str(out), "--threads", "1"]

    t0 = time.perf_counter()
    code = main(command)
    first_s = time.perf_counter() - t0
    log = capsys.readouterr()
    assert code == 0, log.err[-3000:]
    assert f"output: {out}" in log.out  # the plan names the --out folder
    assert "sampling npt" in log.out and "sampling nvt_exp" in log.out

    report, summary_path = out / "report" / "REPORT.md", out / "report" / "summary.json"
    assert report.exists() and summary_path.exists()
    assert report.read_text().startswith("# Na/Cl: LJ refined against a G(r)")
    summary = json.loads(summary_path.read_text())
    for model in ("base", "refined"):
        structure = summary["structure"][model]
        assert set(structure["npt"]) == {"G_total", "a"}
        assert set(structure["nvt_exp"]) == {"G_total"}  # the cell's lattice is fixed there: not compared
        assert np.isfinite(structure["npt"]["G_total"]["r_w"])
        assert len(structure["npt"]["a"]["model"]) == 3  # a, b, c per unit cell
        errors = summary["evaluation"][model]["sets"]["rattled"]["vs_lj"]["forces_rmse_meV_per_A"]
        assert np.isfinite(errors["value"])
    # the base is the labels' own LJ; the refined model has moved away from it
    assert summary["evaluation"]["base"]["sets"]["rattled"]["vs_lj"]["forces_rmse_meV_per_A"]["value"] < 1e-3
    checks = summary["checks"]
    assert any(name.startswith("R_w of G_total") for name in checks)
    assert any(name.startswith("a within") for name in checks)
    assert any("forces_rmse_meV_per_A vs lj" in name for name in checks)
    assert all(isinstance(c["holds"], bool) for c in checks.values())

    run = json.loads((out / "steps" / "refine.json").read_text())["refined"]
    assert run["lambda"] == 0.0 and len(run["history"]) == 2
    model_file = out / "refine" / "lambda_0" / "refined_potential.correction.pt"
    assert model_file.exists() and Path(run["model"]) == model_file
    refined = _load_refined(model_file)
    assert refined.correction.coefficients.abs().sum() > 0  # two Adam steps moved the correction
    frame = read(tmp_path / "labelled.extxyz", index=0)
    energy = refined(torch.as_tensor(frame.positions)[None], torch.as_tensor(frame.cell.array)[None],
                     torch.as_tensor(frame.numbers))
    assert energy.shape == (1,) and torch.isfinite(energy).all()

    # the same command again: every step from the cache, nothing sampled
    t0 = time.perf_counter()
    code = main(command)
    second_s = time.perf_counter() - t0
    log = capsys.readouterr()
    assert code == 0, log.err[-3000:]
    assert "sampling" not in log.out and "running" not in log.out
    for step in ("structure_base base", "refine refined", "structure_refined refined", "evaluate base",
                 "evaluate refined"):
        assert f"[difftre] {step}: done before" in log.out
    assert second_s < 0.5 * first_s, (first_s, second_s)

    # `difftre report OUT` renders the report again from the results alone
    report.unlink()
    assert main(["report", str(out)]) == 0
    log = capsys.readouterr()
    assert report.exists() and "| check | holds |" in log.out
    assert json.loads(summary_path.read_text())["checks"].keys() == checks.keys()
    print(f"first run {first_s:.1f} s, cached rerun {second_s:.1f} s")
