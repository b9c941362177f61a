"""Finished MD jobs of the stand-in world as replicas: their frames, supercell repeats and
per-frame lattice parameters, with block errors over replicas.

A replica is one job written by :func:`recipes.world.jobs.run_job` (``done.json`` +
``frames.extxyz``). Lattice parameters per frame: a = (|a₁|/n₁ + |a₂|/n₂)/2 (in-plane, of the
28-atom unit; n the supercell repeats), c = |a₃|/n₃, spacing = V/|a₁ × a₂| / (2 n₃) (AB
stacking, two layers per unit c); Å, cell vectors as rows. Their error is max(standard error of
the replica means, block standard error): the first is unbiased but has R − 1 degrees of
freedom, the second is precise but biased low if a block is shorter than the cell's
correlation time.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_masses, chemical_symbols
from ase.io import read

from difftre_torch.observables import interlayer_spacing, lattice_lengths, mass_density
from difftre_torch.statistics import block_means, mean_sem
from recipes.world.structures import CELLS

UNIT_ATOMS = 28  # the AB-stacked C12N16 cell of recipes.world.structures.gc3n4_unit_cell


@dataclass
class Replica:
    """One finished MD job.

    positions: [F, N, 3] Å; cells: [F, 3, 3] Å (rows); numbers: [N] atomic numbers;
    repeats: supercell repeats of the 28-atom unit along a₁, a₂, a₃; frame_interval_fs: time
    between frames (None if unknown); temperature_K, pressure_GPa: the job's targets; meta: the
    job's meta (cell name, …).
    """

    name: str
    positions: torch.Tensor
    cells: torch.Tensor
    numbers: np.ndarray
    repeats: tuple[int, int, int]
    temperature_K: float | None = None
    pressure_GPa: float | None = None
    frame_interval_fs: float | None = None
    meta: dict = field(default_factory=dict)


def find_jobs(runs: str | Path, pattern: str) -> list[Path]:
    """Finished job directories (``done.json`` and ``frames.extxyz``) matching ``pattern``,
    ordered by their seed suffix ``_s<seed>`` (then name)."""
    def seed(path: Path) -> tuple[int, str]:
        match = re.search(r"_s(\d+)$", path.name)
        return (int(match.group(1)) if match else sys.maxsize, path.name)

    found = [p for p in Path(runs).glob(pattern)
             if (p / "done.json").exists() and (p / "frames.extxyz").exists()]
    return sorted(found, key=seed)


def infer_repeats(n_atoms: int, meta: dict | None = None) -> tuple[int, int, int]:
    """Repeats of the 28-atom unit: from ``meta["cell"]`` (a key of ``structures.CELLS``), else
    the vacancy-free world cell with ``n_atoms`` atoms, else (1, 1, 1) for 28 atoms."""
    name = (meta or {}).get("cell")
    if name in CELLS:
        return tuple(CELLS[name][0])
    matches = [rep for rep, vac in CELLS.values() if vac == 0 and UNIT_ATOMS * math.prod(rep) == n_atoms]
    if matches:
        return tuple(matches[0])
    if n_atoms == UNIT_ATOMS:
        return (1, 1, 1)
    raise ValueError(f"cannot infer the supercell repeats of a {n_atoms}-atom cell "
                     f"(meta cell {name!r}); expected one of {sorted(CELLS)}")


def load_replica(job_dir: str | Path, max_frames: int | None = None) -> Replica:
    """Frames and settings of a finished job written by :func:`recipes.world.jobs.run_job`."""
    from recipes.world.jobs import recorded_state

    job_dir = Path(job_dir)
    done = json.loads((job_dir / "done.json").read_text())
    job = done.get("job", {})
    md = job.get("md", {})
    state = recorded_state(job)
    frames = read(job_dir / "frames.extxyz", index=":")
    if max_frames is not None and len(frames) > max_frames:
        frames = [frames[k] for k in np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    numbers = frames[0].numbers.copy()
    if any(not np.array_equal(a.numbers, numbers) for a in frames):
        raise ValueError(f"{job_dir}: frames do not share one species list")
    stride, timestep = job.get("stride"), md.get("timestep_fs")
    interval = float(stride * timestep) if stride and timestep else None
    if interval is not None and max_frames is not None and done.get("n_frames", 0) > len(frames):
        interval *= (done["n_frames"] - 1) / max(len(frames) - 1, 1)
    return Replica(
        name=job.get("name", job_dir.name),
        positions=torch.tensor(np.stack([a.positions for a in frames]), dtype=torch.float64),
        cells=torch.tensor(np.stack([a.cell.array for a in frames]), dtype=torch.float64),
        numbers=numbers,
        repeats=infer_repeats(len(numbers), job.get("meta")),
        temperature_K=state["temperature_K"],
        pressure_GPa=state["pressure_GPa"],
        frame_interval_fs=interval,
        meta=job.get("meta", {}),
    )


def formula_unit(numbers) -> dict[str, int]:
    """Reduced formula {symbol: count} in Hill order (C, H, then alphabetical): C48N64 → C3N4."""
    counts = Counter(chemical_symbols[int(z)] for z in numbers)
    divisor = reduce(math.gcd, counts.values())
    order = sorted(counts, key=lambda s: (s != "C", s != "H", s)) if "C" in counts else sorted(counts)
    return {s: counts[s] // divisor for s in order}


def lattice_per_frame(cells: torch.Tensor, repeats, layers_per_unit: int = 2,
                      numbers=None) -> dict[str, torch.Tensor]:
    """Lattice parameters of the unit per frame, {name: [F]}: ``a_A`` (mean in-plane length
    (|a₁|/n₁ + |a₂|/n₂)/2), ``c_A`` (|a₃|/n₃), ``spacing_A`` (V/|a₁ × a₂|/(layers · n₃)) and,
    with ``numbers``, ``density_g_cm3``. cells: [F, 3, 3] Å (rows); repeats: (n₁, n₂, n₃)."""
    lengths = lattice_lengths(cells) / torch.as_tensor(repeats, dtype=cells.dtype)
    out = {
        "a_A": 0.5 * (lengths[:, 0] + lengths[:, 1]),
        "c_A": lengths[:, 2],
        "spacing_A": interlayer_spacing(cells, layers_per_unit * int(repeats[2])),
    }
    if numbers is not None:
        masses = torch.as_tensor(atomic_masses[np.asarray(numbers)], dtype=cells.dtype)
        out["density_g_cm3"] = mass_density(cells, masses)
    return out


def lattice_statistics(per_replica: list[dict[str, torch.Tensor]], n_blocks: int) -> dict:
    """Mean and errors of each per-frame lattice quantity over replicas (see module docstring).

    per_replica: one {name: [F_k]} per replica. Returns {name: {value, error, sem_replicas,
    sem_blocks, replica_means}}; sem_replicas is None with one replica.
    """
    out = {}
    for key in per_replica[0]:
        blocks = [block_means(rep[key], min(n_blocks, rep[key].shape[0])) for rep in per_replica]
        frames = torch.cat([torch.full((len(b),), float(rep[key].shape[0] // len(b)))
                            for b, rep in zip(blocks, per_replica)])
        mean, sem_blocks = mean_sem(torch.cat(blocks), frames)
        replica_means = torch.stack([b.mean() for b in blocks])
        sem_replicas = (float(replica_means.std() / math.sqrt(len(blocks)))
                        if len(blocks) > 1 else None)
        out[key] = {
            "value": float(mean),
            "error": max(float(sem_blocks), sem_replicas or 0.0),
            "sem_replicas": sem_replicas,
            "sem_blocks": float(sem_blocks),
            "replica_means": [float(m) for m in replica_means],
        }
    return out
