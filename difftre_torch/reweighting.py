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

Units: energies in eV, k_B T in eV (``ase.units.kB * T``).
"""

from __future__ import annotations

import torch


def boltzmann_weights(
    energies: torch.Tensor, reference_energies: torch.Tensor, kT: float | torch.Tensor
) -> torch.Tensor:
    """w_i = softmax_i(−[U_θ(S_i) − U_θ̃(S_i)] / kT) over the last dimension.

    energies, reference_energies: [..., N] eV (broadcastable); kT: eV (scalar or [..., 1]).
    Returns [..., N], summing to 1, differentiable in ``energies``.
    """
    if energies.shape[-1] == 0:
        raise ValueError("boltzmann_weights: no snapshots (last dimension is empty)")
    log_w = -(energies - reference_energies) / kT
    return torch.softmax(log_w, dim=-1)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """N_eff = exp(−Σ_i w_i ln w_i) over the last dimension (0 ln 0 = 0), [...]."""
    safe = torch.where(weights > 0, weights, torch.ones_like(weights))
    entropy = -(weights * torch.log(safe)).sum(dim=-1)
    return torch.exp(entropy)


def needs_resampling(weights: torch.Tensor, ratio: float = 0.9) -> bool:
    """True when N_eff / N < ``ratio`` (for any state point, if weights are [S, N])."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"needs_resampling: ratio must be in (0, 1], got {ratio}")
    n = weights.shape[-1]
    return bool((effective_sample_size(weights.detach()) / n < ratio).any())


def reweighted_mean(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """⟨O⟩ = Σ_i w_i O_i for weights [N] and per-snapshot values [N, ...] → [...]."""
    return torch.tensordot(weights, values, dims=([0], [0]))
