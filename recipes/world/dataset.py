"""The DFT-like training set: every finished ``training`` job's frames, split by trajectory blocks.

``python -m recipes.world.dataset [--runs runs/world] [--out data/world/dataset] [--seed 0]``

Reads ``<runs>/train_*/frames.extxyz`` of every job that has a ``done.json`` (unfinished jobs are
skipped; frames are already decorrelated by the campaign's stride of 20 fs) and writes
``train.extxyz.gz``, ``val.extxyz.gz``, ``test.extxyz.gz`` (energy, forces, stress as
single-point results; every ``info`` key of the job kept, plus ``split``) and ``dataset.json``
(counts per split, temperature, spacing and variant; energy-per-atom range; force RMS; the
measured frame-to-frame correlation that justifies the split). nequip's ``ASEDataModule`` reads
the gzipped files directly (ASE picks the compression from the suffix).

Split: contiguous blocks of each trajectory, never random frames. Frames 20 fs apart are far
from independent (in the first campaign jobs the atomic-displacement autocorrelation is ≈ 0.9 at
one stride and still ≈ 0.5 at five), so a randomly chosen test frame almost always has a
near-copy in training and the test error would be a training error. Per trajectory of n frames
the layout is, in time order,

    [ train (the rest) | guard (dropped) | val (≈ f_val·n) | test (≈ f_test·n) ]

or its mirror image, the orientation drawn from a generator seeded by (seed, job name). The
test block touches only the validation block, so every test frame is at least
``n_val + guard + 1`` strides (160 fs for 60-frame jobs) from every training frame; the
guard frames separate validation from training (validation drives early stopping and the LR
schedule). Stratifying per trajectory keeps every (temperature, spacing, variant) condition in
every split. The alternative, holding out whole trajectories, was rejected: each condition is a
single trajectory here, so it would remove conditions from training and make the test set
measure extrapolation in temperature or spacing rather than in-distribution error
(transferability is measured separately on the held-out larger cells). Seeding by job name
keeps existing jobs' splits unchanged when the campaign adds jobs.

Units: Å, eV, eV/Å, stress eV/Å³ (ASE sign), fs, K.
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

from difftre_torch.checkpoint import atomic_write_json

SPLITS = ("train", "val", "test")
TRAINING_PREFIX = "train_"
MAX_LAG_FRAMES = 10  # frame lags for the recorded autocorrelations


@dataclass
class SplitConfig:
    """fractions of each trajectory for validation and test (training gets the rest, minus
    ``guard_frames`` dropped between training and validation); seed of the block layout."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    guard_frames: int = 1
    seed: int = 0


def finished_jobs(runs: Path, prefix: str = TRAINING_PREFIX) -> list[Path]:
    """Job directories under ``runs`` named ``prefix*`` with ``done.json`` and ``frames.extxyz``, by name."""
    return sorted(
        d for d in Path(runs).glob(f"{prefix}*")
        if d.is_dir() and (d / "done.json").exists() and (d / "frames.extxyz").exists()
    )


def block_layout(n_frames: int, job: str, config: SplitConfig) -> list[str]:
    """The split of each frame of one trajectory ("train", "val", "test" or "guard"), see module doc.

    Short trajectories degrade gracefully: at least one frame goes to training; validation and
    test get ``round(fraction · n)`` frames, at least one each when n ≥ 4 + guard.
    """
    n_val = int(round(config.val_fraction * n_frames))
    n_test = int(round(config.test_fraction * n_frames))
    if n_frames >= 4 + config.guard_frames:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    guard = config.guard_frames if n_val + n_test > 0 else 0
    while n_val + n_test + guard >= n_frames and (n_val or n_test):  # keep ≥ 1 training frame
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
        guard = config.guard_frames if n_val + n_test > 0 else 0
    if n_val == 0 and n_test > 0:
        guard = 0  # the test block then sits next to training; nothing to protect
    n_train = n_frames - n_val - n_test - guard
    layout = ["train"] * n_train + ["guard"] * guard + ["val"] * n_val + ["test"] * n_test
    rng = np.random.default_rng([config.seed, zlib.crc32(job.encode())])
    return layout[::-1] if rng.random() < 0.5 else layout


def _test_train_gap(layout: list[str]) -> int | None:
    """Smallest distance in frames between a test and a training frame of one layout."""
    test = [i for i, s in enumerate(layout) if s == "test"]
    train = [i for i, s in enumerate(layout) if s == "train"]
    return min((abs(i - j) for i in test for j in train), default=None)


def _autocorrelations(frames: list[Atoms], max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised autocorrelation C(k), k = 0..max_lag (frames), of the energy per atom and of the
    atomic displacements u_t = mic(x_t − x_0) − ⟨·⟩_t (C(k) = ⟨u_t·u_{t+k}⟩ / ⟨u_t·u_t⟩)."""
    from ase.geometry import find_mic

    energy = np.array([a.get_potential_energy() / len(a) for a in frames])
    start = frames[0].positions
    disp = np.stack([find_mic(a.positions - start, a.cell, pbc=True)[0] for a in frames])
    disp -= disp.mean(axis=0)
    energy = energy - energy.mean()
    lags = range(min(max_lag, len(frames) - 1) + 1)
    out = np.full((2, max_lag + 1), np.nan)
    for k in lags:
        n = len(frames) - k
        out[0, k] = np.mean(energy[:n] * energy[k:]) / max(np.mean(energy**2), 1e-300)
        out[1, k] = np.mean(np.sum(disp[:n] * disp[k:], axis=(1, 2))) / max(
            np.mean(np.sum(disp**2, axis=(1, 2))), 1e-300)
    return out[0], out[1]


def _condition(atoms: Atoms) -> tuple[str, str, str]:
    """(temperature label, spacing label, variant) of a frame from its job's info."""
    info = atoms.info
    temperature = f"{float(info.get('temperature_target_K', np.nan)):.0f}"
    spacing = float(info.get("spacing_A", 0.0))
    spacing_label = "own" if spacing == 0.0 else f"{spacing:.1f}"
    variant = "vacancy" if "vac" in str(info.get("cell", "")) else "ideal"
    return temperature, spacing_label, variant


def _summary(frames: list[Atoms]) -> dict:
    """Counts per temperature/spacing/variant, energy-per-atom range, force RMS of ``frames``."""
    counts: dict[str, dict[str, int]] = {"temperature_K": {}, "spacing_A": {}, "variant": {}}
    for atoms in frames:
        for key, label in zip(counts, _condition(atoms)):
            counts[key][label] = counts[key].get(label, 0) + 1
    out: dict = {"frames": len(frames), "atoms": int(sum(len(a) for a in frames))}
    out.update({k: dict(sorted(v.items())) for k, v in counts.items()})
    if frames:
        e = np.array([a.get_potential_energy() / len(a) for a in frames])
        f = np.concatenate([a.get_forces().ravel() for a in frames])
        s = np.concatenate([a.get_stress(voigt=True) for a in frames])
        out.update({
            "energy_per_atom_eV": {"min": float(e.min()), "max": float(e.max()),
                                   "mean": float(e.mean()), "std": float(e.std())},
            "force_rms_eV_per_A": float(np.sqrt(np.mean(f**2))),
            "stress_rms_GPa": float(np.sqrt(np.mean(s**2)) * 160.21766208),
        })
    return out


def build(runs: str | Path, out: str | Path, config: SplitConfig = SplitConfig(),
          compress: bool = True) -> dict:
    """Collect, split and write the dataset (see module doc); returns the ``dataset.json`` dict."""
    runs, out = Path(runs), Path(out)
    jobs = finished_jobs(runs)
    if not jobs:
        raise FileNotFoundError(f"no finished training jobs ({TRAINING_PREFIX}*/done.json) under {runs}")
    split_frames: dict[str, list[Atoms]] = {s: [] for s in SPLITS}
    per_job, acf_energy, acf_disp = {}, [], []
    guards, gaps = 0, []
    for job_dir in jobs:
        frames = read(job_dir / "frames.extxyz", index=":")
        job = str(frames[0].info.get("job", job_dir.name)) if frames else job_dir.name
        layout = block_layout(len(frames), job, config)
        for atoms, split in zip(frames, layout):
            atoms.info["split"] = split
            if split == "guard":
                guards += 1
            else:
                split_frames[split].append(atoms)
        per_job[job] = {s: layout.count(s) for s in (*SPLITS, "guard")}
        gaps.append(_test_train_gap(layout))
        if len(frames) > MAX_LAG_FRAMES:
            e, d = _autocorrelations(frames, MAX_LAG_FRAMES)
            acf_energy.append(e)
            acf_disp.append(d)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".extxyz.gz" if compress else ".extxyz"
    files = {}
    for split, frames in split_frames.items():
        path = out / f"{split}{suffix}"
        tmp = path.with_name(path.name.replace(suffix, f".tmp{suffix}"))
        write(tmp, frames, format="extxyz")
        tmp.replace(path)
        files[split] = path.name
    stride_fs = _stride_fs(jobs[0])
    summary = {
        "runs": str(runs.resolve()),
        "jobs": len(jobs),
        "files": files,
        "split": {"method": "contiguous blocks per trajectory: [train | guard | val | test] "
                            "or mirrored, orientation seeded by (seed, job name)",
                  "val_fraction": config.val_fraction, "test_fraction": config.test_fraction,
                  "guard_frames": config.guard_frames, "seed": config.seed,
                  "frame_stride_fs": stride_fs,
                  "min_test_train_gap_frames": min((g for g in gaps if g is not None), default=None)},
        "counts": {s: len(f) for s, f in split_frames.items()} | {"guard_dropped": guards},
        "per_split": {s: _summary(f) for s, f in split_frames.items()},
        "all": _summary([a for f in split_frames.values() for a in f]),
        "per_job": per_job,
    }
    if acf_energy:
        summary["autocorrelation"] = {
            "lag_frames": list(range(MAX_LAG_FRAMES + 1)),
            "energy_per_atom": np.round(np.nanmean(acf_energy, axis=0), 3).tolist(),
            "displacement": np.round(np.nanmean(acf_disp, axis=0), 3).tolist(),
            "note": "mean over jobs, C(k) at lag k frames; compare min_test_train_gap_frames",
        }
    atomic_write_json(out / "dataset.json", summary)
    return summary


def _stride_fs(job_dir: Path) -> float | None:
    """Time between recorded frames (fs) from a job's done.json, None if not recorded."""
    try:
        job = json.loads((job_dir / "done.json").read_text())["job"]
        return float(job["stride"]) * float(job["md"]["timestep_fs"])
    except (KeyError, ValueError, TypeError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/world", help="the campaigns' run directory")
    parser.add_argument("--out", default="data/world/dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--guard-frames", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="write .extxyz instead of .extxyz.gz")
    args = parser.parse_args(argv)
    config = SplitConfig(args.val_fraction, args.test_fraction, args.guard_frames, args.seed)
    summary = build(args.runs, args.out, config, compress=not args.plain)
    counts = summary["counts"]
    print(f"{summary['jobs']} finished jobs -> {args.out}: train {counts['train']}, "
          f"val {counts['val']}, test {counts['test']} frames ({counts['guard_dropped']} guard "
          f"frames dropped)")


if __name__ == "__main__":
    main()
