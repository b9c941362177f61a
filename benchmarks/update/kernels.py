"""The two measured operations of the update benchmark and their phase clocks: (a) one
``difftre_gradient`` call, (b) one plain chunked forward + backward pass, each split into
phases (forward passes, backward pass, neighbour lists)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from benchmarks.common import sync, timed


def rdf_loss(store):
    """L = mean_bins (⟨g⟩_θ − g̃)², with g̃ = 1.05 × the plain mean (so dL/dθ ≠ 0)."""
    from difftre_torch.loss import observable_loss
    from difftre_torch.reweighting import reweighted_mean

    target = 1.05 * store.observables["rdf"].mean(0)

    def loss_fn(weights, values):
        loss = observable_loss(reweighted_mean(weights[0], values[0]["rdf"]), target)
        return loss, {"rdf": loss}

    return loss_fn


NEIGHBOUR_SECONDS = {"neighbours": 0.0}  # accumulated by the wrapper time_neighbour_lists installs


def time_neighbour_lists(potential, device: torch.device) -> None:
    """Wrap the ``neighbor_pairs`` that the potential's module calls (a module attribute,
    replaced here; the package's files are untouched) so its seconds add to NEIGHBOUR_SECONDS."""
    module = sys.modules[type(potential).__module__]
    search = getattr(module, "neighbor_pairs", None)
    if search is None:
        return
    module.neighbor_pairs = timed(search, device, NEIGHBOUR_SECONDS, "neighbours")


@dataclass
class PhaseClock:
    """Seconds spent in the chunk function, split by phase, accumulated over calls."""

    device: torch.device
    seconds: dict = field(default_factory=lambda: {"fwd_nograd": 0.0, "fwd_graph": 0.0})

    def chunk_fn(self, potential, positions, cells, numbers, store, create_graph):
        sync(self.device)
        start = time.perf_counter()
        out = {"energy": potential(positions, cells, numbers)}
        sync(self.device)
        self.seconds["fwd_graph" if create_graph else "fwd_nograd"] += time.perf_counter() - start
        return out


def update(potential, store, params, chunk_size: int, device: torch.device, cached: bool = True,
           forward: list | None = None) -> dict:
    """(a) one difftre_gradient call: seconds in all, per phase, and in neighbour lists.
    ``cached``: over the store's pair lists (searched when the store was filled, as in the
    trainer); False: every pass searches (``pair_cache_mb=0``). ``forward``: step 1's outputs at
    θ handed in, as the trainer hands them in right after a sample (the store's reference
    energies) or after reweighting to decide whether to sample again."""
    from difftre_torch.gradient import difftre_gradient
    from difftre_torch.pair_reuse import DEFAULT_LIMIT_MB

    clock = PhaseClock(device)
    neighbours = NEIGHBOUR_SECONDS["neighbours"]
    sync(device)
    start = time.perf_counter()
    result = difftre_gradient(potential, [store], rdf_loss(store), params,
                              chunk_fn=clock.chunk_fn, chunk_size=chunk_size,
                              pair_cache_mb=DEFAULT_LIMIT_MB if cached else 0.0, forward=forward)
    sync(device)
    total = time.perf_counter() - start
    return {"total": total, **clock.seconds, "bwd_and_loss": total - sum(clock.seconds.values()),
            "neighbours": NEIGHBOUR_SECONDS["neighbours"] - neighbours, "n_eff": result.n_eff[0]}


def forward_backward(potential, store, params, chunk_size: int, device: torch.device,
                     cached: bool = False) -> dict:
    """(b) the baseline: Σ_chunks autograd.grad(Σ_i U_θ(S_i), θ), accumulated like (a);
    ``cached``: over the store's pair lists (no search), else searching as a training step does."""
    from difftre_torch.pair_reuse import chunk_calls

    grads = [torch.zeros_like(p) for p in params]
    fwd = bwd = 0.0
    neighbours = NEIGHBOUR_SECONDS["neighbours"]
    cache = store.pair_cache if cached else None
    for sl, call in chunk_calls(potential, len(store), chunk_size, cache, store.positions.dtype):
        sync(device)
        t0 = time.perf_counter()
        with torch.enable_grad():
            energy = call(store.positions[sl], store.cells[sl], store.numbers).sum()
            sync(device)
            t1 = time.perf_counter()
            chunk_grads = torch.autograd.grad(energy, params, allow_unused=True)
        for g, cg in zip(grads, chunk_grads):
            if cg is not None:
                g.add_(cg)
        sync(device)
        t2 = time.perf_counter()
        fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return {"total": fwd + bwd, "fwd": fwd, "bwd": bwd,
            "neighbours": NEIGHBOUR_SECONDS["neighbours"] - neighbours}
