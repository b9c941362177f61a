"""Multistate (MBAR) reweighting: free energies against the analytic ones and pymbar's
expectations, the pooled ⟨x²⟩ of harmonic oscillators at a fourth spring constant, and the
single-trajectory limit."""

import math

import numpy as np
import pytest
import torch
from ase import units

from difftre_torch.multistate import (
    _pymbar,
    free_energies,
    log_mixture,
    mixture_reference,
    reduced_matrix,
    reweighted_standard_error,
    weight_shares,
)
from difftre_torch.reweighting import boltzmann_weights, effective_sample_size

KT = float(units.kB * 300.0)
SPRINGS = [1.0, 2.0, 4.0]  # eV/Å², the three sampled states
PROBE = 2.8               # eV/Å², the fourth, never sampled


def oscillator_samples(n_per_state: int = 400, seed: int = 0):
    """Exact Boltzmann samples of a 3D oscillator U = ½ k |x|² (independent, no MD)."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(0.0, math.sqrt(KT / k), size=(n_per_state, 3)) for k in SPRINGS]
    x = torch.tensor(np.concatenate(xs))
    r2 = (x * x).sum(-1)                                     # [N] Å²
    energies = torch.stack([0.5 * k * r2 for k in SPRINGS])  # [K, N] eV
    return r2, energies, [n_per_state] * len(SPRINGS)


def test_free_energies_match_the_analytic_partition_functions():
    # f_k = −ln Z_k, Z_k ∝ (2π kT/k)^{3/2}: f_k − f_0 = 1.5 ln(k_k / k_0)
    _, energies, counts = oscillator_samples(2000)
    f = free_energies(energies / KT, counts)
    exact = 1.5 * np.log(np.asarray(SPRINGS) / SPRINGS[0])
    assert f[0] == 0.0
    np.testing.assert_allclose(f, exact, atol=0.05)


def test_free_energies_are_invariant_to_a_per_snapshot_shift():
    _, energies, counts = oscillator_samples()
    shift = torch.linspace(-50.0, 50.0, energies.shape[1])
    f = free_energies(energies / KT, counts)
    np.testing.assert_allclose(free_energies((energies + shift) / KT, counts), f, atol=1e-9)
    np.testing.assert_allclose(free_energies(reduced_matrix(energies, KT), counts), f, atol=1e-9)


def test_pooled_estimate_at_a_fourth_spring_constant():
    r2, energies, counts = oscillator_samples()
    f = torch.tensor(free_energies(energies / KT, counts))
    reference = mixture_reference(energies, torch.tensor(counts, dtype=torch.float64), f, KT)
    w = boltzmann_weights(0.5 * PROBE * r2, reference, KT)
    observable = r2 / 3.0                     # per Cartesian component: ⟨x²⟩ = kT/k
    estimate = float(torch.dot(w, observable))
    error = float(reweighted_standard_error(w, observable))
    exact = KT / PROBE
    assert abs(estimate - exact) < 3.0 * error, (estimate, exact, error)
    assert error < 0.05 * exact
    # pymbar's own estimate of the same expectation, an independent implementation of the weights
    pymbar = _pymbar()
    mbar = pymbar.MBAR((energies / KT).numpy(), np.asarray(counts), relative_tolerance=1e-12)
    theirs = mbar.compute_expectations(observable.numpy(), u_kn=(0.5 * PROBE * r2 / KT).numpy()[None],
                                       compute_uncertainty=True)
    assert estimate == pytest.approx(float(theirs["mu"][0]), rel=1e-9)
    assert error == pytest.approx(float(theirs["sigma"][0]), rel=0.3)
    # the pool covers the probe better than any one trajectory reweighted alone
    pooled = float(effective_sample_size(w))
    for k, spring in enumerate(SPRINGS):
        sl = slice(sum(counts[:k]), sum(counts[:k + 1]))
        single = float(effective_sample_size(boltzmann_weights(0.5 * PROBE * r2[sl], energies[k, sl], KT)))
        assert pooled > single, (spring, pooled, single)


def test_one_trajectory_is_plain_difftre():
    _, energies, _ = oscillator_samples()
    one = energies[:1, :400]
    assert free_energies(one / KT, [400]).tolist() == [0.0]
    reference = mixture_reference(one, torch.tensor([400.0], dtype=torch.float64), torch.zeros(1), KT)
    # Ũ = U_θ1 + const: the same softmax weights
    new = 0.5 * PROBE * energies[0, :400] / SPRINGS[0]
    torch.testing.assert_close(boltzmann_weights(new, reference, KT), boltzmann_weights(new, one[0], KT),
                               rtol=1e-12, atol=1e-15)


def test_mixture_is_a_log_sum_exp_of_large_energies():
    # energies of −1e5 eV with spreads of a few eV stay finite
    _, energies, counts = oscillator_samples()
    shifted = energies - 1e5
    f = torch.tensor(free_energies(reduced_matrix(shifted, KT), counts))
    log_d = log_mixture(reduced_matrix(shifted, KT), torch.tensor(counts, dtype=torch.float64), f)
    assert torch.isfinite(log_d).all()
    ref = mixture_reference(shifted, torch.tensor(counts, dtype=torch.float64), f, KT)
    ref0 = mixture_reference(energies, torch.tensor(counts, dtype=torch.float64), f, KT)
    torch.testing.assert_close(ref - ref0, torch.full_like(ref, -1e5), rtol=0, atol=1e-8)


def test_weight_shares_add_up():
    w = torch.softmax(torch.randn(10, dtype=torch.float64), 0)
    segments = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    shares = weight_shares(w, segments, 3)
    assert float(shares.sum()) == pytest.approx(1.0)
    assert float(shares[1]) == pytest.approx(float(w[2:5].sum()))


def test_free_energies_reject_bad_input():
    with pytest.raises(ValueError, match="do not match counts"):
        free_energies(np.zeros((2, 5)), [2, 2])
    with pytest.raises(ValueError, match="not all finite"):
        free_energies(np.array([[0.0, np.inf], [0.0, 0.0]]), [1, 1])
