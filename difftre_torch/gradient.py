"""The DiffTRe gradient through N cached snapshots in memory independent of N.

For snapshots S_i of each state point, reference energies Ũ_i = U_θ̃(S_i) and weights
w_i(θ) = softmax_i(−β[U_θ(S_i) − Ũ_i]), the loss L depends on θ through the energies U_i and
through θ-dependent observables O_i(θ) (pressure, stress):

    dL/dθ = Σ_i (∂L/∂U_i) ∂U_i/∂θ + Σ_i (∂L/∂O_i) · ∂O_i/∂θ.

The first term is the reweighting gradient; the second is the ⟨∂O/∂θ⟩ term (for
⟨O⟩ = Σ w_i O_i, ∂L/∂O_i = w_i ∂L/∂⟨O⟩). Computing it in one autograd graph would hold the
potential's graph for all N snapshots at once. Instead:

1. forward pass without a graph, in chunks: U_i and O_i(θ) for every snapshot;
2. the loss on detached leaves U_i, O_i → the N cotangents ∂L/∂U_i and ∂L/∂O_i (cheap);
3. for each chunk, recompute U_i, O_i with a graph and backpropagate the surrogate
   Σ_{i∈chunk} (∂L/∂U_i) U_i + (∂L/∂O_i)·O_i, accumulating dL/dθ.

Peak memory is one chunk's graph plus O(N) scalars; the result equals the one-shot gradient
(tested). Costs: two forward passes and one backward pass per snapshot; a potential that takes a
precomputed pair list searches each store's snapshots once, not in every pass
(:mod:`difftre_torch.pair_reuse`). Step 1 needs no pass where its outputs are at hand
(``forward=``): right after sampling at θ the energies are the store's reference energies, and
a caller that reweighted at θ to decide whether to sample again has them too.

Across several ranks (``ranks``, :mod:`difftre_torch.distributed`) each rank passes its own
snapshots; the weights, the averages in the loss and N_eff are global (all-reduced), step 2 gives
each rank the cotangents of its own snapshots, step 3 runs locally, and the parameter gradient is
all-reduced (one flat SUM), so every rank returns the same loss, N_eff and dL/dθ. ``loss_fn``
must then form its averages with the same ``ranks``
(:func:`~difftre_torch.objective.make_loss_fn` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from difftre_torch.pair_reuse import DEFAULT_LIMIT_MB, chunk_calls, store_pairs
from difftre_torch.potentials.base import Potential
from difftre_torch.reweighting import boltzmann_weights, effective_sample_size
from difftre_torch.sampling.store import SnapshotStore

if TYPE_CHECKING:
    from difftre_torch.distributed import Ranks

ChunkFn = Callable[..., dict[str, torch.Tensor]]
"""``chunk_fn(potential, positions [b,N,3], cells [b,3,3], numbers [N], store, create_graph)``
→ dict with ``"energy"`` [b] eV and any θ-dependent observables [b, ...]."""

LossFn = Callable[
    [list[torch.Tensor], list[dict[str, torch.Tensor]]],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]
"""``loss_fn(weights, values)`` with one entry per state point: weights [S_k] and values
(θ-independent observables of the store merged with θ-dependent ones) → (loss, parts)."""


def energy_only(potential: Potential, positions: torch.Tensor, cells: torch.Tensor,
                numbers: torch.Tensor, store: SnapshotStore, create_graph: bool) -> dict:
    """The default chunk function: energies only (for θ-independent observables)."""
    return {"energy": potential(positions, cells, numbers)}


@dataclass
class GradientResult:
    """loss: scalar (detached). parts: per-term losses (detached). grads: dL/dθ per parameter.
    weights: per state point [S_k] (detached). n_eff: per state point, exp(−Σ w ln w).
    values: per state point, the θ-dependent observables [S_k, ...] at θ (detached)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    grads: tuple[torch.Tensor, ...]
    weights: list[torch.Tensor]
    n_eff: list[float]
    values: list[dict[str, torch.Tensor]]


def forward_outputs(potential: Potential, stores: Sequence[SnapshotStore], *,
                    chunk_fn: ChunkFn = energy_only, chunk_size: int = 64,
                    pair_cache_mb: float = DEFAULT_LIMIT_MB,
                    known: Sequence[dict[str, torch.Tensor] | None] | None = None
                    ) -> list[dict[str, torch.Tensor]]:
    """Step 1: ``chunk_fn``'s outputs at the current θ for every snapshot of each store, without
    a graph (detached; ``"energy"`` [S_k] eV and any θ-dependent observables [S_k, ...]).

    ``known``: per store, outputs already at hand for the current θ, used as they are instead of
    a pass (for example U_θ(S_i) of a store just filled at θ, which are its reference energies),
    or None for a store to pass over. They must hold every key ``chunk_fn`` returns for it.
    """
    known = [None] * len(stores) if known is None else list(known)
    if len(known) != len(stores):
        raise ValueError(f"forward_outputs: {len(known)} known outputs for {len(stores)} stores")
    outs = []
    for store, given in zip(stores, known):
        if given is None:
            given = _forward_all(potential, store, chunk_fn, chunk_size, pair_cache_mb)
        _check_outputs(store, given)
        outs.append({k: v.detach() for k, v in given.items()})
    return outs


def _check_outputs(store: SnapshotStore, out: dict[str, torch.Tensor]) -> None:
    if "energy" not in out or out["energy"].shape != (len(store),):
        shape = None if "energy" not in out else tuple(out["energy"].shape)
        raise ValueError(f"store {store.name!r}: the outputs at θ need 'energy' of shape ({len(store)},), "
                         f"got {shape}")


def _forward_all(potential: Potential, store: SnapshotStore, chunk_fn: ChunkFn,
                 chunk_size: int, pair_cache_mb: float) -> dict[str, torch.Tensor]:
    outs: list[dict[str, torch.Tensor]] = []
    cache = store_pairs(potential, store, pair_cache_mb)
    for sl, call in chunk_calls(potential, len(store), chunk_size, cache, store.positions.dtype):
        with torch.no_grad():
            out = chunk_fn(call, store.positions[sl], store.cells[sl], store.numbers, store, False)
        outs.append({k: v.detach() for k, v in out.items()})
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def difftre_gradient(
    potential: Potential,
    stores: Sequence[SnapshotStore],
    loss_fn: LossFn,
    params: Sequence[torch.nn.Parameter],
    *,
    chunk_fn: ChunkFn = energy_only,
    chunk_size: int = 64,
    ranks: Ranks | None = None,
    pair_cache_mb: float = DEFAULT_LIMIT_MB,
    forward: Sequence[dict[str, torch.Tensor]] | None = None,
) -> GradientResult:
    """dL/dθ of the reweighted loss over ``stores`` (one per state point), chunked.

    Does not touch ``param.grad``: the caller adds the returned gradients (and any other
    terms, e.g. force matching) and steps the optimiser. ``ranks``: several processes, each with
    its own snapshots in ``stores`` (module docstring); the result is the global one on each.
    ``pair_cache_mb``: each store's pair lists are searched once and reused by both passes and by
    later updates over the same store, up to this size (:mod:`difftre_torch.pair_reuse`).
    ``forward``: step 1's outputs at the current θ (:func:`forward_outputs`) where the caller has
    them already, e.g. from deciding whether to sample again; then only step 3 passes over the
    snapshots.
    """
    params = list(params)
    if forward is None:
        forward = forward_outputs(potential, stores, chunk_fn=chunk_fn, chunk_size=chunk_size,
                                  pair_cache_mb=pair_cache_mb)
    elif len(forward) != len(stores):
        raise ValueError(f"difftre_gradient: {len(forward)} forward outputs for {len(stores)} stores")
    else:
        for store, out in zip(stores, forward):
            _check_outputs(store, out)

    # Step 2: the loss on detached leaves gives the per-snapshot cotangents.
    leaves: list[dict[str, torch.Tensor]] = []
    weights: list[torch.Tensor] = []
    values: list[dict[str, torch.Tensor]] = []
    with torch.enable_grad():
        for store, out in zip(stores, forward):
            leaf = {k: v.clone().requires_grad_(True) for k, v in out.items()}
            leaves.append(leaf)
            w = boltzmann_weights(leaf["energy"], store.reference_energies, store.kT_eV, ranks)
            weights.append(w)
            theta_values = {k: v for k, v in leaf.items() if k != "energy"}
            values.append({**store.observables, **theta_values})
        loss, parts = loss_fn(weights, values)
        flat = [v for leaf in leaves for v in leaf.values()]
        cotangents = torch.autograd.grad(loss, flat, allow_unused=True)
    cot_iter = iter(cotangents)
    cot = [{k: next(cot_iter) for k in leaf} for leaf in leaves]

    # Step 3: chunked vector–Jacobian products into θ.
    grads = [torch.zeros_like(p) for p in params]
    for store, c in zip(stores, cot):
        active = {k: g for k, g in c.items() if g is not None and torch.any(g != 0)}
        if not active:
            continue
        cache = store_pairs(potential, store, pair_cache_mb)
        for sl, call in chunk_calls(potential, len(store), chunk_size, cache, store.positions.dtype):
            with torch.enable_grad():
                out = chunk_fn(call, store.positions[sl], store.cells[sl], store.numbers, store, True)
                surrogate = sum((active[k][sl] * out[k]).sum() for k in active)
                chunk_grads = torch.autograd.grad(surrogate, params, allow_unused=True)
            for g, cg in zip(grads, chunk_grads):
                if cg is not None:
                    g.add_(cg)
    if ranks is not None and ranks.active:
        grads = ranks.sum_list(grads, "the parameter gradient")
    return GradientResult(
        loss=loss.detach(),
        parts={k: v.detach() for k, v in parts.items()},
        grads=tuple(grads),
        weights=[w.detach() for w in weights],
        n_eff=[float(effective_sample_size(w.detach(), ranks)) for w in weights],
        values=[{k: v.detach() for k, v in leaf.items() if k != "energy"} for leaf in leaves],
    )


@dataclass
class Reweighted:
    """The stores reweighted to the current θ, without a gradient: weights [S_k] and N_eff per
    state point, and values (θ-independent cached + θ-dependent recomputed) [S_k, ...]."""

    weights: list[torch.Tensor]
    n_eff: list[float]
    values: list[dict[str, torch.Tensor]]


def reweight(potential: Potential, stores: Sequence[SnapshotStore], *,
             chunk_fn: ChunkFn = energy_only, chunk_size: int = 64, ranks: Ranks | None = None,
             pair_cache_mb: float = DEFAULT_LIMIT_MB,
             known: Sequence[dict[str, torch.Tensor] | None] | None = None) -> Reweighted:
    """Forward pass only: w_i(θ), N_eff and the per-snapshot observables at the current θ
    (``ranks``: this rank's slice of the global weights, global N_eff; ``known``: as in
    :func:`forward_outputs`)."""
    weights, n_eff, values = [], [], []
    outs = forward_outputs(potential, stores, chunk_fn=chunk_fn, chunk_size=chunk_size,
                           pair_cache_mb=pair_cache_mb, known=known)
    for store, out in zip(stores, outs):
        w = boltzmann_weights(out["energy"], store.reference_energies, store.kT_eV, ranks)
        weights.append(w)
        n_eff.append(float(effective_sample_size(w, ranks)))
        values.append({**store.observables, **{k: v for k, v in out.items() if k != "energy"}})
    return Reweighted(weights, n_eff, values)
