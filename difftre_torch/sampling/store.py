"""The snapshot store: what DiffTRe caches from one round of sampling at one state point.

Every sampler (ASE, batched) fills the same :class:`SnapshotStore`, so the trainer and the
gradient never know which one ran. Units: Å, eV, K, GPa; cell vectors as rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from ase import units

from difftre_torch.neighbors import PairCache


@dataclass
class SnapshotStore:
    """S snapshots of one N-atom system sampled with the reference potential U_θ̃.

    numbers: [N] int64 atomic numbers.
    positions: [S, N, 3] Å.
    cells: [S, 3, 3] Å, rows are lattice vectors.
    reference_energies: [S] eV, U_θ̃(S_i), evaluated with the same batched potential call the
        update uses, so that at θ = θ̃ the weights are exactly uniform.
    temperature_K: the state point's temperature (K).
    pressure_GPa: its pressure for NPT, ``None`` for NVT.
    observables: θ-independent per-snapshot observables, name → [S, ...] (computed once).
    replica: [S] int64, index of the replica (trajectory) that produced each snapshot.
    name: the state point's label (e.g. ``"T300_P0"``).
    pair_cache: the snapshots' pair lists once a pass has searched them
        (:func:`difftre_torch.pair_reuse.store_pairs`); not saved in checkpoints (searched again).
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    cells: torch.Tensor
    reference_energies: torch.Tensor
    temperature_K: float
    pressure_GPa: float | None = None
    observables: dict[str, torch.Tensor] = field(default_factory=dict)
    replica: torch.Tensor | None = None
    name: str = "state0"
    pair_cache: PairCache | None = field(default=None, init=False, repr=False, compare=False)
    pair_cache_refused: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s, n = self.positions.shape[:2]
        checks = {
            "positions": (self.positions.shape, (s, n, 3)),
            "cells": (self.cells.shape, (s, 3, 3)),
            "reference_energies": (self.reference_energies.shape, (s,)),
            "numbers": (self.numbers.shape, (n,)),
        }
        for name, (got, want) in checks.items():
            if tuple(got) != want:
                raise ValueError(f"SnapshotStore.{name}: expected shape {want}, got {tuple(got)}")
        for name, value in self.observables.items():
            if value.shape[0] != s:
                raise ValueError(
                    f"SnapshotStore.observables[{name!r}]: expected {s} rows, got {value.shape[0]}"
                )
        if self.replica is None:
            self.replica = torch.zeros(s, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def kT_eV(self) -> float:
        """k_B T in eV."""
        return float(units.kB * self.temperature_K)

    @property
    def ensemble(self) -> str:
        return "nvt" if self.pressure_GPa is None else "npt"

    def state_dict(self) -> dict:
        """Plain dict of tensors and numbers (for checkpoints)."""
        return {
            "numbers": self.numbers,
            "positions": self.positions,
            "cells": self.cells,
            "reference_energies": self.reference_energies,
            "temperature_K": self.temperature_K,
            "pressure_GPa": self.pressure_GPa,
            "observables": dict(self.observables),
            "replica": self.replica,
            "name": self.name,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "SnapshotStore":
        return cls(**state)
