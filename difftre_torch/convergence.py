"""The sampling noise of the reweighted loss, and the rule that stops a converged refinement.

MD snapshots are correlated, so the noise of L(θ) = loss(⟨O⟩_θ) is estimated by the delete-one
jackknife over blocks: each state point's snapshots are cut into blocks of consecutive snapshots
of one replica of one trajectory (``n_blocks`` per replica and trajectory); for each block b the
loss L_(b) is recomputed with b's weights set to zero (the rest renormalised), and

    SE(L)² = (B − 1)/B · Σ_b (L_(b) − mean_b L_(b))²                 (B blocks in all).

No potential is evaluated: the weights and values of the update are reused. Across ranks every
rank walks the same global list of blocks (each zeroes the blocks it holds), so the loss
functions' collectives stay in step.

The stopping rule (:func:`converged`): a refinement has converged when, for ``patience``
consecutive updates, the target loss changed by at most ``factor`` · SE(L) from the previous
update and the decrease the undamped Gauss–Newton model still promises (``step["gain"]``, with
Levenberg–Marquardt steps; not the damped step's, which a trust region may have shortened) was at
most ``factor`` · SE(L): what is left to gain is within the loss's own sampling noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from difftre_torch.sampling.store import SnapshotStore

if TYPE_CHECKING:
    from difftre_torch.distributed import Ranks
    from difftre_torch.records import UpdateRecord


def block_labels(store: SnapshotStore, segments: torch.Tensor | None, n_blocks: int,
                 n_replicas: int | None = None) -> torch.Tensor:
    """[S] int64 block of every snapshot: (trajectory, replica, time block) as one number.
    n_replicas: the state point's replicas over every rank, so that the numbers mean the same on
    every rank (replica indices are global); default: this store's largest index + 1. Snapshots of
    one replica of one trajectory are consecutive in the store, in time order."""
    if n_blocks < 1:
        raise ValueError(f"block_labels: n_blocks must be >= 1, got {n_blocks}")
    s = len(store)
    segments = torch.zeros(s, dtype=torch.long) if segments is None else segments.cpu()
    replica = store.replica.cpu()
    if n_replicas is None:
        n_replicas = int(replica.max()) + 1 if s else 1
    group = segments * n_replicas + replica
    labels = torch.empty(s, dtype=torch.long)
    for g in torch.unique(group):
        idx = torch.nonzero(group == g).flatten()
        position = torch.arange(idx.numel())
        labels[idx] = g * n_blocks + position * n_blocks // idx.numel()
    return labels


def jackknife_replicates(fn: Callable[[list[torch.Tensor]], torch.Tensor], weights: Sequence[torch.Tensor],
                         labels: Sequence[torch.Tensor], ranks: Ranks | None = None) -> torch.Tensor:
    """fn(weights with one block deleted) for every block, [B, ...] float64 (B = 0 with fewer than
    two blocks). weights [S_k] per state point (this rank's slice), labels [S_k] from
    :func:`block_labels`; ``fn`` gets weights renormalised over what is left (globally)."""
    active = ranks is not None and ranks.active
    keys = sorted({(k, int(b)) for k, lab in enumerate(labels) for b in torch.unique(lab).tolist()})
    if active:
        keys = sorted({key for part in ranks.gather(keys, "the jackknife's blocks") for key in part})
    if len(keys) < 2:
        return torch.zeros(0, dtype=torch.float64)
    replicates = []
    with torch.no_grad():
        for point, block in keys:
            trimmed = []
            for k, (w, lab) in enumerate(zip(weights, labels)):
                if k != point:
                    trimmed.append(w)
                    continue
                kept = w * (lab.to(w.device) != block).to(w)
                total = kept.sum()
                if active:
                    total = ranks.sum(total.detach().reshape(1), "a jackknife normalisation")[0].to(w)
                trimmed.append(kept / total)
            replicates.append(torch.as_tensor(fn(trimmed)).detach().double().cpu())
    return torch.stack(replicates)


def jackknife_error(replicates: torch.Tensor) -> torch.Tensor:
    """SE = √((B − 1)/B · Σ_b (x_b − x̄)²) of jackknife replicates [B, ...] → [...]; 0 if B < 2."""
    n = replicates.shape[0]
    if n < 2:
        return torch.zeros(replicates.shape[1:], dtype=torch.float64)
    return torch.sqrt((n - 1) / n * ((replicates - replicates.mean(0)) ** 2).sum(0))


def jackknife_loss_error(loss_fn: Callable, weights: Sequence[torch.Tensor],
                         values: Sequence[dict[str, torch.Tensor]], labels: Sequence[torch.Tensor],
                         ranks: Ranks | None = None) -> float:
    """SE(L) by the delete-one-block jackknife (module docstring). ``loss_fn(weights, values)``
    as for :func:`~difftre_torch.gradient.difftre_gradient`. 0.0 with fewer than two blocks."""
    replicates = jackknife_replicates(lambda w: loss_fn(w, values)[0], weights, labels, ranks)
    return float(jackknife_error(replicates))


def converged(history: Sequence[UpdateRecord], patience: int, factor: float) -> bool:
    """True when the last ``patience`` updates each changed the target loss by at most
    ``factor`` · its noise from the update before, and predicted no larger decrease (module
    docstring). Reads ``noise["target_loss"]``, ``noise["loss_se"]`` and ``step["gain"]``."""
    if patience < 1 or len(history) < patience + 1:
        return False
    for before, now in zip(history[-patience - 1:-1], history[-patience:]):
        if "target_loss" not in now.noise or "target_loss" not in before.noise:
            return False
        noise = factor * now.noise.get("loss_se", 0.0)
        change = abs(now.noise["target_loss"] - before.noise["target_loss"])
        predicted = now.step.get("gain", 0.0)
        if noise <= 0 or change > noise or predicted > noise:
            return False
    return True
