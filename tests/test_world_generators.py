"""Each stand-in-world generator run for a handful of steps with the real calculators (CHGNet 0.3.0,
DFT-D3(BJ)), chained as in production: relax → trajectories (one quick job per campaign) →
dataset and held-out export → binding curve → provenance, all in a temporary directory.

Plus the held-out reader's errors (no calculator). The whole file takes ~15 s of CPU (~30 s wall
on the shared 2-core machine); the binding curve's pure parts are in test_world_binding.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write

pytest.importorskip("chgnet", reason="the stand-in world needs the [world] extra")
pytest.importorskip("dftd3", reason="the stand-in world needs the [world] extra")

from recipes.world import binding, heldout, provenance  # noqa: E402

QUICK_JOBS = {  # campaign -> --only (one job each)
    "training": "train_train56_T300_d3.2",
    "heldout": "heldout_train56_T300",
    "experiment": "npt300_reality_cell112_s101",
    "states": "npt300_1GPa_reality_cell112_s141",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Run the generators once into a temporary tree; returns its paths."""
    import torch

    from recipes.world import dataset, relax, trajectories

    root = tmp_path_factory.mktemp("world")
    data, runs = root / "data", root / "runs"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFTRE_THREADS", "1")
        torch.set_num_threads(1)
        try:
            relax.main(["--out", str(data / "structures"), "--steps", "3", "--spacings", "3.4"])
            for campaign, only in QUICK_JOBS.items():
                trajectories.main([campaign, "--quick", "--only", only, "--runs", str(runs),
                                   "--structures", str(data / "structures")])
            dataset.build(runs, data / "dataset")
            heldout.main(["--runs", str(runs), "--out", str(data / "heldout")])
            binding.main(["--out", str(data / "binding_curve.json"), "--structures",
                          str(data / "structures"), "--spacings", "3.3", "4.0", "6.0"])
        finally:
            torch.set_num_threads(threads)
    return {"root": root, "data": data, "runs": runs}


# ------------------------------------------------------------------------------- relax


def test_relax_quick_writes_both_units(world):
    out = world["data"] / "structures"
    report = json.loads((out / "relax.json").read_text())
    for name in ("teacher", "reality"):
        atoms = read(out / f"{name}_unit.extxyz")
        assert len(atoms) == 28 and atoms.get_chemical_formula() == "C12N16"
        assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (28, 3)
        assert report[name]["steps"] <= 3 and report[name]["start_spacing_A"] == 3.4
        assert report[name]["a_A"] == pytest.approx(np.mean(atoms.cell.cellpar()[:2]), abs=1e-9)
    # D3 binds: reality's energy per atom is below the teacher's at the same start
    assert report["reality"]["energy_per_atom_eV"] < report["teacher"]["energy_per_atom_eV"]


# ------------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("campaign", sorted(QUICK_JOBS))
def test_quick_job_of_each_campaign_finishes(world, campaign):
    job = world["runs"] / QUICK_JOBS[campaign]
    done = json.loads((job / "done.json").read_text())
    assert done["n_frames"] == 2 and done["steps"] == 6
    frames = read(job / "frames.extxyz", index=":")
    assert len(frames) == 2
    expected_atoms = {"training": 56, "heldout": 56, "experiment": 112, "states": 112}[campaign]
    assert all(len(a) == expected_atoms for a in frames)
    if campaign == "states":
        assert done["job"]["state"]["pressure_GPa"] == 1.0 and done["job"]["state"]["temperature_K"] == 300.0
    if campaign in ("experiment", "states"):  # positions and cells only
        assert frames[0].calc is None
        return
    forces = frames[-1].get_forces()
    assert forces.shape == (expected_atoms, 3) and np.isfinite(forces).all()
    assert 0.0 < np.sqrt(np.mean(forces**2)) < 5.0  # eV/Å
    assert ("teacher_forces" in frames[-1].arrays) == (campaign == "heldout")


def test_dataset_from_quick_training_job(world):
    summary = json.loads((world["data"] / "dataset" / "dataset.json").read_text())
    assert summary["jobs"] == 1 and summary["counts"]["train"] >= 1
    assert sum(summary["counts"][s] for s in ("train", "val", "test", "guard_dropped")) == 2


# ------------------------------------------------------------------------------- held-out


def test_heldout_export_round_trip(world):
    cells = heldout.read_heldout(world["data"] / "heldout")
    assert list(cells) == ["train56"]
    frames = cells["train56"]
    source = read(world["runs"] / QUICK_JOBS["heldout"] / "frames.extxyz", index=":")
    assert len(frames) == len(source) == 2
    for a, b in zip(frames, source):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-6)
        np.testing.assert_allclose(a.arrays["teacher_forces"], b.arrays["teacher_forces"], atol=1e-6)
        assert a.info["teacher_energy"] == pytest.approx(b.info["teacher_energy"], abs=1e-6)
        assert a.get_stress(voigt=True).shape == (6,)
        # reality = teacher + D3, and D3 binds the layers
        assert a.get_potential_energy() < a.info["teacher_energy"]
    summary = json.loads((world["data"] / "heldout" / "heldout.json").read_text())
    entry = summary["cells"]["train56"]
    assert entry["frames"] == 2 and entry["atoms"] == 56 and entry["jobs"][0]["seed"] == 3000
    # D3 forces on 56 atoms near 300 K: first measured 28-37 meV/Å RMS
    assert 10.0 < entry["d3_force_rms_meV_per_A"] < 80.0


def _frame_with_labels(teacher: bool = True) -> Atoms:
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms("CN", positions=[[0, 0, 0], [1.3, 0, 0]], cell=np.eye(3) * 5.0, pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)), stress=np.zeros(6))
    if teacher:
        atoms.info["teacher_energy"] = -0.9
        atoms.info["teacher_stress"] = np.zeros(6)
        atoms.arrays["teacher_forces"] = np.ones((2, 3))
    return atoms


@pytest.mark.parametrize("drop", ["teacher_forces", "teacher_energy", "energy"])
def test_read_heldout_names_file_and_missing_field(tmp_path, drop):
    frames = [_frame_with_labels(), _frame_with_labels()]
    if drop == "teacher_forces":
        del frames[1].arrays["teacher_forces"]
    elif drop == "teacher_energy":
        del frames[1].info["teacher_energy"]
    else:
        frames[1].calc = None
    write(tmp_path / "cell112.extxyz.gz", frames, format="extxyz")
    with pytest.raises(ValueError, match=rf"cell112\.extxyz\.gz frame 1: label '{drop}'"):
        heldout.read_heldout(tmp_path)


def test_read_heldout_accepts_complete_labels(tmp_path):
    write(tmp_path / "train56.extxyz.gz", [_frame_with_labels()], format="extxyz")
    cells = heldout.read_heldout(tmp_path)
    assert heldout.force_difference_rms_meV_A(cells["train56"]) == pytest.approx(1000.0)


# ------------------------------------------------------------------------------- binding


def test_binding_cli_on_three_spacings(world):
    result = json.loads((world["data"] / "binding_curve.json").read_text())
    assert result["spacing_A"] == [3.3, 4.0, 6.0] and result["reference_spacing_A"] == 8.0
    teacher = np.array(result["teacher_meV_per_atom"])
    reality = np.array(result["reality_meV_per_atom"])
    assert teacher.shape == reality.shape == (3,)
    # D3 is attractive and stronger at shorter range: reality lies below the teacher
    assert (reality < teacher).all()
    # the teacher (CHGNet, ≤ 6 Å cut-off) no longer couples the layers at 6 Å
    assert abs(teacher[2]) < 0.5
    for who in ("teacher", "reality"):
        assert 3.3 <= result["minimum"][who]["spacing_A"] <= 6.0
    assert result["minimum"]["reality"]["depth_meV_per_atom"] > result["minimum"]["teacher"]["depth_meV_per_atom"]
    assert set(result["on_teacher_unit"]) >= {"teacher_meV_per_atom", "reality_meV_per_atom", "minimum"}
    assert result["versions"]["chgnet"] and result["wall_s"] > 0


# ------------------------------------------------------------------------------- provenance


def test_provenance_lists_every_file_and_pending_sources(world):
    data = world["data"]
    (data / "stray.dat").write_text("no producer\n")
    try:
        prov = provenance.write(data, world["runs"])
        md = (data / "PROVENANCE.md").read_text()
    finally:
        (data / "stray.dat").unlink()
    listed = {Path(e["path"]).relative_to(data).as_posix(): e for e in prov["files"]}
    on_disk = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}
    assert set(listed) | {"PROVENANCE.md", "provenance.json"} == on_disk | {"stray.dat"}
    for name, entry in listed.items():
        assert f"`{entry['path']}`" in md and entry["sha256"] in md
        if name == "stray.dat":
            assert entry["command"] == provenance.NO_RECORD
        else:
            assert entry["command"].startswith("python -m recipes.world."), name
    assert listed["heldout/train56.extxyz.gz"]["seeds"] == f"MD {QUICK_JOBS['heldout']}: 3000"
    assert "train_train56_T300_d3.2: " in listed["dataset/train.extxyz.gz"]["seeds"]
    pending = {s["name"] for s in prov["sources"] if s["pending"]}
    assert pending == {"experiment", "base model", "DeePMD base model", "experiment at other state points",
                       "converged base model"}
    section = md.split("## Measured for this project, re-measured")[1]
    assert "pending: python -m recipes.world.state_points" in section
    assert "--init-from data/world/base_model/base.ckpt" in md
    assert "pending: python -m recipes.world.experiment" in section
    assert "pending: python -m recipes.world.train_base" in section
    assert "pending: python -m recipes.world.train_deepmd" in section
    d3 = next(r for r in prov["measured"] if r["quantity"].endswith("all cells"))
    assert 10.0 < float(d3["value"]) < 80.0
    assert all(k in prov["versions"] for k in provenance.PACKAGES)
    assert prov["machine"]["cores"] >= 1
    # the same data again: nothing but the time would change, so nothing is rewritten
    first = provenance.write(data, world["runs"])  # without stray.dat
    before = {n: (data / n).read_bytes() for n in ("PROVENANCE.md", "provenance.json")}
    time.sleep(1.1)  # the record's time has a resolution of one second
    again = provenance.write(data, world["runs"])
    assert again["generated"] == first["generated"]
    assert {n: (data / n).read_bytes() for n in before} == before
    (data / "extra.dat").write_text("new\n")
    try:
        changed = provenance.write(data, world["runs"])
    finally:
        (data / "extra.dat").unlink()
    assert any(e["path"].endswith("extra.dat") for e in changed["files"])
    assert "extra.dat" in (data / "PROVENANCE.md").read_text()


# ------------------------------------------------------------------------------- separation


def test_separation_frames_from_a_training_job(world, tmp_path):
    """Two of the quick training job's snapshots, layers moved rigidly to 4.5 and 6.0 Å, relabelled."""
    import shutil

    from recipes.world import separation
    from difftre_torch.analysis.binding import layer_index

    runs = tmp_path / "runs"
    source = world["runs"] / QUICK_JOBS["training"]
    shutil.copytree(source, runs / source.name)
    out = separation.run(runs, per_spacing=1, seed=3, spacings_A=(4.5, 6.0), source=source.name)
    frames = read(out / "frames.extxyz", index=":")
    done = json.loads((out / "done.json").read_text())
    assert done["n_frames"] == 2 and done["job"]["source_job"] == source.name
    snapshots = read(source / "frames.extxyz", index=":")
    for atoms in frames:
        d = atoms.info["spacing_A"]
        assert atoms.cell.array[2, 2] == pytest.approx(2 * d)  # two layers per cell along c
        original = snapshots[atoms.info["source_frame"]]
        layers = layer_index(original)
        shift = atoms.positions - original.positions
        for k in (0, 1):  # each layer moved as a whole
            assert np.ptp(shift[layers == k], axis=0).max() < 1e-9
        assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (56, 3)
        assert np.abs(atoms.get_stress()).max() < 1.0  # eV/Å³
    # the job is picked up by the dataset split like any training job, and not redone
    from recipes.world.dataset import finished_jobs

    assert out in finished_jobs(runs)
    mtime = (out / "done.json").stat().st_mtime
    separation.run(runs, per_spacing=1, seed=3, spacings_A=(4.5, 6.0), source=source.name)
    assert (out / "done.json").stat().st_mtime == mtime
    with pytest.raises(FileNotFoundError, match="train_missing"):
        separation.run(tmp_path / "other", source="train_missing")
