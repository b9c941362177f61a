"""Losses: reweighted observables against experiment, and force matching against reference data.

DiffTRe loss (Thaler & Zavadlav 2021, Eq. 2, with optional experimental uncertainties):

    L(θ) = Σ_k λ_k · mean_bins [ (⟨O_k⟩_θ − Õ_k)² / σ_k² ] + λ_FM · L_FM(θ)

Force matching on M labelled reference frames m with N_m atoms (energies eV, forces eV/Å):

    L_FM = w_E · mean_m [ ((U_θ(S_m) − E_m) / N_m)² ] + w_F · mean_{m,i,α} [ (F_θ − F_ref)² ]

i.e. the per-atom energy MSE (eV²/atom²) and the force-component MSE (eV²/Å²).
"""

from __future__ import annotations

import torch


def observable_loss(
    prediction: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor | None = None
) -> torch.Tensor:
    """mean over bins of (prediction − target)² / σ² (σ = 1 when ``None``); scalar.

    prediction, target, sigma: [...] with identical shapes (a scalar observable is shape []).
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"observable_loss: prediction {tuple(prediction.shape)} vs target "
            f"{tuple(target.shape)}"
        )
    residual = prediction - target
    if sigma is not None:
        if torch.any(sigma <= 0):
            raise ValueError("observable_loss: every σ must be > 0")
        residual = residual / sigma
    return (residual * residual).mean()


def energy_force_loss(
    energies: torch.Tensor,
    reference_energies: torch.Tensor,
    forces: torch.Tensor,
    reference_forces: torch.Tensor,
    n_atoms: int,
    *,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Force-matching loss for a batch of M frames of one N-atom system.

    energies, reference_energies: [M] eV; forces, reference_forces: [M, N, 3] eV/Å.
    Returns (w_E·MSE(E/N) + w_F·MSE(F), {"energy_mse": …, "force_mse": …}).
    """
    energy_mse = (((energies - reference_energies) / n_atoms) ** 2).mean()
    force_mse = ((forces - reference_forces) ** 2).mean()
    total = energy_weight * energy_mse + force_weight * force_mse
    return total, {"energy_mse": energy_mse.detach(), "force_mse": force_mse.detach()}
