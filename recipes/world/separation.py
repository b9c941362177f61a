"""Layer-separation frames for the DFT-like training set: the teacher on rigidly separated layers.

``python -m recipes.world.separation [--runs runs/world] [--frames-per-spacing 6] [--seed 11]
[--source train_train56_T300_down]``

Why: the MD campaign's cells span interlayer spacings 3.2–4.0 Å, so a model trained on them
alone has never seen layers further apart, yet NPT sampling at 300 K explores exactly that
direction. Measured here: a trial base model trained without these frames (4 MD jobs) put its
interlayer minimum at 4.8 Å (17 meV/atom deep, where the teacher has 3.98 Å and 11.6 meV/atom)
and its 300 K NPT cell112 drifted to a spacing of 4.83 Å. DFT practice adds such
separation (binding-curve) configurations to a training set; so does this world.

Frames: snapshots of the teacher's 300 K NVT run of the 56-atom training cell at its own
relaxed cell (the training campaign's job ``train_train56_T300_down``, so the layers carry
thermal, correlated distortions), drawn at random without replacement, their two layers moved
rigidly (:func:`recipes.world.binding.rigid_spacing`) to each of :data:`SPACINGS_A`
(4.1–7.0 Å) at the snapshot's in-plane cell; relabelled with the teacher's energy (eV), forces
(eV/Å) and stress (eV/Å³, ASE sign). Uncorrelated random displacements were tried first and
rejected: σ = 0.05 Å per component gave a force RMS of 2.5 eV/Å against 0.88 eV/Å in the 300 K
MD. The frames are written in shuffled order (they are independent), as the job
``<runs>/train_separation`` with ``frames.extxyz`` and ``done.json`` in the MD jobs' format, so
:mod:`recipes.world.dataset` splits them with the rest.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from difftre_torch.checkpoint import atomic_write_json
from recipes.world import calculators
from difftre_torch.analysis.binding import rigid_spacing

SPACINGS_A = (4.1, 4.3, 4.6, 5.0, 5.5, 6.0, 7.0)
JOB = "train_separation"
SOURCE_JOB = "train_train56_T300_down"
COMMAND = "python -m recipes.world.separation"


def separation_frames(snapshots: list, spacings_A=SPACINGS_A, per_spacing: int = 6, seed: int = 11) -> list:
    """Unlabelled frames (see module doc), shuffled, each with info spacing_A and source frame."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(snapshots), size=min(len(snapshots), per_spacing * len(spacings_A)), replace=False)
    frames = []
    for k, index in enumerate(picks):
        d = float(spacings_A[k % len(spacings_A)])
        atoms = rigid_spacing(snapshots[int(index)], d)
        atoms.calc = None
        atoms.info = {"spacing_A": d, "cell": "train56", "temperature_target_K": float("nan"),
                      "source": "separation", "source_frame": int(index)}
        frames.append(atoms)
    order = rng.permutation(len(frames))
    return [frames[k] for k in order]


def label(frames: list, calc) -> list:
    """Frames with the teacher's energy, forces and stress as single-point results."""
    out = []
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = calc
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                   "stress": atoms.get_stress(voigt=True)}
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["frame"] = k
        out.append(atoms)
    return out


def run(runs: str | Path, per_spacing: int = 6, seed: int = 11, spacings_A=SPACINGS_A,
        source: str = SOURCE_JOB) -> Path:
    """Write ``<runs>/train_separation`` (skipped if its done.json exists); returns the folder."""
    out = Path(runs) / JOB
    if (out / "done.json").exists():
        return out
    source_dir = Path(runs) / source
    if not (source_dir / "done.json").exists():
        raise FileNotFoundError(f"{source_dir}/done.json is missing: the separation frames start from that "
                                "training job's snapshots (python -m recipes.world.trajectories training)")
    t0 = time.perf_counter()
    snapshots = read(source_dir / "frames.extxyz", index=":")
    frames = label(separation_frames(snapshots, spacings_A, per_spacing, seed), calculators.make("teacher"))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "frames.tmp.extxyz"
    write(tmp, frames, format="extxyz")
    tmp.replace(out / "frames.extxyz")
    atomic_write_json(out / "done.json", {
        "job": {"name": JOB, "calculator": "teacher", "kind": "single points on rigidly separated layers",
                "seed": seed, "spacings_A": list(spacings_A), "frames_per_spacing": per_spacing,
                "source_job": source, "command": COMMAND},
        "n_frames": len(frames), "discarded_frames": 0, "wall_s": round(time.perf_counter() - t0, 1),
    })
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/world")
    parser.add_argument("--source", default=SOURCE_JOB, help="training job whose snapshots are separated")
    parser.add_argument("--frames-per-spacing", type=int, default=6)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--spacings", type=float, nargs="+", default=list(SPACINGS_A))
    args = parser.parse_args(argv)
    calculators.set_threads()
    out = run(args.runs, args.frames_per_spacing, args.seed, tuple(args.spacings), args.source)
    print(f"[separation] -> {out}", flush=True)


if __name__ == "__main__":
    main()
