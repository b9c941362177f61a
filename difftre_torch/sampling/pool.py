"""The snapshot pool: the last K trajectories of one state point, reweighted together (MBAR).

Each sampling round at parameters θ_k gives one trajectory (a
:class:`~difftre_torch.sampling.store.SnapshotStore`). The pool keeps up to ``capacity`` of them
with the matrix U_θk(S_j) of every kept snapshot under every kept parameter set, filled
incrementally: a new trajectory costs its snapshots under the old θ's and the old snapshots
under the new θ (the potential is evaluated at a stored θ by loading it, then restored
bit for bit). From the matrix, :mod:`difftre_torch.multistate` gives the MBAR free energies and
each snapshot's mixture reference energy Ũ_j, and :attr:`SnapshotPool.merged` is one store of
every kept snapshot with ``reference_energies = Ũ``, which the DiffTRe gradient uses unchanged.
With one trajectory ``merged`` *is* that trajectory's store: capacity 1 is single-trajectory
DiffTRe, bit for bit.

Retention (which trajectories stay when a new one arrives):

* ``"recent"``: the ``capacity`` most recent;
* ``"share"``: first drop every older trajectory whose share of the pooled weight at the new θ,
  W_k = Σ_{j∈k} w_j (its part of N_eff is W_k·N_eff), is below ``min_share``; then keep at most
  ``capacity``, the most recent.

Either way, when the MBAR equations cannot be solved (trajectories that hardly overlap the rest),
the oldest trajectories are dropped until they can.

Across ranks each rank holds its replicas' snapshots of every trajectory (the columns of the
matrix that are its own); the free energies are solved from every rank's columns (gathered),
so every rank has the same f_k, and N_k are global counts. Units: Å, eV, K.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from difftre_torch.distributed import SINGLE, Ranks
from difftre_torch.multistate import free_energies, mixture_reference, reduced_matrix, weight_shares
from difftre_torch.neighbors import PairCache
from difftre_torch.reweighting import boltzmann_weights
from difftre_torch.sampling.store import SnapshotStore

EnergyFn = Callable[[SnapshotStore, "Sequence[torch.Tensor] | None"], torch.Tensor]
"""``energy_fn(store, theta)`` → U_θ(S_j) [S] eV of the store's snapshots at parameters ``theta``
(a list of tensors like the trainable parameters; ``None``: the current ones), without a graph."""

RETENTION_RULES = ("recent", "share")


class SnapshotPool:
    """Up to ``capacity`` trajectories of one state point with their energy matrix (module docstring).

    trajectories: the kept stores, oldest first. thetas: the parameters each was sampled with
    (CPU tensors; ``None`` when unknown, e.g. from a checkpoint written before pools). energies:
    [K, N] float64 eV, U_θk of every kept snapshot (this rank's columns, trajectories in order).
    counts: [K] global snapshot counts N_k. f: [K] MBAR free energies (f_0 = 0).
    """

    def __init__(self, capacity: int = 1, retention: str = "recent", min_share: float = 0.05,
                 ranks: Ranks = SINGLE) -> None:
        if capacity < 1:
            raise ValueError(f"SnapshotPool: capacity must be >= 1, got {capacity}")
        if retention not in RETENTION_RULES:
            raise ValueError(f"SnapshotPool: retention must be one of {RETENTION_RULES}, got {retention!r}")
        if not 0.0 <= min_share < 1.0:
            raise ValueError(f"SnapshotPool: min_share must be in [0, 1), got {min_share}")
        self.capacity, self.retention, self.min_share, self.ranks = capacity, retention, min_share, ranks
        self.trajectories: list[SnapshotStore] = []
        self.thetas: list[list[torch.Tensor] | None] = []
        self.energies = torch.zeros(0, 0, dtype=torch.float64)
        self.counts: list[int] = []
        self.f = np.zeros(0)
        self.rounds: list[int] = []  # the sampling round (0, 1, ...) of each kept trajectory
        self._merged: SnapshotStore | None = None

    # ------------------------------------------------------------------ views

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def merged(self) -> SnapshotStore:
        """One store of every kept snapshot, reference energies Ũ (the trajectory itself for K = 1)."""
        if self._merged is None:
            raise RuntimeError("SnapshotPool: empty (add a trajectory first)")
        return self._merged

    def newest_energies(self) -> torch.Tensor:
        """U_θK(S_j) [N] eV of every merged snapshot at the newest trajectory's parameters θK, in
        the merged store's dtype and device (the newest row of the matrix; for K = 1 the
        trajectory's reference energies)."""
        merged = self.merged
        if len(self) == 1:
            return merged.reference_energies
        return self.energies[-1].to(merged.reference_energies)

    @property
    def segments(self) -> torch.Tensor:
        """[N] int64: the position (0..K−1) in the pool of each merged snapshot's trajectory."""
        return torch.cat([torch.full((len(t),), k, dtype=torch.long) for k, t in enumerate(self.trajectories)])

    @property
    def size(self) -> int:
        """Snapshots in the pool over every rank, Σ N_k."""
        return int(sum(self.counts))

    def shares(self, weights: torch.Tensor) -> list[float]:
        """W_k, each trajectory's share of the pooled weight ``weights`` (this rank's slice of the
        merged store's weights), summed over ranks."""
        local = weight_shares(weights.detach().double().cpu(), self.segments, len(self))
        return [float(x) for x in self.ranks.sum(local, "the trajectories' weight shares")]

    # ------------------------------------------------------------------ adding a trajectory

    def add(self, store: SnapshotStore, theta: Sequence[torch.Tensor] | None, energy_fn: EnergyFn,
            round_index: int = 0) -> list[int]:
        """Add the trajectory ``store`` sampled at ``theta`` (the current parameters, as CPU copies),
        apply the retention rule and solve the free energies; returns the rounds dropped.

        ``store.reference_energies`` must be U_θ(S_j) at ``theta`` (as :func:`fill_store` gives);
        ``energy_fn`` evaluates the other entries of the matrix (module docstring)."""
        count = int(self.ranks.sum(torch.tensor([float(len(store))], dtype=torch.float64),
                                   "the trajectory's snapshot count")[0])
        theta = None if theta is None else [t.detach().cpu().clone() for t in theta]
        if self.capacity == 1 or not self.trajectories:
            dropped = list(self.rounds)
            self._reset(store, theta, count, round_index)
            return dropped
        dropped = []
        unknown = [k for k, th in enumerate(self.thetas) if th is None]
        if unknown:  # trajectories whose parameters are unknown cannot be evaluated under a new θ
            dropped += self._drop(unknown)
        if not self.trajectories:
            self._reset(store, theta, count, round_index)
            return dropped
        new = store.reference_energies.detach().double().cpu()
        old_rows = [energy_fn(store, th).detach().double().cpu() for th in self.thetas]   # new snapshots, old θ
        new_row = [energy_fn(t, None).detach().double().cpu() for t in self.trajectories]  # old snapshots, new θ
        energies = torch.cat([torch.cat([self.energies, torch.stack(old_rows)], dim=1),
                              torch.cat(new_row + [new])[None]], dim=0)
        self.trajectories.append(store)
        self.thetas.append(theta)
        self.counts.append(count)
        self.rounds.append(round_index)
        self.energies = energies
        dropped += self._solve()
        if self.retention == "share" and self.min_share > 0:
            weights = boltzmann_weights(self.energies[-1], self._reference(), store.kT_eV, self.ranks)
            shares = self.shares(weights)
            low = [k for k in range(len(self) - 1) if shares[k] < self.min_share]
            if low:
                dropped += self._drop(low)
                dropped += self._solve()
        if len(self) > self.capacity:
            dropped += self._drop(list(range(len(self) - self.capacity)))
            dropped += self._solve()
        self._merged = self._build_merged()
        return dropped

    def _reset(self, store: SnapshotStore, theta, count: int, round_index: int) -> None:
        self.trajectories, self.thetas, self.counts, self.rounds = [store], [theta], [count], [round_index]
        self.energies = store.reference_energies.detach().double().cpu()[None]
        self.f = np.zeros(1)
        self._merged = store

    def _drop(self, positions: Sequence[int]) -> list[int]:
        drop = set(positions)
        keep = [k for k in range(len(self)) if k not in drop]
        columns = torch.cat([torch.full((len(t),), k in drop, dtype=torch.bool)
                             for k, t in enumerate(self.trajectories)])
        rounds = [self.rounds[k] for k in sorted(drop)]
        self.energies = self.energies[keep][:, ~columns]
        self.trajectories = [self.trajectories[k] for k in keep]
        self.thetas = [self.thetas[k] for k in keep]
        self.counts = [self.counts[k] for k in keep]
        self.rounds = [self.rounds[k] for k in keep]
        return rounds

    def _solve(self) -> list[int]:
        """f_k from every rank's columns of the reduced matrix (the same f on every rank). Where
        the MBAR equations have no solution to their tolerance (trajectories that hardly overlap,
        whose weight at the newest θ is nil anyway), the oldest trajectory is dropped and the
        solve repeated; returns the rounds so dropped."""
        dropped: list[int] = []
        while True:
            kT = self.trajectories[0].kT_eV
            local = reduced_matrix(self.energies, kT)
            columns = self.ranks.gather(local.numpy(), "the pool's energy matrix")
            try:
                self.f = free_energies(np.concatenate(columns, axis=1), self.counts)
                return dropped
            except ArithmeticError:
                if len(self) == 1:
                    raise
                dropped += self._drop([0])

    def _reference(self) -> torch.Tensor:
        """Ũ_j [N] float64 eV of this rank's columns (:func:`~difftre_torch.multistate.mixture_reference`)."""
        return mixture_reference(self.energies, torch.tensor(self.counts, dtype=torch.float64),
                                 torch.as_tensor(self.f, dtype=torch.float64), self.trajectories[0].kT_eV)

    def _build_merged(self) -> SnapshotStore:
        if len(self) == 1:
            return self.trajectories[0]
        first = self.trajectories[0]
        reference = self._reference()
        keys = list(first.observables)
        merged = SnapshotStore(
            numbers=first.numbers,
            positions=torch.cat([t.positions for t in self.trajectories]),
            cells=torch.cat([t.cells for t in self.trajectories]),
            reference_energies=reference.to(first.reference_energies),
            temperature_K=first.temperature_K,
            pressure_GPa=first.pressure_GPa,
            observables={k: torch.cat([t.observables[k] for t in self.trajectories]) for k in keys},
            replica=torch.cat([t.replica for t in self.trajectories]),
            name=first.name,
        )
        # the trajectories' pair lists, copied like their positions (no second search)
        merged.pair_cache = PairCache.concatenate([t.pair_cache for t in self.trajectories])
        return merged

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Plain tensors and numbers (for checkpoints); the merged store is rebuilt on load."""
        return {"trajectories": [t.state_dict() for t in self.trajectories], "thetas": self.thetas,
                "energies": self.energies, "counts": list(self.counts), "f": self.f.tolist(),
                "rounds": list(self.rounds)}

    def load_state_dict(self, state: dict, to_store: Callable[[dict], SnapshotStore]) -> None:
        """Restore :meth:`state_dict`; ``to_store`` turns a trajectory's dict into a store on the
        right device and dtype."""
        self.trajectories = [to_store(t) for t in state["trajectories"]]
        self.thetas = list(state["thetas"])
        self.energies = state["energies"].double().cpu()
        self.counts = [int(c) for c in state["counts"]]
        self.f = np.asarray(state["f"], dtype=np.float64)
        self.rounds = [int(r) for r in state["rounds"]]
        self._merged = self._build_merged() if self.trajectories else None

    @classmethod
    def of_store(cls, store: SnapshotStore, count: int, *, capacity: int, retention: str, min_share: float,
                 ranks: Ranks = SINGLE) -> "SnapshotPool":
        """A pool holding one trajectory whose parameters are unknown (a checkpoint from before pools)."""
        pool = cls(capacity, retention, min_share, ranks)
        pool._reset(store, None, count, 0)
        return pool
