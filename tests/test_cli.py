"""The `difftre` command: the shipped example, one-line errors, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.io import write

from difftre_torch.cli import main, shipped_examples
from difftre_torch.config import load_job
from difftre_torch.workflow.build import build_targets


def _tiny_job(root: Path, updates: int = 4) -> Path:
    """A 32-atom LJ job with an RDF and a pressure target, seconds per update."""
    a = (4 * 3.405 ** 3 / 0.8) ** (1 / 3)
    write(root / "start.extxyz", bulk("Ar", "fcc", a=a, cubic=True).repeat(2))
    r = np.arange(25) * 0.2 + 2.6
    g = 1.0 + 0.8 * np.exp(-((r - 3.8) / 0.4) ** 2)
    np.savetxt(root / "target.csv", np.c_[r, g], delimiter=",", header="r,g")
    config = {
        "system": {"structure": "start.extxyz"},
        "potential": {"kind": "lennard_jones", "sigma_A": 3.3, "epsilon_eV": 0.0104, "cutoff_A": 8.5,
                      "trainable": ["sigma"]},
        "state_points": [{"name": "T181", "temperature_K": 181.0, "replicas": 2, "compare": False}],
        "sampler": {"timestep_fs": 5.0, "friction_per_fs": 0.02, "equilibration_steps": 60,
                    "reequilibration_steps": 20, "snapshots_per_replica": 8, "stride": 5,
                    "min_distance_A": 1.5, "seed": 4},
        "trainer": {"updates": updates, "learning_rate": 0.02, "resample_ratio": 0.97,
                    "progress": False, "tensorboard": False},
        "targets": [{"name": "rdf", "observable": "rdf", "file": "target.csv", "function": "rdf",
                     "use_sigma": False},
                    {"name": "p", "observable": "pressure", "values": [0.02], "weight": 0.5}],
        "output": {"dir": "out"},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "difftre_torch", "refine", str(config), "--out", str(out),
                             "--threads", "1", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    config = _tiny_job(tmp_path)
    whole = _run(config, tmp_path / "whole")
    log = whole.communicate(timeout=600)[0]
    assert whole.returncode == 0, log

    killed = _run(config, tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "refine" / "lambda_0" / "checkpoint.pt"
    deadline = time.time() + 600
    while time.time() < deadline:  # wait until at least two updates are checkpointed, then kill
        if checkpoint.exists():
            state = torch.load(checkpoint, weights_only=False)
            if state["update"] >= 2:
                break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = torch.load(checkpoint, weights_only=False)
    assert 2 <= state["update"] < 4, "the kill must land mid-run"
    resumed = _run(config, tmp_path / "killed")  # the same command continues
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log

    run = Path("refine") / "lambda_0"
    a = torch.load(tmp_path / "whole" / run / "refined_potential.pt")
    b = torch.load(tmp_path / "killed" / run / "refined_potential.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa = json.loads((tmp_path / "whole" / run / "summary.json").read_text())
    sb = json.loads((tmp_path / "killed" / run / "summary.json").read_text())
    assert sa["loss_final"] == sb["loss_final"]
    assert sa["n_eff_history"] == sb["n_eff_history"]
    assert sa["resamples"] == sb["resamples"]


def test_the_shipped_example_parses_and_reads_its_target():
    job = load_job(shipped_examples()["lj_argon"])
    targets = build_targets(job, job.targets)
    assert [t.name for t in targets] == ["rdf"] and targets[0].sigma is None
    assert targets[0].x.shape == targets[0].values.shape and targets[0].values.max() > 2.0
    assert main(["check", "lj_argon"]) == 0


@pytest.mark.parametrize("mutate, field", [
    (lambda c: c["trainer"].update(learning_rat=0.1), "trainer.learning_rat: unknown field 'learning_rat' "
                                                      "(did you mean 'learning_rate'?)"),
    (lambda c: c["potential"].update(kind="morse"), "potential.kind: unknown kind 'morse'"),
    (lambda c: c.pop("state_points"), "section 'state_points' is missing"),
    (lambda c: c["state_points"][0].update(temperature_K=-5), "state_points[0].temperature_K: temperature_K must be > 0"),
    (lambda c: c["targets"][0].update(state_point="T999"), "targets[0].state_point: 'T999' is not a state point"),
])
def test_config_errors_are_one_line_naming_the_file_and_field(tmp_path, capsys, mutate, field):
    path = _tiny_job(tmp_path)
    raw = yaml.safe_load(path.read_text())
    mutate(raw)
    path.write_text(yaml.safe_dump(raw))
    assert main(["refine", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"difftre refine: error: {path}: {field}"), err


def _labelled_frames(path: Path, job_path: Path, n: int = 4) -> None:
    """``n`` rattled copies of the job's start structure, labelled by the job's own potential."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    from difftre_torch.potentials.ase_calculator import PotentialCalculator
    from difftre_torch.workflow.build import build_base_potential

    job = load_job(job_path)
    calc = PotentialCalculator(build_base_potential(job))
    frames = []
    for k in range(n):
        atoms = read(job_path.parent / "start.extxyz")
        atoms.rattle(0.1, seed=k)
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    write(path, frames)


def test_compare_takes_frames_the_user_has(tmp_path, capsys):
    """`difftre compare --frames`: a trajectory's frames against the experiment, no sampling;
    the same frames' g(r) as the registry computes it directly."""
    from ase.io import read

    from difftre_torch.observables.registry import static_observables

    job = _tiny_job(tmp_path)
    _labelled_frames(tmp_path / "traj.extxyz", job, 6)
    out = tmp_path / "cmp"
    assert main(["compare", str(job), "--frames", str(tmp_path / "traj.extxyz"), "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    rdf = result["T181"]["targets"]["rdf"]
    frames = read(tmp_path / "traj.extxyz", index=":")
    target = build_targets(load_job(job), load_job(job).targets)[0]
    direct = static_observables(torch.as_tensor(np.stack([a.positions for a in frames])),
                                torch.as_tensor(np.stack([a.cell.array for a in frames])),
                                torch.as_tensor(frames[0].numbers), [target])["rdf"].mean(0)
    np.testing.assert_allclose(rdf["model"], direct.numpy(), rtol=1e-12, atol=1e-12)
    assert "| rdf | T181 |" in capsys.readouterr().out
    assert (out / "functions.png").stat().st_size > 0
    assert main(["compare", str(job), "--frames", str(tmp_path / "missing.xyz"), "--out", str(out)]) == 2


def _dump(path: Path, frames, atom_lines=None) -> None:
    """``frames`` as a LAMMPS text dump (orthogonal boxes, ``id type x y z``, type 1 = Ar);
    ``atom_lines``: how many atom lines the last frame keeps (a run cut off while writing)."""
    text = []
    for k, atoms in enumerate(frames):
        lx, ly, lz = (float(v) for v in atoms.cell.lengths())
        rows = [f"{i + 1} 1 {x!r} {y!r} {z!r}" for i, (x, y, z) in enumerate(atoms.positions.tolist())]
        if atom_lines is not None and k == len(frames) - 1:
            rows = rows[:atom_lines]
        text += ["ITEM: TIMESTEP", str(100 * k), "ITEM: NUMBER OF ATOMS", str(len(atoms)),
                 "ITEM: BOX BOUNDS pp pp pp", f"0 {lx!r}", f"0 {ly!r}", f"0 {lz!r}", "ITEM: ATOMS id type x y z", *rows]
    path.write_text("\n".join(text) + "\n")


def test_compare_reads_lammps_dumps_and_names_what_is_wrong(tmp_path, capsys):
    """`difftre compare --frames dump --types Ar`: the numbers of the same frames as extxyz; a
    truncated last frame is reported and left out; an unknown type, missing columns or a
    changing atom count stop with one line naming file, frame and field (exit 2)."""
    from ase.io import read

    job = _tiny_job(tmp_path)
    _labelled_frames(tmp_path / "traj.extxyz", job, 6)
    frames = read(tmp_path / "traj.extxyz", index=":")
    _dump(tmp_path / "run.lammpstrj", frames)
    assert main(["compare", str(job), "--frames", str(tmp_path / "traj.extxyz"), "--out", str(tmp_path / "a")]) == 0
    assert main(["compare", str(job), "--frames", str(tmp_path / "run.lammpstrj"), "--types", "Ar",
                 "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / x / "compare.json").read_text())["T181"] for x in "ab")
    np.testing.assert_allclose(b["targets"]["rdf"]["model"], a["targets"]["rdf"]["model"], rtol=1e-12, atol=1e-12)
    capsys.readouterr()

    _dump(tmp_path / "cut.lammpstrj", frames + frames[:1], atom_lines=20)
    assert main(["compare", str(job), "--frames", str(tmp_path / "cut.lammpstrj"), "--types", "Ar",
                 "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "warning" in out and "cut.lammpstrj" in out and "frame 6" in out and "skipped" in out
    c = json.loads((tmp_path / "c" / "compare.json").read_text())["T181"]
    assert c["frames"] == 6
    np.testing.assert_allclose(c["targets"]["rdf"]["model"], a["targets"]["rdf"]["model"], rtol=1e-12, atol=1e-12)

    def fails(path, *extra):
        assert main(["compare", str(job), "--frames", str(path), *extra, "--out", str(tmp_path / "d")]) == 2
        return capsys.readouterr().err

    err = fails(tmp_path / "run.lammpstrj", "--types", "C")  # type 1 is C: not the config's Ar atoms
    assert "run.lammpstrj" in err and "frame 0" in err and "atoms" in err
    text = (tmp_path / "run.lammpstrj").read_text()
    (tmp_path / "notype.lammpstrj").write_text(text.replace("2 1 ", "2 3 ", 1))
    err = fails(tmp_path / "notype.lammpstrj", "--types", "Ar")
    assert "notype.lammpstrj" in err and "frame 0" in err and "'type'" in err and "[3]" in err
    (tmp_path / "nocols.lammpstrj").write_text(text.replace("id type x y z", "id type x y"))
    err = fails(tmp_path / "nocols.lammpstrj", "--types", "Ar")
    assert "nocols.lammpstrj" in err and "frame 0" in err and "z" in err
    _dump(tmp_path / "grow.lammpstrj", [frames[0], frames[1].repeat((2, 1, 1))])
    err = fails(tmp_path / "grow.lammpstrj", "--types", "Ar")
    assert "grow.lammpstrj" in err and "frame 1" in err and "NUMBER OF ATOMS" in err


def test_evaluate_a_model_against_its_own_labels(tmp_path, capsys):
    """`difftre evaluate`: labels made by the config's own potential give zero error and a zero
    paired difference between two copies of it."""
    job = _tiny_job(tmp_path)
    _labelled_frames(tmp_path / "frames.extxyz", job)
    raw = yaml.safe_load(job.read_text())
    raw["evaluation"] = {"n_boot": 20, "sets": [{"name": "rattled", "file": "frames.extxyz"}]}
    job.write_text(yaml.safe_dump(raw))
    out = tmp_path / "ev"
    assert main(["evaluate", str(job), "--out", str(out)]) == 0
    result = json.loads((out / "evaluate.json").read_text())
    errors = result["config potential"]["sets"]["rattled"]["vs_reference"]
    # extxyz stores the labels to ~1e-8 eV: what is left is the file's rounding
    assert errors["forces_rmse_meV_per_A"]["value"] < 1e-3 and errors["energy_rmse_meV_per_atom"]["value"] < 1e-3
    assert "| config potential | rattled | reference |" in capsys.readouterr().out
