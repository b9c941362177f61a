"""Multistate reweighting (MBAR) of snapshots pooled from several parameter sets θ_1..θ_K.

Snapshots S_j, j = 1..N, were sampled in K rounds, N_k of them with parameters θ_k, all at one
state point (T, P). The multistate Bennett acceptance ratio (Shirts & Chodera, J. Chem. Phys.
129, 124105 (2008), doi:10.1063/1.2978177) weights every pooled snapshot for any θ:

    w_j(θ) ∝ exp(−u_θ(S_j)) / Σ_k N_k exp(f_k − u_k(S_j)),      u = β U  (reduced, dimensionless)

with the dimensionless free energies f_k = −ln Σ_j exp(−u_k(S_j)) / Σ_l N_l exp(f_l − u_l(S_j)),
solved self-consistently (f_1 = 0) by pymbar. Only the numerator depends on θ, so the weights
are the DiffTRe softmax w_j = softmax_j(−β[U_θ(S_j) − Ũ_j]) with the per-snapshot *mixture
reference energy*

    Ũ_j = −k_B T ln Σ_k N_k exp(f_k − β U_θk(S_j))        (eV, up to one constant for all j),

which :func:`mixture_reference` returns; the gradient code needs nothing else. For K = 1 it is
U_θ1(S_j) plus a constant, today's single-trajectory DiffTRe. In NPT at one (T, P) the p·V term
is the same for every θ_k and cancels, as in the single-trajectory case.

The MBAR equations are invariant to adding a constant c_j to every u_k(S_j) (and to u_θ(S_j));
the functions here subtract the newest row, so that energies of −1e5 eV keep their precision.

Units: energies in eV, k_B T in eV; f_k dimensionless.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch


def _pymbar():
    """pymbar, imported without its notes about JAX and its timeseries module (logged at import)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pymbar
    return pymbar


def free_energies(reduced: np.ndarray | torch.Tensor, counts: np.ndarray | list[int],
                  tolerance: float = 1e-10, polish: int = 500, max_residual: float = 1e-3) -> np.ndarray:
    """MBAR's dimensionless free energies f_k [K] (f_0 = 0) with pymbar.

    reduced: [K, N] u_k(S_j) = β U_θk(S_j) of every pooled snapshot j under every parameter set k
    (any per-column constant may be added). counts: [K] N_k, the snapshots sampled with θ_k
    (Σ N_k = N). K = 1 gives [0] without a solve. ``tolerance``: pymbar's relative tolerance.
    Where pymbar stops short of it (trajectories that overlap little, energies in float32), up to
    ``polish`` self-consistent iterations follow (:func:`self_consistency`); a residual above
    ``max_residual`` raises, since the weights would then not be MBAR's (a residual ε in f_k
    changes a trajectory's weights by a factor e^ε at most).
    """
    u = np.asarray(reduced.detach().cpu().double() if isinstance(reduced, torch.Tensor) else reduced,
                   dtype=np.float64)
    n_k = np.asarray(counts, dtype=np.int64)
    if u.ndim != 2 or u.shape[0] != n_k.shape[0] or int(n_k.sum()) != u.shape[1]:
        raise ValueError(f"free_energies: reduced energies {u.shape} do not match counts {n_k.tolist()} "
                         "(expected [K, Σ N_k])")
    if not np.isfinite(u).all():
        raise ValueError("free_energies: the reduced energies are not all finite")
    if u.shape[0] == 1:
        return np.zeros(1)
    pymbar = _pymbar()
    quiet = logging.getLogger("pymbar")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its solver's notes on tolerances; the check below decides
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mbar = pymbar.MBAR(u, n_k, relative_tolerance=tolerance, maximum_iterations=2000)
    finally:
        quiet.setLevel(level)
    f = np.asarray(mbar.f_k, dtype=np.float64)
    f = f - f[0]
    for _ in range(polish):  # where pymbar stopped short of its tolerance: the fixed point, a few steps
        step = self_consistency(u, n_k, f)
        if not np.abs(step).max() > 1e-12:
            break
        f = f + step
    residual = float(np.abs(self_consistency(u, n_k, f)).max())
    if not residual < max_residual:
        raise ArithmeticError(f"free_energies: the f_k miss the MBAR equations by {residual:.2g} (more than "
                              f"{max_residual:g}; the trajectories may not overlap at all)")
    return f


def self_consistency(reduced: np.ndarray, counts: np.ndarray, f: np.ndarray) -> np.ndarray:
    """f_k^new − f_k with f^new = −ln Σ_j exp(−u_k(S_j)) / Σ_l N_l exp(f_l − u_l(S_j)), both with
    f_0 = 0: zero at the MBAR solution, [K]."""
    from scipy.special import logsumexp

    log_d = logsumexp(np.log(counts)[:, None] + f[:, None] - reduced, axis=0)
    new = -logsumexp(-reduced - log_d[None, :], axis=1)
    return (new - new[0]) - f


def log_mixture(reduced: torch.Tensor, counts: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """ln Σ_k N_k exp(f_k − u_k(S_j)), [N], in log-sum-exp form.

    reduced: [K, N] dimensionless; counts: [K]; f: [K] (:func:`free_energies`)."""
    log_n = torch.log(counts.to(reduced))
    return torch.logsumexp(log_n[:, None] + f.to(reduced)[:, None] - reduced, dim=0)


def mixture_reference(energies: torch.Tensor, counts: torch.Tensor, f: torch.Tensor,
                      kT: float) -> torch.Tensor:
    """Ũ_j = U_θK(S_j) − k_B T ln Σ_k N_k exp(f_k − β[U_θk(S_j) − U_θK(S_j)]), [N] eV.

    energies: [K, N] U_θk(S_j) in eV (row K−1 the newest parameter set); counts [K]; f [K]
    (for u = β U with the same per-column shift); kT in eV. The DiffTRe weights at θ are
    softmax_j(−β[U_θ(S_j) − Ũ_j]), the MBAR weights (module docstring)."""
    newest = energies[-1]
    return newest - kT * log_mixture((energies - newest) / kT, counts, f)


def reduced_matrix(energies: torch.Tensor, kT: float) -> torch.Tensor:
    """β[U_θk(S_j) − U_θK(S_j)], [K, N]: the reduced energies with the newest row subtracted."""
    return (energies - energies[-1]) / kT


def weight_shares(weights: torch.Tensor, segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """W_k = Σ_{j ∈ trajectory k} w_j, [n_segments]: each trajectory's share of the pooled weight.

    weights [N] (summing to 1); segments [N] int64, the trajectory of each snapshot. The pooled
    N_eff attributed to trajectory k is W_k · N_eff (the attributions add up to N_eff)."""
    out = torch.zeros(n_segments, dtype=weights.dtype, device=weights.device)
    return out.index_add_(0, segments.to(weights.device), weights)


def reweighted_standard_error(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Standard error of ⟨O⟩ = Σ_j w_j O_j for independent snapshots (delta method for
    self-normalised importance weights): SE² = Σ_j w_j² (O_j − ⟨O⟩)². weights [N], values [N, ...]
    → [...]. Correlated snapshots (MD) make it a lower bound; block them first."""
    mean = torch.tensordot(weights, values, dims=([0], [0]))
    centred = values - mean
    w2 = (weights * weights).reshape(-1, *([1] * (values.dim() - 1)))
    return torch.sqrt((w2 * centred * centred).sum(dim=0))
