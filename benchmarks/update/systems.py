"""The systems of the update benchmark: crystals, their rattled snapshots, the two models (LJ
argon, a tiny NequIP model of C/N trained here) and the SnapshotStore the update runs against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class System:
    """A crystal to rattle, and how. base_positions [N, 3] Å; base_cell [3, 3] Å (rows);
    numbers [N]; rattle_A: Gaussian displacement σ (Å); temperature_K of the state point;
    r_max_A, n_bins: the cached partial RDFs."""

    base_positions: torch.Tensor
    base_cell: torch.Tensor
    numbers: torch.Tensor
    rattle_A: float
    temperature_K: float
    r_max_A: float
    n_bins: int


def argon_system() -> System:
    """fcc argon (a = 5.25 Å), primitive cell repeated 4×4×4: 64 atoms."""
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.25).repeat((4, 4, 4))
    return System(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                  torch.tensor(atoms.numbers), rattle_A=0.15, temperature_K=120.0,
                  r_max_A=6.0, n_bins=60)


def rocksalt_cn(repeat: int, spacing_A: float = 2.2):
    """C/N on a simple-cubic grid (rock-salt ordering), ``repeat``³ sites, as ASE Atoms."""
    import numpy as np
    from ase import Atoms

    grid = np.stack(np.meshgrid(*[np.arange(repeat)] * 3, indexing="ij"), -1).reshape(-1, 3)
    numbers = np.where(grid.sum(1) % 2 == 0, 6, 7)
    return Atoms(numbers=numbers, positions=grid * spacing_A, cell=np.eye(3) * repeat * spacing_A,
                 pbc=True)


def carbon_nitrogen_system() -> System:
    """Rock-salt C/N, 4×4×4 sites (64 atoms, 8.8 Å cube)."""
    atoms = rocksalt_cn(4)
    return System(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                  torch.tensor(atoms.numbers), rattle_A=0.08, temperature_K=300.0,
                  r_max_A=4.0, n_bins=40)


def rattled_snapshots(system: System, n_snapshots: int, seed: int = 0):
    """positions [S, N, 3] Å and cells [S, 3, 3] Å (float64, CPU): the crystal scaled by
    1 + 0.01·(k mod 3 − 1) and rattled by N(0, rattle_A²) per coordinate."""
    generator = torch.Generator().manual_seed(seed)
    scale = 1.0 + 0.01 * (torch.arange(n_snapshots, dtype=torch.float64) % 3 - 1)
    cells = system.base_cell[None] * scale[:, None, None]
    positions = system.base_positions[None] * scale[:, None, None]
    positions += system.rattle_A * torch.randn(positions.shape, generator=generator,
                                               dtype=torch.float64)
    return positions, cells


def training_frames(n_frames: int = 8) -> list:
    """``n_frames`` EMT-labelled C4N4 cubes (2×2×2 rock salt, 4.4 Å), rattled by 0.08 Å."""
    import numpy as np

    from difftre_torch.testing import emt_labelled

    rng = np.random.default_rng(7)
    frames = []
    for _ in range(n_frames):
        atoms = rocksalt_cn(2)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        frames.append(emt_labelled(atoms))
    return frames


def train_tiny_nequip(workdir: Path, n_frames: int = 8) -> Path:
    """nequip-train one epoch (:func:`difftre_torch.testing.train_tiny_nequip`) on
    :func:`training_frames` in ``workdir``; returns ``last.ckpt``."""
    from difftre_torch import testing

    return testing.train_tiny_nequip(workdir, training_frames(n_frames))


def load_model(model: str, checkpoint: str | None, device: torch.device):
    """(potential, θ, system) for ``model`` on ``device``."""
    if model == "lj":
        from difftre_torch.potentials import LennardJones

        potential = LennardJones(3.4, 0.0104, 8.5).to(device)
        return potential, [potential.sigma, potential.epsilon], argon_system()
    from difftre_torch.potentials.nequip_files import load_nequip

    potential = load_nequip(checkpoint, device=device)
    return potential, potential.trainable_parameters(), carbon_nitrogen_system()


def build_store(potential, system: System, n_snapshots: int, chunk_size: int,
                device: torch.device):
    """(store, seconds of the pair search) for ``n_snapshots`` rattled snapshots on ``device``,
    filled as the trainer fills one: the pair lists searched once and kept on the store
    (:func:`~difftre_torch.pair_reuse.cache_pairs`), reference energies from ``potential`` over
    them (chunked, no graph), and the partial RDFs [S, n_pairs·n_bins] cached."""
    import time

    from difftre_torch.objective import reference_energies
    from difftre_torch.observables import partial_rdfs
    from difftre_torch.pair_reuse import cache_pairs
    from difftre_torch.sampling.store import SnapshotStore

    positions, cells = rattled_snapshots(system, n_snapshots)
    positions, cells = positions.to(device), cells.to(device)
    numbers = system.numbers.to(device)
    start = time.perf_counter()
    pairs = cache_pairs(potential, positions, cells)
    search_s = time.perf_counter() - start
    reference = reference_energies(potential, positions, cells, numbers, chunk_size, pairs)
    _, partials = partial_rdfs(positions, cells, numbers, system.r_max_A, system.n_bins,
                               snapshots_per_chunk=chunk_size)
    rdf = torch.cat([partials[key] for key in sorted(partials)], dim=1)
    store = SnapshotStore(numbers=numbers, positions=positions, cells=cells,
                          reference_energies=reference.detach(),
                          temperature_K=system.temperature_K, observables={"rdf": rdf})
    store.pair_cache = pairs
    return store, search_s
