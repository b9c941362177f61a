"""Held-out evaluation frames: export the finished ``heldout_*`` jobs, and read them back checked.

``python -m recipes.world.heldout [--runs runs/world] [--out data/world/heldout]``

Input: every job directory ``<runs>/heldout_*`` with ``done.json`` and ``frames.extxyz``
(written by :func:`recipes.world.jobs.run_job` for the ``heldout`` campaign of
:mod:`recipes.world.trajectories`: reality NVT at 300 K at reality's relaxed cell). Each frame
carries reality's labels as single-point results (``energy`` eV, ``forces`` eV/Å [N, 3],
``stress`` eV/Å³ Voigt [6], ASE sign) and the teacher's labels from the same evaluation
(``info["teacher_energy"]``, ``info["teacher_stress"]``, ``arrays["teacher_forces"]``).

Output: ``<out>/<cell>.extxyz.gz``, one file per cell name (``info["cell"]``: train56, cell112,
cell252, cell448; jobs of the same cell are concatenated in name order) with every label and
``info`` key kept, and ``<out>/heldout.json``: per cell the file, frames, atoms per frame, source
jobs with their seeds, stride, timestep, equilibration and MD wall time, and the D3 force
difference RMS (reality − teacher forces, meV/Å) of the exported frames. These frames are never
used in training; :mod:`recipes.world.train_base` and the refinement evaluate on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

PREFIX = "heldout_"
SUFFIX = ".extxyz.gz"
COMMAND = "python -m recipes.world.heldout"
REALITY_FIELDS = ("energy", "forces", "stress")
TEACHER_FIELDS = ("teacher_energy", "teacher_forces", "teacher_stress")
_SHAPES = {"energy": (), "forces": (-1, 3), "stress": (6,), "teacher_energy": (),
           "teacher_forces": (-1, 3), "teacher_stress": (6,)}


def finished_jobs(runs: str | Path, prefix: str = PREFIX) -> list[Path]:
    """Job directories ``<runs>/<prefix>*`` holding ``done.json`` and ``frames.extxyz``, by name."""
    return sorted(d for d in Path(runs).glob(f"{prefix}*")
                  if d.is_dir() and (d / "done.json").exists() and (d / "frames.extxyz").exists())


def frame_labels(atoms: Atoms) -> dict[str, np.ndarray | float]:
    """The six labels of one frame (see module doc) that are present, by field name."""
    out: dict = {}
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for key in REALITY_FIELDS:
        if key in results:
            out[key] = results[key]
    for key in ("teacher_energy", "teacher_stress"):
        if key in atoms.info:
            out[key] = atoms.info[key]
    if "teacher_forces" in atoms.arrays:
        out["teacher_forces"] = atoms.arrays["teacher_forces"]
    return out


def check_frame(atoms: Atoms, where: str, fields=REALITY_FIELDS + TEACHER_FIELDS) -> None:
    """Raise ``ValueError`` naming ``where`` and the field when a label is missing, has the
    wrong shape or is not finite."""
    labels = frame_labels(atoms)
    for key in fields:
        if key not in labels:
            raise ValueError(f"{where}: label {key!r} is missing")
        value = np.asarray(labels[key], dtype=float)
        shape = tuple(len(atoms) if s == -1 else s for s in _SHAPES[key])
        if key.endswith("stress") and value.shape == (3, 3):
            continue  # a full tensor is acceptable
        if value.shape != shape:
            raise ValueError(f"{where}: label {key!r} has shape {value.shape}, expected {shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: label {key!r} is not finite")


def force_difference_rms_meV_A(frames: list[Atoms]) -> float:
    """RMS over all force components of reality − teacher forces (the D3 forces), meV/Å."""
    diff = np.concatenate([(a.get_forces(apply_constraint=False) - a.arrays["teacher_forces"]).ravel()
                           for a in frames])
    return float(np.sqrt(np.mean(diff**2)) * 1e3)


def export(runs: str | Path, out: str | Path) -> dict:
    """Write ``<cell>.extxyz.gz`` per cell and ``heldout.json`` (see module doc); returns the latter."""
    from difftre_torch.checkpoint import atomic_write_json
    from recipes.world.jobs import recorded_state

    t0 = time.perf_counter()
    runs, out = Path(runs), Path(out)
    jobs = finished_jobs(runs)
    if not jobs:
        raise FileNotFoundError(f"no finished held-out jobs ({PREFIX}*/done.json) under {runs}: "
                                "run `python -m recipes.world.trajectories heldout` first")
    by_cell: dict[str, list[tuple[Path, dict, list[Atoms]]]] = {}
    for job_dir in jobs:
        frames = read(job_dir / "frames.extxyz", index=":")
        done = json.loads((job_dir / "done.json").read_text())
        for k, atoms in enumerate(frames):
            check_frame(atoms, f"{job_dir / 'frames.extxyz'} frame {k}")
        if frames:
            cell = str(frames[0].info.get("cell", done["job"].get("meta", {}).get("cell", job_dir.name)))
            by_cell.setdefault(cell, []).append((job_dir, done, frames))
    out.mkdir(parents=True, exist_ok=True)
    cells = {}
    for cell, entries in sorted(by_cell.items(), key=lambda kv: len(kv[1][0][2][0])):
        frames = [a for _, _, fr in entries for a in fr]
        path = out / f"{cell}{SUFFIX}"
        tmp = path.with_name(f"{cell}.tmp{SUFFIX}")
        write(tmp, frames, format="extxyz")
        tmp.replace(path)
        cells[cell] = {
            "file": path.name,
            "frames": len(frames),
            "atoms": len(frames[0]),
            "d3_force_rms_meV_per_A": round(force_difference_rms_meV_A(frames), 3),
            "jobs": [{
                "job": done["job"]["name"],
                "seed": done["job"]["seed"],
                "calculator": done["job"]["calculator"],
                "ensemble": recorded_state(done["job"])["ensemble"],
                "temperature_K": recorded_state(done["job"])["temperature_K"],
                "timestep_fs": done["job"]["md"]["timestep_fs"],
                "equilibration_steps": done["job"]["equilibration_steps"],
                "stride": done["job"]["stride"],
                "frames": done["n_frames"],
                "discarded_frames": done.get("discarded_frames", 0),
                "md_wall_s": done.get("wall_s"),
                "dir": str(job_dir),
            } for job_dir, done, _ in entries],
        }
    summary = {
        "command": f"{COMMAND} --runs {runs} --out {out}",
        "runs": str(runs.resolve()),
        "cells": cells,
        "labels": {"reality": "energy (eV), forces (eV/A), stress (eV/A^3 Voigt, ASE sign) as "
                              "single-point results",
                   "teacher": "info teacher_energy, info teacher_stress, arrays teacher_forces"},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "heldout.json", summary)
    return summary


def read_heldout(directory: str | Path) -> dict[str, list[Atoms]]:
    """Frames of every ``<cell>.extxyz.gz`` under ``directory``, by cell, fewest atoms first.

    Every frame is checked for reality's and the teacher's labels (:func:`check_frame`): a
    missing or malformed one raises ``ValueError`` naming the file, frame and field.
    """
    directory = Path(directory)
    paths = sorted(directory.glob(f"*{SUFFIX}"))
    paths = [p for p in paths if ".tmp" not in p.name]
    if not paths:
        raise FileNotFoundError(f"no held-out files *{SUFFIX} in {directory}: run "
                                f"`{COMMAND} --runs <runs> --out {directory}`")
    out: dict[str, list[Atoms]] = {}
    for path in paths:
        frames = read(path, index=":")
        if not frames:
            raise ValueError(f"{path}: no frames")
        for k, atoms in enumerate(frames):
            check_frame(atoms, f"{path} frame {k}")
        out[path.name[: -len(SUFFIX)]] = frames
    return dict(sorted(out.items(), key=lambda kv: len(kv[1][0])))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/world", help="the campaigns' run directory")
    parser.add_argument("--out", default="data/world/heldout")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    summary = export(args.runs, args.out)
    for cell, entry in summary["cells"].items():
        print(f"[heldout] {cell}: {entry['frames']} frames of {entry['atoms']} atoms, "
              f"D3 force RMS {entry['d3_force_rms_meV_per_A']:.1f} meV/A", flush=True)
    return summary


if __name__ == "__main__":
    main()
