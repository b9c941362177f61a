"""Block statistics of correlated time series: block means, their weighted mean and standard
error, and the χ² per bin of two estimates with errors.

Frames of an MD trajectory are correlated, so the standard error of a mean is taken from the
scatter of the means of M contiguous blocks (each longer than the correlation time), not from
the frames themselves: σ² = M/(M − 1) · Σ_m w_m² (x_m − x̄)² with Σ w = 1 (equal weights give
s²/M, s² the unbiased block variance). Used by the experiment's publication
(:mod:`recipes.world.experiment`) and the model-vs-experiment comparison
(:mod:`difftre_torch.compare`), so both quote errors the same way.
"""

from __future__ import annotations

import math

import torch

__all__ = ["block_means", "chi2_per_bin", "mean_sem"]


def block_means(values: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Means of ``n_blocks`` contiguous equal blocks along axis 0, [n_blocks, ...].

    values: [F, ...]; the first F mod n_blocks frames (the ones nearest equilibration) are
    dropped so every block has F // n_blocks frames.
    """
    n_frames = values.shape[0]
    if not 1 <= n_blocks <= n_frames:
        raise ValueError(f"need 1 <= n_blocks <= frames, got n_blocks={n_blocks}, frames={n_frames}")
    size = n_frames // n_blocks
    kept = values[n_frames - size * n_blocks:]
    return kept.reshape(n_blocks, size, *values.shape[1:]).mean(dim=1)


def mean_sem(blocks: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean over axis 0 and its standard error from the block scatter.

    blocks: [M, ...]; weights: [M] (e.g. frames per block; default equal).
    x̄ = Σ w_m x_m, σ² = M/(M − 1) · Σ w_m² (x_m − x̄)² with Σ w = 1 (equal weights: s²/M).
    """
    n = blocks.shape[0]
    if n < 2:
        raise ValueError("a standard error needs at least two blocks")
    w = torch.ones(n, dtype=blocks.dtype) if weights is None else weights.to(blocks)
    w = (w / w.sum()).reshape(n, *([1] * (blocks.ndim - 1)))
    mean = (w * blocks).sum(0)
    var = n / (n - 1) * (w**2 * (blocks - mean) ** 2).sum(0)
    return mean, var.sqrt()


def chi2_per_bin(a: torch.Tensor, sigma_a: torch.Tensor, b: torch.Tensor, sigma_b: torch.Tensor,
                 mask: torch.Tensor | None = None) -> tuple[float, int]:
    """(mean over bins of (a − b)² / (σ_a² + σ_b²), number of bins) over the bins with
    σ_a² + σ_b² > 0 (and ``mask``, a boolean [n], where given)."""
    var = sigma_a**2 + sigma_b**2
    keep = var > 0 if mask is None else (var > 0) & mask
    n = int(keep.sum())
    if n == 0:
        return math.nan, 0
    return float(((a - b)[keep] ** 2 / var[keep]).mean()), n
