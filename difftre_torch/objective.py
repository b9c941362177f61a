"""The DiffTRe objective assembled from targets: snapshot caching, the per-chunk function and the loss.

Given targets (:class:`~difftre_torch.experiment.target.Target`) and one
:class:`~difftre_torch.sampling.store.SnapshotStore` per state point, this module builds what
:func:`difftre_torch.gradient.difftre_gradient` needs:

* :func:`fill_store`: cache U_θ̃(S_i) and every θ-independent observable O(S_i) once per sample;
* :func:`make_chunk_fn`: per chunk of snapshots, U_θ and the θ-dependent observables (pressure,
  stress) from one energy + stress evaluation;
* :func:`make_loss_fn`: L = Σ_k λ_k mean_bins[((⟨O_k⟩_θ − Õ_k)/σ_k)²], with
  ⟨O_k⟩_θ = Σ_i w_i O_k(S_i) over the snapshots of the target's state point.

It holds no state and knows nothing of the trainer; adding an observable is a registry entry.
Units follow the registry (:mod:`difftre_torch.observables.registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from difftre_torch.experiment.target import Target
from difftre_torch.loss import observable_loss
from difftre_torch.neighbors import PairCache
from difftre_torch.observables.registry import spec, static_observables, theta_observables
from difftre_torch.pair_reuse import DEFAULT_LIMIT_MB, cache_pairs, chunk_calls
from difftre_torch.potentials.base import Potential, evaluate
from difftre_torch.reweighting import reweighted_mean
from difftre_torch.sampling.store import SnapshotStore

if TYPE_CHECKING:
    from difftre_torch.distributed import Ranks


def assign_targets(targets: Sequence[Target], state_point_names: Sequence[str]) -> dict[str, list[Target]]:
    """Targets grouped by state point name. A target without ``state_point`` belongs to the
    only state point; with several state points it must name one."""
    names = list(state_point_names)
    seen: set[str] = set()
    grouped: dict[str, list[Target]] = {name: [] for name in names}
    for t in targets:
        if t.name in seen:
            raise ValueError(f"Target names must be unique; {t.name!r} appears twice")
        seen.add(t.name)
        spec(t)  # unknown observable → clear error now, not mid-run
        point = t.state_point
        if point is None:
            if len(names) != 1:
                raise ValueError(
                    f"Target {t.name!r}: state_point is required with several state points {names}"
                )
            point = names[0]
        if point not in grouped:
            raise ValueError(f"Target {t.name!r}: unknown state_point {point!r}; have {names}")
        grouped[point].append(t)
    return grouped


@torch.no_grad()
def reference_energies(potential: Potential, positions: torch.Tensor, cells: torch.Tensor,
                       numbers: torch.Tensor, chunk_size: int, pairs: PairCache | None = None) -> torch.Tensor:
    """U_θ̃(S_i) [S] eV with the same batched call the update makes (so w = 1/N at θ = θ̃):
    the same chunks, over the same cached pair lists ``pairs`` where the update has them."""
    return torch.cat([
        call(positions[sl], cells[sl], numbers).detach()
        for sl, call in chunk_calls(potential, positions.shape[0], chunk_size, pairs, positions.dtype)
    ])


def fill_store(name: str, positions: torch.Tensor, cells: torch.Tensor, numbers: torch.Tensor,
               potential: Potential, targets: Sequence[Target], *, temperature_K: float,
               pressure_GPa: float | None, replica: torch.Tensor | None = None,
               chunk_size: int = 64, pair_cache_mb: float = DEFAULT_LIMIT_MB) -> SnapshotStore:
    """A :class:`SnapshotStore` with U_θ̃ and the θ-independent observables of ``targets``.

    positions [S, N, 3] Å, cells [S, 3, 3] Å (rows), numbers [N]; tensors in the potential's
    dtype and device. The snapshots' pair lists are searched here, once, and kept on the store
    for the updates (up to ``pair_cache_mb``, :mod:`difftre_torch.pair_reuse`).
    """
    numbers = numbers.to(positions.device)
    pairs = cache_pairs(potential, positions, cells, pair_cache_mb)
    energies = reference_energies(potential, positions, cells, numbers, chunk_size, pairs)
    observables = static_observables(positions, cells, numbers, list(targets), chunk_size)
    store = SnapshotStore(numbers=numbers, positions=positions, cells=cells,
                          reference_energies=energies, temperature_K=temperature_K,
                          pressure_GPa=pressure_GPa, observables=observables, replica=replica,
                          name=name)
    store.pair_cache = pairs
    return store


def theta_dependent(grouped: dict[str, list[Target]], point: str) -> list[Target]:
    """The targets of state point ``point`` whose per-snapshot values depend on θ (pressure,
    stress); with none, :func:`make_chunk_fn`'s function returns the energy alone there."""
    return [t for t in grouped.get(point, []) if spec(t).depends_on_theta]


def make_chunk_fn(grouped: dict[str, list[Target]]):
    """The chunk function for :func:`~difftre_torch.gradient.difftre_gradient`: energy [b] eV,
    plus the θ-dependent observables of the store's state point from one stress evaluation."""

    def chunk_fn(potential, positions, cells, numbers, store: SnapshotStore, create_graph: bool):
        theta_targets = theta_dependent(grouped, store.name)
        if not theta_targets:
            return {"energy": potential(positions, cells, numbers)}
        ev = evaluate(potential, positions, cells, numbers, forces=False, stress=True,
                      create_graph=create_graph)
        out = theta_observables(ev, positions.shape[1], store.temperature_K, theta_targets)
        return {"energy": ev.energy, **out}

    return chunk_fn


def reweighted_predictions(weights: Sequence[torch.Tensor], values: Sequence[dict[str, torch.Tensor]],
                           grouped: dict[str, list[Target]], point_names: Sequence[str],
                           ranks: Ranks | None = None) -> dict[str, torch.Tensor]:
    """⟨O_k⟩ = Σ_i w_i O_k(S_i) for every target, name → [n]; with several ``ranks`` the sum runs
    over every rank's snapshots (``weights``, ``values``: this rank's)."""
    out = {}
    for k, point in enumerate(point_names):
        for t in grouped.get(point, []):
            out[t.name] = reweighted_mean(weights[k], values[k][t.name], ranks)
    return out


def make_loss_fn(grouped: dict[str, list[Target]], point_names: Sequence[str], ranks: Ranks | None = None):
    """``loss_fn(weights, values) -> (L, {target name: λ_k · loss_k})`` for ``difftre_gradient``.
    With several ``ranks`` the averages are global (all-reduced), so every rank computes the same
    L; its gradient reaches this rank's weights and values."""
    point_names = list(point_names)

    def loss_fn(weights, values):
        predictions = reweighted_predictions(weights, values, grouped, point_names, ranks)
        parts: dict[str, torch.Tensor] = {}
        for point in point_names:
            for t in grouped.get(point, []):
                pred = predictions[t.name]
                target = t.values.to(pred)
                sigma = None if t.sigma is None else t.sigma.to(pred)
                if pred.shape != target.shape:
                    raise ValueError(f"Target {t.name!r}: the observable gives shape "
                                     f"{tuple(pred.shape)}, the target values {tuple(target.shape)}")
                parts[t.name] = t.weight * observable_loss(pred, target, sigma)
        total = sum(parts.values()) if parts else torch.zeros(())
        return total, parts

    return loss_fn
