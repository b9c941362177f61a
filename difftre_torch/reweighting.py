"""Thermodynamic perturbation weights and the effective sample size (DiffTRe, Eqs. 3–5).

Snapshots S_i were sampled in the canonical (NVT) or isothermal–isobaric (NPT) ensemble of the
reference potential U_θ̃. For new parameters θ the ensemble average of an observable is

    ⟨O⟩_θ ≈ Σ_i w_i O(S_i),   w_i = exp(−β ΔU_i) / Σ_j exp(−β ΔU_j),   ΔU_i = U_θ(S_i) − U_θ̃(S_i)

(Thaler & Zavadlav, Nat. Commun. 12, 6884 (2021), doi:10.1038/s41467-021-27241-4). Kinetic
energies cancel (same masses), and so does the p·V term in NPT, since V(S_i) is a property of
the stored snapshot, not of θ: the same weights hold in both ensembles. The weights are computed
as a softmax (log-sum-exp with the maximum subtracted), so energies of −1e5 eV with spreads of
100 eV stay finite.

The effective sample size N_eff = exp(−Σ w_i ln w_i) is N for uniform weights and 1 when one
snapshot carries all the weight; DiffTRe resamples when N_eff / N falls below a ratio.

Across several ranks (:mod:`difftre_torch.distributed`) each rank holds some of the snapshots;
given ``ranks``, the functions here return this rank's slice of the global weights (a softmax over
every rank's snapshots) and global N_eff and averages; without it, one process holds them all.

Units: energies in eV, k_B T in eV (``ase.units.kB * T``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from difftre_torch.distributed import Ranks


def boltzmann_weights(
    energies: torch.Tensor, reference_energies: torch.Tensor, kT: float | torch.Tensor,
    ranks: Ranks | None = None,
) -> torch.Tensor:
    """w_i = softmax_i(−[U_θ(S_i) − U_θ̃(S_i)] / kT) over the last dimension.

    energies, reference_energies: [..., N] eV (broadcastable); kT: eV (scalar or [..., 1]).
    Returns [..., N], summing to 1, differentiable in ``energies``. With several ``ranks``
    (energies [N_r], this rank's snapshots): this rank's slice exp(a_i − m)/Z of the softmax over
    all ranks' snapshots, m and Z all-reduced (max and sum) and held constant in the graph; the
    slices sum to 1 over the ranks. Averages over them must normalise again
    (:func:`reweighted_mean` with the same ``ranks``), which puts Z's dependence on every rank's
    energies back into the gradient.
    """
    if energies.shape[-1] == 0:
        raise ValueError("boltzmann_weights: no snapshots (last dimension is empty)")
    log_w = -(energies - reference_energies) / kT
    if ranks is None or not ranks.active:
        return torch.softmax(log_w, dim=-1)
    shift = ranks.max(log_w.detach().max(dim=-1, keepdim=True).values, "the weights' maximum")
    unnormalised = torch.exp(log_w - shift)
    return unnormalised / ranks.sum(unnormalised.detach().sum(dim=-1, keepdim=True), "the weights' sum")


def effective_sample_size(weights: torch.Tensor, ranks: Ranks | None = None) -> torch.Tensor:
    """N_eff = exp(−Σ_i w_i ln w_i) over the last dimension (0 ln 0 = 0), [...]; with several
    ``ranks`` the sum runs over every rank's snapshots (``weights``: this rank's slice)."""
    safe = torch.where(weights > 0, weights, torch.ones_like(weights))
    entropy = -(weights * torch.log(safe)).sum(dim=-1)
    if ranks is not None and ranks.active:
        entropy = ranks.sum(entropy.detach(), "N_eff")
    return torch.exp(entropy)


def needs_resampling(weights: torch.Tensor, ratio: float = 0.9) -> bool:
    """True when N_eff / N < ``ratio`` (for any state point, if weights are [S, N])."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"needs_resampling: ratio must be in (0, 1], got {ratio}")
    n = weights.shape[-1]
    return bool((effective_sample_size(weights.detach()) / n < ratio).any())


def reweighted_mean(weights: torch.Tensor, values: torch.Tensor, ranks: Ranks | None = None) -> torch.Tensor:
    """⟨O⟩ = Σ_i w_i O_i for weights [N] and per-snapshot values [N, ...] → [...].

    With several ``ranks`` (this rank's slice of :func:`boltzmann_weights`):
    ⟨O⟩ = Σ_ranks Σ_{i∈rank} w_i O_i / Σ_ranks Σ_{i∈rank} w_i, both sums all-reduced in one call.
    The denominator is 1 in value; in the graph it carries the normalisation, so that each rank's
    gradient is the exact one for its own snapshots: both sums are sums of terms each depending on
    one rank's snapshots only, which is what :meth:`~difftre_torch.distributed.Ranks.global_sum`'s
    pass-through gradient needs."""
    partial = torch.tensordot(weights, values, dims=([0], [0]))
    if ranks is None or not ranks.active:
        return partial
    both = ranks.global_sum(torch.cat([partial.reshape(-1), weights.sum().reshape(1)]), "a weighted average")
    return (both[:-1] / both[-1]).reshape(partial.shape)
