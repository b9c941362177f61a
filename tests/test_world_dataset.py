"""The world's training set (recipes.world.dataset) and base-model training (recipes.world.train_base)
on a tiny synthetic runs directory laid out as recipes.world.jobs writes it (EMT labels)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write

N_FRAMES = 12
TRAINING_JOBS = (  # (name, cell, spacing_A, temperature_K)
    ("train_train56_T100_d3.2", "train56", 3.2, 100.0),
    ("train_train56_T700_down", "train56", 0.0, 700.0),
    ("train_train56_vac_T300_d3.6", "train56_vac", 3.6, 300.0),
)


def _trajectory(n_frames: int, seed: int, teacher_scale: float | None = None) -> tuple[Atoms, list[dict]]:
    """A correlated random walk of a periodic C4N4 cell with EMT labels, as jobs._record dicts.
    ``teacher_scale``: also store ``teacher_*`` labels (EMT scaled by it), as reality jobs do."""
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) / 2.0
    structure = Atoms(numbers=[6, 7] * 4, scaled_positions=grid, cell=np.diag([4.4, 4.6, 4.8]), pbc=True)
    frames, disp = [], np.zeros((8, 3))
    for _ in range(n_frames):
        disp = 0.8 * disp + rng.normal(scale=0.03, size=disp.shape)
        atoms = structure.copy()
        atoms.positions += disp
        atoms.calc = EMT()
        frame = {"positions": atoms.positions.copy(), "cell": atoms.cell.array.copy(),
                 "temperature_K": 300.0, "energy": atoms.get_potential_energy(),
                 "forces": atoms.get_forces(), "stress": atoms.get_stress(voigt=True)}
        if teacher_scale is not None:
            frame.update(teacher_energy=frame["energy"] * teacher_scale,
                         teacher_forces=frame["forces"] * teacher_scale,
                         teacher_stress=frame["stress"] * teacher_scale)
        frames.append(frame)
    return structure, frames


def _write_job(runs: Path, name: str, info: dict, seed: int, finished: bool = True,
               teacher_scale: float | None = None, n_frames: int = N_FRAMES) -> None:
    from recipes.world.jobs import frames_to_atoms

    out = runs / name
    out.mkdir(parents=True)
    structure, frames = _trajectory(n_frames, seed, teacher_scale)
    write(out / "frames.extxyz", frames_to_atoms(structure, frames, {"job": name, **info}))
    if finished:
        (out / "done.json").write_text(json.dumps({
            "job": {"name": name, "stride": 20, "md": {"timestep_fs": 1.0}}, "n_frames": len(frames)}))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("world_runs")
    for k, (name, cell, spacing, temperature) in enumerate(TRAINING_JOBS):
        _write_job(runs, name, {"calculator": "teacher", "cell": cell, "spacing_A": spacing,
                                "temperature_target_K": temperature, "ensemble": "nvt"}, seed=k)
    _write_job(runs, "train_train56_T1000_down", {"cell": "train56", "spacing_A": 0.0,
                                                  "temperature_target_K": 1000.0}, seed=9, finished=False)
    _write_job(runs, "heldout_cell112_T300", {"calculator": "reality", "cell": "cell112",
                                              "temperature_target_K": 300.0}, seed=7,
               teacher_scale=0.98, n_frames=3)
    return runs


def _frames_by_split(out: Path) -> dict[str, list[Atoms]]:
    return {s: read(out / f"{s}.extxyz.gz", index=":") for s in ("train", "val", "test")}


def test_dataset_splits_by_blocks(tiny_runs, tmp_path):
    from recipes.world.dataset import SplitConfig, build

    summary = build(tiny_runs, tmp_path / "ds", SplitConfig(seed=3))
    splits = _frames_by_split(tmp_path / "ds")
    # only finished training jobs; counts add up
    assert summary["jobs"] == len(TRAINING_JOBS)
    counts = summary["counts"]
    assert counts["train"] + counts["val"] + counts["test"] + counts["guard_dropped"] == N_FRAMES * len(TRAINING_JOBS)
    assert {s: len(f) for s, f in splits.items()} == {s: counts[s] for s in splits}
    assert summary["all"]["frames"] == sum(len(f) for f in splits.values())
    assert summary["per_split"]["test"]["variant"] == {"ideal": 2, "vacancy": 1}
    assert summary["per_split"]["train"]["spacing_A"].keys() == {"3.2", "3.6", "own"}
    for job, _, _, _ in TRAINING_JOBS:
        index = {s: sorted(int(a.info["frame"]) for a in f if a.info["job"] == job) for s, f in splits.items()}
        # every condition in every split, each split one contiguous block, no frame shared
        assert all(index[s] for s in index)
        for s in index:
            assert index[s] == list(range(index[s][0], index[s][-1] + 1))
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not set(index[a]) & set(index[b])
        # the test block is separated from training by the validation block and the guard
        gap = min(abs(i - j) for i in index["test"] for j in index["train"])
        assert gap >= len(index["val"]) + summary["split"]["guard_frames"] + 1
        assert summary["per_job"][job] == {s: len(index[s]) for s in index} | {"guard": 1}
    # labels and job info survive (energy, forces, stress; temperature, spacing, cell)
    atoms = splits["test"][0]
    assert atoms.get_forces().shape == (8, 3) and atoms.get_stress().shape == (6,)
    assert {"temperature_target_K", "spacing_A", "cell", "job", "split"} <= atoms.info.keys()
    assert all(a.info["split"] == s for s, f in splits.items() for a in f)


def test_dataset_deterministic_and_stable_when_jobs_are_added(tiny_runs, tmp_path):
    from recipes.world.dataset import main

    main(["--runs", str(tiny_runs), "--out", str(tmp_path / "a")])
    main(["--runs", str(tiny_runs), "--out", str(tmp_path / "b")])
    for split in ("train", "val", "test"):
        a, b = (gzip.open(tmp_path / d / f"{split}.extxyz.gz").read() for d in "ab")
        assert a == b
    # a job finishing later does not move the existing jobs' blocks
    first = json.loads((tmp_path / "a" / "dataset.json").read_text())["per_job"]
    (tiny_runs / "train_train56_T1000_down" / "done.json").write_text("{}")
    try:
        main(["--runs", str(tiny_runs), "--out", str(tmp_path / "c")])
        later = json.loads((tmp_path / "c" / "dataset.json").read_text())["per_job"]
    finally:
        (tiny_runs / "train_train56_T1000_down" / "done.json").unlink()
    assert len(later) == len(first) + 1
    assert all(later[job] == layout for job, layout in first.items())


def test_block_layout_short_trajectories():
    from recipes.world.dataset import SplitConfig, block_layout

    for n in range(1, 30):
        layout = block_layout(n, "job", SplitConfig())
        assert len(layout) == n and "train" in layout
        if n >= 5:
            assert layout.count("val") >= 1 and layout.count("test") >= 1


def test_config_parses_with_r_max_6():
    from omegaconf import OmegaConf

    from recipes.world.train_base import CONFIG

    config = OmegaConf.load(CONFIG)
    model = config.training_module.model
    assert OmegaConf.select(config, "training_module.model.r_max") == 6.0
    assert list(model.type_names) == ["C", "N"] and model.model_dtype == "float32"
    assert config.training_module.loss._target_ == "nequip.train.EnergyForceStressLoss"
    assert config.training_module.loss.per_atom_energy
    assert config.training_module._target_ == "nequip.train.EMALightningModule"
    checkpoint = next(c for c in config.trainer.callbacks if c._target_.endswith("ModelCheckpoint"))
    assert checkpoint.save_last
    assert any(c._target_.endswith("EarlyStopping") for c in config.trainer.callbacks)
    assert OmegaConf.is_missing(config, "dataset_dir")  # paths come as overrides


def test_train_base_quick(tiny_runs, tmp_path):
    pytest.importorskip("nequip")
    from recipes.world import train_base
    from recipes.world.dataset import build

    build(tiny_runs, tmp_path / "ds")
    argv = ["--data", str(tmp_path / "ds"), "--run", str(tmp_path / "run"), "--runs", str(tiny_runs),
            "--quick", "--md-steps", "2", "--quiet"]
    train_base.main(argv)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fields = ("energy_rmse_meV_per_atom", "energy_mae_meV_per_atom", "forces_rmse_meV_per_A",
              "forces_mae_meV_per_A", "stress_rmse_GPa", "energy_rmse_debiased_meV_per_atom")
    sets = [metrics["test"], metrics["heldout"]["cell112"]["vs_teacher"],
            metrics["heldout"]["cell112"]["vs_reality"]]
    for errors in sets:
        assert all(math.isfinite(errors[f]["value"]) and errors[f]["value"] >= 0 for f in fields)
        assert errors["forces_rmse_meV_per_A"]["ci"][0] <= errors["forces_rmse_meV_per_A"]["value"]
    assert metrics["test"]["frames"] == json.loads((tmp_path / "ds" / "dataset.json").read_text())["counts"]["test"]
    md = metrics["md_speed"]
    assert md["threads"] == 1 and md["atoms"] == 8 and 0 < md["ms_per_step_median"] < 1e4
    assert 0 < md["cpu_ms_per_step"] < 1e4
    assert metrics["r_max_A"] == 6.0 and metrics["training"]["epochs"] == 1
    assert "| test split" in (tmp_path / "run" / "metrics.md").read_text()
    # a finished run is not retrained; a run with other overrides is refused
    data, run = (tmp_path / "ds").resolve(), (tmp_path / "run").resolve()
    record = train_base.train(train_base.CONFIG, data, run, None, list(train_base.QUICK_OVERRIDES), 1,
                              verbose=False)
    assert len(record["history"]) == 1 and record["finished"]["reason"] == "max_epochs"
    with pytest.raises(RuntimeError, match="other overrides"):
        train_base.train(train_base.CONFIG, data, run, None, [*train_base.QUICK_OVERRIDES, "seed=5"], 1)


def test_init_from_continues_a_model_and_publishes_it_standalone(tiny_runs, tmp_path):
    pytest.importorskip("nequip")
    import shutil

    import torch

    from difftre_torch.potentials.nequip_files import load_nequip
    from recipes.world import train_base
    from recipes.world.dataset import build

    build(tiny_runs, tmp_path / "ds")
    common = ["--data", str(tmp_path / "ds"), "--runs", str(tiny_runs), "--quick", "--md-steps", "2", "--quiet"]
    train_base.main([*common, "--run", str(tmp_path / "first")])
    first = tmp_path / "first" / "best.ckpt"
    finetune = str(train_base.CONFIG.with_name("base_model_finetune.yaml"))
    train_base.main([*common, "--run", str(tmp_path / "second"), "--config", finetune, "--init-from", str(first),
                     "--publish", "--publish-to", str(tmp_path / "published")])
    record = json.loads((tmp_path / "second" / "train_base.json").read_text())
    assert any("ModelFromCheckpoint" in o for o in record["overrides"])
    frame = next(iter(train_base.heldout_frames(tiny_runs).values()))[0]
    positions = torch.tensor(frame.positions)[None]
    cell, numbers = torch.tensor(frame.cell.array)[None], torch.tensor(frame.numbers)
    run_energy = load_nequip(tmp_path / "second" / "best.ckpt")(positions, cell, numbers)
    start_energy = load_nequip(first)(positions, cell, numbers)
    assert not torch.equal(run_energy, start_energy)  # it trained on
    shutil.move(str(tmp_path / "first"), str(tmp_path / "moved"))  # the start checkpoint is gone
    published = torch.load(tmp_path / "published" / "base.ckpt", map_location="cpu", weights_only=False)
    assert published["hyper_parameters"]["model"]["_target_"] == "nequip.model.NequIPGNNModel"
    assert torch.equal(load_nequip(tmp_path / "published" / "base.ckpt")(positions, cell, numbers), run_energy)
    with pytest.raises(FileNotFoundError, match="--init-from"):
        train_base.main([*common, "--run", str(tmp_path / "third"), "--init-from", str(tmp_path / "nothing.ckpt")])


def test_heldout_frames_read_the_published_export(tmp_path):
    from ase import Atoms
    from ase.io import write

    from recipes.world.train_base import heldout_frames

    write(tmp_path / "big.extxyz", [Atoms("C4", positions=[[0, 0, k] for k in range(4)], cell=[5, 5, 5], pbc=True)] * 2)
    write(tmp_path / "small.extxyz", [Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]], cell=[5, 5, 5], pbc=True)] * 3)
    (tmp_path / "heldout.json").write_text(json.dumps({"cells": {"big": {"file": "big.extxyz"},
                                                                 "small": {"file": "small.extxyz"}}}))
    frames = heldout_frames(tmp_path)
    assert list(frames) == ["small", "big"] and [len(v) for v in frames.values()] == [3, 2]


def test_resume_point_falls_back_to_the_backup_when_last_is_truncated(tmp_path):
    import torch

    from recipes.world.train_base import resume_point

    assert resume_point(tmp_path) is None
    torch.save({"epoch": 3}, tmp_path / "last.ckpt")
    assert resume_point(tmp_path) == tmp_path / "last.ckpt"
    assert torch.load(tmp_path / "last.backup.ckpt", weights_only=False) == {"epoch": 3}
    full = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(full[: len(full) // 2])  # killed while Lightning wrote it
    said = []
    assert resume_point(tmp_path, log=said.append) == tmp_path / "last.backup.ckpt"
    assert "does not load" in said[0] and "last.backup.ckpt" in said[0]
    assert torch.load(tmp_path / "last.backup.ckpt", weights_only=False) == {"epoch": 3}  # kept


def test_launch_walls_bound_a_killed_launch_by_the_next_start():
    from recipes.world.train_base import launch_walls

    history = [{"start": "2026-01-01T10:00:00"},  # killed: no record, next start 10:30
               {"start": "2026-01-01T10:30:00", "wall_s": 600.0},
               {"start": "2026-01-01T11:00:00"}]  # killed, nothing after it to bound it
    assert launch_walls(history) == {"wall_s": 2400.0, "wall_s_recorded": 600.0, "launches_unrecorded": 2}
    assert launch_walls([]) == {"wall_s": 0.0, "wall_s_recorded": 0.0, "launches_unrecorded": 0}


def test_init_overrides_name_the_checkpoint_and_the_compile_mode(tmp_path):
    from recipes.world.train_base import init_overrides

    (tmp_path / "a.ckpt").write_bytes(b"x")
    delete, add = init_overrides(tmp_path / "a.ckpt", "compile")
    assert delete == "~training_module.model"
    assert add == ("+training_module.model={_target_:nequip.model.ModelFromCheckpoint,"
                   f"checkpoint_path:'{(tmp_path / 'a.ckpt').resolve()}',compile_mode:compile}}")
    assert init_overrides(tmp_path / "a.ckpt")[1].endswith("compile_mode:eager}")
