"""Boltzmann weights, effective sample size, resampling predicate."""

import math

import pytest
import torch

from difftre_torch.reweighting import (
    boltzmann_weights,
    effective_sample_size,
    needs_resampling,
    reweighted_mean,
)


def test_uniform_at_reference():
    u = torch.randn(50, dtype=torch.float64) * 10 - 1e3
    w = boltzmann_weights(u, u.clone(), 0.025)
    torch.testing.assert_close(w, torch.full_like(w, 1 / 50))
    assert effective_sample_size(w).item() == pytest.approx(50.0, rel=1e-12)
    assert not needs_resampling(w, 0.9)


def test_finite_for_huge_energies_and_spreads():
    gen = torch.Generator().manual_seed(0)
    reference = -1e5 + 100.0 * torch.rand(200, generator=gen, dtype=torch.float64)
    energies = reference + 100.0 * torch.rand(200, generator=gen, dtype=torch.float64)
    w = boltzmann_weights(energies, reference, 0.0258)
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(1.0, abs=1e-12)
    n_eff = effective_sample_size(w)
    assert torch.isfinite(n_eff) and 1.0 <= n_eff.item() < 2.0
    assert needs_resampling(w, 0.9)


def test_weights_match_direct_formula_and_n_eff_closed_form():
    du = torch.tensor([0.0, 0.01, 0.02, 0.05], dtype=torch.float64)
    kT = 0.03
    w = boltzmann_weights(du, torch.zeros(4, dtype=torch.float64), kT)
    direct = torch.exp(-du / kT) / torch.exp(-du / kT).sum()
    torch.testing.assert_close(w, direct)
    assert effective_sample_size(w).item() == pytest.approx(math.exp(-(direct * direct.log()).sum().item()))
    # one snapshot with all the weight
    assert effective_sample_size(torch.tensor([0.0, 1.0, 0.0])).item() == pytest.approx(1.0)


def test_reweighted_mean_and_errors():
    w = torch.tensor([0.25, 0.75])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(reweighted_mean(w, values), torch.tensor([2.5, 3.5]))
    with pytest.raises(ValueError, match="ratio"):
        needs_resampling(w, 1.5)
    with pytest.raises(ValueError, match="no snapshots"):
        boltzmann_weights(torch.zeros(0), torch.zeros(0), 1.0)
