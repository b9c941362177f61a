"""g ↔ G ↔ S ↔ F transforms, the Lorch window, Faber–Ziman weights and form factors.

The model: h(r) = g(r) − 1 = Σ_k A_k [exp(−(r − c_k)²/2w_k²) + exp(−(r + c_k)²/2w_k²)], whose
r·h(r) extends to an odd smooth function, so its sine transform is analytic:

    S(Q) − 1 = (4πρ/Q) Σ_k A_k √(2π) w_k e^{−Q²w_k²/2} (c_k sin Qc_k + Q w_k² cos Qc_k).

For such integrands (even in r, decaying) the trapezoid rule is spectrally accurate (Euler–
Maclaurin: all odd derivatives vanish at 0 and at the far end), so the quadrature error is set by
(i) the first half-bin [0, r_0] of the bin-centre grid, where the prepended point (0, 0) breaks
the symmetry: error ≈ r_0³ |G'(0)| / 6 ≈ 1e-8 in S − 1 for r_0 = 0.005 Å, G'(0) = −4πρ; and
(ii) truncation at R = 15 Å and Q_max = 40 Å⁻¹, where the model is below e^{−30}.
"""

import math

import numpy as np
import periodictable
import pytest
import torch
from periodictable import cromermann
from scipy.integrate import trapezoid

from difftre_torch.observables import (
    F_to_S,
    G_to_g,
    G_to_S,
    S_to_F,
    S_to_G,
    faber_ziman_weights,
    g_to_G,
    g_to_S,
    instrument_G,
    neutron_scattering_lengths,
    number_density,
    total_structure_factor,
    xray_form_factors,
)

DT = torch.float64
RHO = 0.05  # atoms/Å³
PEAKS = [(-0.5, 0.0, 0.9), (0.6, 2.6, 0.22), (-0.25, 3.6, 0.35), (0.12, 5.0, 0.5)]  # (A, c Å, w Å)
R = torch.arange(0.005, 15.0, 0.01, dtype=DT)  # bin centres of 0.01 Å bins
Q = torch.arange(0.02, 40.0, 0.02, dtype=DT)


def model_g(r):
    return 1.0 + sum(
        a * (torch.exp(-((r - c) ** 2) / (2 * w * w)) + torch.exp(-((r + c) ** 2) / (2 * w * w)))
        for a, c, w in PEAKS
    )


def model_S(q):
    series = sum(
        a * math.sqrt(2 * math.pi) * w * torch.exp(-((q * w) ** 2) / 2)
        * (c * torch.sin(q * c) + q * w * w * torch.cos(q * c))
        for a, c, w in PEAKS
    )
    return 1.0 + 4 * math.pi * RHO / q * series


def test_g_to_S_matches_analytic_transform():
    g = model_g(R)
    S = g_to_S(R, torch.stack([g, g]), torch.tensor([RHO, RHO]), Q)  # batch of two, ρ per snapshot
    assert S.shape == (2, Q.shape[0])
    torch.testing.assert_close(S[1], model_S(Q), rtol=0, atol=1e-7)  # bound (i) above, ×10
    torch.testing.assert_close(G_to_S(R, g_to_G(R, g, RHO), Q), S[0])


def test_S_to_G_matches_analytic_inverse():
    G = S_to_G(Q, model_S(Q), R)
    torch.testing.assert_close(G, g_to_G(R, model_g(R), RHO), rtol=0, atol=1e-10)


def test_round_trip_g_G_S_G():
    G_true = g_to_G(R, model_g(R), RHO)
    S = G_to_S(R, G_true, Q)
    G_back = S_to_G(Q, S, R)
    # the 1e-8 error in S − 1 (first half-bin) integrates to (2/π) ∫₀^40 Q·1e-8 dQ ≈ 1e-5 in G
    interior = R < 12.0
    torch.testing.assert_close(G_back[interior], G_true[interior], rtol=0, atol=5e-5)
    torch.testing.assert_close(G_to_g(R, G_back, RHO)[R > 1.0], model_g(R)[R > 1.0], rtol=0, atol=5e-5)


def test_F_and_S_are_exact_inverses():
    S = torch.rand(3, Q.shape[0], dtype=DT, generator=torch.Generator().manual_seed(0))
    F = S_to_F(Q, S)
    torch.testing.assert_close(F, Q * (S - 1))
    torch.testing.assert_close(F_to_S(Q, F), S, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(S_to_F(Q, F_to_S(Q, F)), F, rtol=1e-15, atol=1e-15)
    g = model_g(R)
    torch.testing.assert_close(G_to_g(R, g_to_G(R, g, RHO), RHO), g)


def test_instrument_G_matches_numpy_and_lorch_damps_ripples():
    g = model_g(R)
    q_min, q_max = 0.5, 12.0
    q_step = math.pi / (10 * float(R[-1]))  # instrument_G's default
    q = np.linspace(q_min, q_max, math.ceil((q_max - q_min) / q_step) + 1)
    r = np.concatenate([[0.0], R.numpy()])
    G_r = 4 * np.pi * RHO * r * (np.concatenate([[1.0], g.numpy()]) - 1)  # G(0) = 0
    S = 1 + trapezoid(G_r * np.sin(np.outer(q, r)), r, axis=1) / q
    errors = {}
    for lorch in (False, True):
        window = np.sinc(q / q_max) if lorch else 1.0  # np.sinc(x) = sin(πx)/(πx)
        integrand = (q * (S - 1) * window)[:, None] * np.sin(np.outer(q, R.numpy()))
        expected = 2 / np.pi * trapezoid(integrand, q, axis=0)
        G = instrument_G(R, g, RHO, q_min, q_max, lorch=lorch)
        np.testing.assert_allclose(G.numpy(), expected, rtol=0, atol=1e-10)
        hole = (R > 0.2) & (R < 1.0)  # below the first peak, where only termination ripples live
        errors[lorch] = float((G - g_to_G(R, g, RHO))[hole].abs().max())
    assert errors[True] < 0.6 * errors[False]


def test_real_space_lorch_window():
    r = R[R < 4.0]  # truncated inside the structure: a sharp cut would ripple S(Q)
    g = model_g(r)
    G = 4 * np.pi * RHO * r.numpy() * (g.numpy() - 1)
    r0, G0 = np.concatenate([[0.0], r.numpy()]), np.concatenate([[0.0], G])
    integrand = G0 * np.sinc(r0 / r0[-1]) * np.sin(np.outer(Q.numpy(), r0))
    expected = 1 + trapezoid(integrand, r0, axis=1) / Q.numpy()
    np.testing.assert_allclose(g_to_S(r, g, RHO, Q, lorch=True).numpy(), expected, rtol=0, atol=1e-10)


def test_Q_zero_is_finite():
    S0 = g_to_S(R, model_g(R), RHO, torch.tensor([0.0, 1e-6], dtype=DT))
    assert torch.isfinite(S0).all()
    torch.testing.assert_close(S0[0], S0[1], rtol=0, atol=1e-9)


def test_transforms_are_differentiable():
    g = model_g(R).requires_grad_(True)
    rho = torch.tensor(RHO, dtype=DT, requires_grad=True)
    G = instrument_G(R, g, rho, 0.5, 20.0, lorch=True)
    (G**2).sum().backward()
    assert torch.isfinite(g.grad).all() and g.grad.abs().max() > 0 and torch.isfinite(rho.grad)


def test_xray_form_factors_take_Q_not_sin_theta_over_lambda():
    q = torch.tensor([0.0, 2.0, 4 * math.pi * 0.5, 30.0], dtype=DT)
    f = xray_form_factors([8, 14], q)
    assert f.shape == (2, 4)
    for row, symbol in zip(f, ("O", "Si")):
        np.testing.assert_allclose(row.numpy(), cromermann.fxrayatstol(symbol, q.numpy() / (4 * math.pi)))
    np.testing.assert_allclose(f[:, 0].numpy(), [8, 14], rtol=2e-3)  # f(0) ≈ Z
    assert torch.equal(xray_form_factors([8, 14]), torch.tensor([8.0, 14.0], dtype=DT))
    assert torch.all(f[:, 1:] < f[:, :-1])


def test_faber_ziman_weights():
    b = neutron_scattering_lengths([8, 14])  # fm
    np.testing.assert_allclose(b.numpy(), [periodictable.O.neutron.b_c, periodictable.Si.neutron.b_c])
    w = faber_ziman_weights({8: 2, 14: 1}, "neutron")
    mean_b = (2 * b[0] + b[1]) / 3
    torch.testing.assert_close(w[(8, 14)], 2 * (2 / 3) * (1 / 3) * b[0] * b[1] / mean_b**2)
    q = torch.linspace(0.1, 20, 7, dtype=DT)
    wq = faber_ziman_weights([8, 8, 14], "xray", q=q)
    assert wq[(8, 8)].shape == (7,)
    torch.testing.assert_close(sum(wq.values()), torch.ones(7, dtype=DT))


def test_total_structure_factor_uses_Q_dependent_weights():
    g = model_g(R)[None]
    partials = {(8, 8): g, (8, 14): 0.9 * g + 0.1, (14, 14): 1.1 * g - 0.1}
    q = torch.linspace(0.5, 20.0, 40, dtype=DT)
    S = total_structure_factor(R, partials, {8: 2, 14: 1}, RHO, q, weighting="xray")
    f = xray_form_factors([8, 14], q)
    c = torch.tensor([2 / 3, 1 / 3], dtype=DT)
    mean_f = c @ f
    expected = sum(
        c[a] * c[b] * f[a] * f[b] * g_to_S(R, partials[tuple(sorted((z_a, z_b)))], RHO, q)
        for a, z_a in enumerate((8, 14))
        for b, z_b in enumerate((8, 14))
    ) / mean_f**2
    torch.testing.assert_close(S, expected)


def test_number_density():
    cubic = [[5.64, 0, 0], [0, 5.64, 0], [0, 0, 5.64]]
    cell = torch.tensor([cubic, [[4.0, 0, 0], [2.0, 3.0, 0], [0, 0, 5.0]]], dtype=DT)
    torch.testing.assert_close(number_density(8, cell), torch.tensor([8 / 5.64**3, 8 / 60.0], dtype=DT))
    torch.testing.assert_close(number_density(torch.arange(8), cell[0]), torch.tensor(8 / 5.64**3, dtype=DT))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="grid"):
        g_to_G(R[:-1], model_g(R), RHO)
    with pytest.raises(ValueError, match="grid"):
        S_to_G(Q[:, None], model_S(Q), R)
    with pytest.raises(ValueError, match="cell"):
        number_density(8, torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match="q_min"):
        instrument_G(R, model_g(R), RHO, 5.0, 1.0)
    with pytest.raises(ValueError, match="two grid points"):
        S_to_G(Q, model_S(Q), R, q_min=1.001, q_max=1.01)
    with pytest.raises(ValueError, match="24π"):
        xray_form_factors([8], torch.tensor([100.0]))
    with pytest.raises(ValueError, match="vanishes"):
        faber_ziman_weights({1: 1, 2: 0}, {1: 0.0, 2: 1.0})
    with pytest.raises(ValueError, match="weighting"):
        faber_ziman_weights({1: 1}, "electron")
