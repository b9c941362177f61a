"""Scattering weights and the transforms between g(r), G(r), S(Q) and F(Q).

Conventions (stated once here, referred to elsewhere):

* g(r): radial distribution function, → 1 at large r (dimensionless).
* G(r) = 4πρ r (g(r) − 1), Å⁻²: the "reduced" pair distribution function of PDF analysis
  (PDFgetX3 / PDFgui G(r)); ρ = N/V is the total number density in atoms/Å³.
* S(Q): Faber–Ziman structure factor, → 1 at large Q; Q = 4π sinθ/λ in Å⁻¹.
* F(Q) = Q (S(Q) − 1), Å⁻¹: the reduced structure function.
* The pair G(r) ↔ F(Q) are a sine-transform pair::

      S(Q) − 1 = (1/Q) ∫₀^∞ G(r) sin(Qr) dr        = (4πρ/Q) ∫₀^∞ r (g(r) − 1) sin(Qr) dr
      G(r)     = (2/π) ∫₀^∞ Q (S(Q) − 1) sin(Qr) dQ = (2/π) ∫₀^∞ F(Q) sin(Qr) dQ

All transforms are batch-first (values are [..., n_r] or [..., n_q], grids are 1D [n_r] / [n_q]),
use trapezoid quadrature on the given grid written as one matrix product, and are
differentiable in the values and in ρ. Quadrature is accurate while the kernel is resolved:
Q_max · Δr ≲ 1 and r_max · ΔQ ≲ 1. Both integrals start at 0: when a grid starts above 0 the
point (0, 0) is prepended, since G(0) = 0 and F(0) = 0 (below the closest approach G = −4πρr
is linear, so this also covers the first half-bin of a histogram's bin-centre grid).

Faber–Ziman weights for a multi-species system (Faber & Ziman, Phil. Mag. 11, 153 (1965),
doi:10.1080/14786436508211931): with concentrations c_a and scattering powers w_a,

    S(Q) = Σ_ab c_a c_b w_a w_b S_ab(Q) / (Σ_a c_a w_a)²      (ordered pairs a, b)

and the same weights combine the partial g_ab(r). Neutrons: w_a = b_c, the bound coherent
scattering length of the natural element from periodictable, in **fm** (the unit cancels in the
ratio). X-rays: w_a = f_a(Q), the Waasmaier–Kirfel atomic form factor (Acta Cryst. A51, 416
(1995), doi:10.1107/S0108767394013292) from periodictable's ``elements[Z].xray.f0(Q)``, which
takes **Q = 4π sinθ/λ** in Å⁻¹ (not sinθ/λ as xraydb's ``f0`` does), valid for 0 ≤ Q ≤ 24π;
without Q the x-ray weights are the atomic numbers Z (f(0) ≈ Z, a Q-independent approximation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

Composition = Mapping[int, float] | Sequence[int] | torch.Tensor

WEIGHTINGS = ("neutron", "xray", "number")


# ----------------------------------------------------------------------------- weights


def neutron_scattering_lengths(numbers, *, dtype=torch.float64) -> torch.Tensor:
    """Bound coherent scattering lengths b_c of the natural elements, [len(numbers)], in fm.

    From ``periodictable.elements[Z].neutron.b_c`` (real part; Sears, Neutron News 3, 26 (1992)).
    Raises ValueError for an element with no tabulated b_c.
    """
    import periodictable

    lengths = []
    for z in _as_int_list(numbers):
        b_c = periodictable.elements[z].neutron.b_c
        if b_c is None:
            raise ValueError(f"periodictable has no coherent scattering length b_c for Z={z}")
        lengths.append(float(complex(b_c).real))
    return torch.tensor(lengths, dtype=dtype)


def xray_form_factors(numbers, q=None, *, dtype=torch.float64) -> torch.Tensor:
    """X-ray atomic form factors f_a(Q) in electrons.

    q: None → the atomic numbers Z, shape [len(numbers)] (the Q → 0 limit, Q-independent
    approximation); or Q values in Å⁻¹ (Q = 4π sinθ/λ), scalar or [n_q] → [len(numbers), n_q],
    from periodictable's ``elements[Z].xray.f0(Q)`` (Waasmaier–Kirfel, valid for 0 ≤ Q ≤ 24π;
    NaN outside, so this raises).
    """
    zs = _as_int_list(numbers)
    if q is None:
        return torch.tensor(zs, dtype=dtype)
    import numpy as np
    import periodictable

    q_np = torch.as_tensor(q).detach().cpu().double().reshape(-1).numpy()
    f = np.stack([np.atleast_1d(periodictable.elements[z].xray.f0(q_np)) for z in zs])
    if not np.all(np.isfinite(f)):
        raise ValueError("x-ray form factors are tabulated for 0 <= Q <= 24π Å⁻¹ only")
    return torch.as_tensor(f, dtype=dtype)


def concentrations(composition: Composition) -> dict[int, float]:
    """{Z: c_Z} with Σ c = 1 from {Z: count or fraction} or an array of atomic numbers."""
    if isinstance(composition, Mapping):
        amounts = {int(z): float(n) for z, n in composition.items()}
    else:
        zs = _as_int_list(composition)
        amounts = {z: float(zs.count(z)) for z in sorted(set(zs))}
    total = sum(amounts.values())
    if not amounts or total <= 0 or any(n < 0 for n in amounts.values()):
        raise ValueError(f"composition must have non-negative amounts with a positive sum, got {amounts}")
    return {z: amounts[z] / total for z in sorted(amounts)}


def faber_ziman_weights(
    composition: Composition, weighting="neutron", q=None
) -> dict[tuple[int, int], torch.Tensor]:
    """Faber–Ziman weights W_ab of the unordered species pairs (Z_a ≤ Z_b), float64 tensors.

    W_ab = (2 − δ_ab) c_a c_b w_a w_b / (Σ_c c_c w_c)², so that a total is Σ_{a≤b} W_ab X_ab
    for X = g, S or G partials, and Σ W_ab = 1 (an ideal gas stays 1).

    weighting: "neutron" (w = b_c in fm), "xray" (w = Z, or f(Q) when q is given), "number"
    (w = 1: the concentration-weighted total) or a mapping {Z: w} of your own.
    q: None → scalar weights; Q in Å⁻¹, scalar or [n_q] → weights of shape [n_q] (only x-ray
    weights depend on Q; the others are repeated).
    """
    c = concentrations(composition)
    zs = list(c)
    conc = torch.tensor([c[z] for z in zs], dtype=torch.float64)
    if isinstance(weighting, Mapping):
        missing = [z for z in zs if z not in weighting]
        if missing:
            raise ValueError(f"custom weighting has no weight for Z={missing}")
        w = torch.tensor([float(weighting[z]) for z in zs], dtype=torch.float64)
    elif weighting == "neutron":
        w = neutron_scattering_lengths(zs)
    elif weighting == "xray":
        w = xray_form_factors(zs, q)
    elif weighting == "number":
        w = torch.ones(len(zs), dtype=torch.float64)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or a mapping {{Z: w}}, got {weighting!r}")
    if q is not None:
        n_q = torch.as_tensor(q).reshape(-1).shape[0]
        w = w.reshape(len(zs), -1).expand(len(zs), n_q)  # [K, n_q]
    mean_w = torch.einsum("a,a...->...", conc, w)
    if bool((mean_w.abs() < 1e-12 * w.abs().amax().clamp_min(1e-300)).any()):
        raise ValueError(f"the mean scattering power Σ c_a w_a vanishes for {c}: no total is defined")
    weights = {}
    for ia, za in enumerate(zs):
        for ib in range(ia, len(zs)):
            multiplicity = 1.0 if ia == ib else 2.0
            weights[(za, zs[ib])] = multiplicity * conc[ia] * conc[ib] * w[ia] * w[ib] / mean_w**2
    return weights


def total_structure_factor(
    r, partials, composition: Composition, rho, q, *, weighting="xray", lorch=False
) -> torch.Tensor:
    """Faber–Ziman total S(Q) = Σ_{a≤b} W_ab(Q) S_ab(Q) from partial g_ab(r), [B, n_q].

    The Q-dependent route: each S_ab = 1 + (4πρ/Q) ∫ r (g_ab − 1) sin(Qr) dr (:func:`g_to_S`,
    ρ the *total* number density), then weights W_ab(Q) of :func:`faber_ziman_weights` with
    form factors f(Q) for x-rays. partials: {(Z_a, Z_b): g_ab [B, n_r]} as from ``partial_rdfs``;
    r: [n_r] Å; rho: atoms/Å³, scalar or [B]; q: [n_q] Å⁻¹.
    """
    q = torch.as_tensor(q)
    weights = faber_ziman_weights(composition, weighting, q=q)
    total = None
    for pair, weight in weights.items():
        if pair not in partials:
            raise KeyError(f"no partial for species pair {pair}; have {sorted(partials)}")
        g_ab = partials[pair]
        term = weight.to(g_ab) * g_to_S(r, g_ab, rho, q.to(g_ab), lorch=lorch)
        total = term if total is None else total + term
    return total


# ----------------------------------------------------------------------------- transforms


def number_density(numbers_count, cell: torch.Tensor) -> torch.Tensor:
    """ρ = N / |det(cell)| in atoms/Å³, shape cell.shape[:-2] (e.g. [B] for cell [B, 3, 3]).

    numbers_count: the atom count N (int) or the atomic numbers [N].
    """
    n_atoms = numbers_count if isinstance(numbers_count, int) else len(numbers_count)
    if cell.shape[-2:] != (3, 3):
        raise ValueError(f"cell: expected shape [..., 3, 3], got {tuple(cell.shape)}")
    return n_atoms / torch.linalg.det(cell).abs()


def g_to_G(r, g, rho) -> torch.Tensor:
    """G(r) = 4πρ r (g(r) − 1); r [n_r] Å, g [..., n_r], rho atoms/Å³ (scalar or [...])."""
    r, g = _check_grid(r, g, "r", "g")
    return 4.0 * math.pi * _per_batch(rho, g) * r * (g - 1.0)


def G_to_g(r, G, rho) -> torch.Tensor:
    """g(r) = 1 + G(r) / (4πρ r); needs r > 0 (NaN at r = 0)."""
    r, G = _check_grid(r, G, "r", "G")
    return 1.0 + G / (4.0 * math.pi * _per_batch(rho, G) * r)


def S_to_F(q, S) -> torch.Tensor:
    """F(Q) = Q (S(Q) − 1); q [n_q] Å⁻¹, S [..., n_q]."""
    q, S = _check_grid(q, S, "q", "S")
    return q * (S - 1.0)


def F_to_S(q, F) -> torch.Tensor:
    """S(Q) = 1 + F(Q) / Q; needs Q > 0 (NaN at Q = 0)."""
    q, F = _check_grid(q, F, "q", "F")
    return 1.0 + F / q


def G_to_S(r, G, q, *, lorch=False) -> torch.Tensor:
    """S(Q) = 1 + (1/Q) ∫₀^{R} G(r) M(r) sin(Qr) dr, [..., n_q]; R = r[-1].

    The kernel is written r·sinc(Qr/π), so Q = 0 is allowed (S(0) = 1 + ∫ r G dr).
    lorch=True applies the real-space window M(r) = sin(πr/R)/(πr/R), which takes G smoothly to
    zero at the truncation radius R and so damps the termination ripples (period ≈ 2π/R) that a
    sharp cut-off puts into S(Q), at the cost of broadening its features by ≈ 1/R; M ≡ 1
    otherwise.
    """
    r, G = _check_grid(r, G, "r", "G")
    q = torch.as_tensor(q, dtype=G.dtype, device=G.device).reshape(-1)
    r, G = _from_zero(r, G)
    weights = _trapezoid_weights(r)
    if lorch:
        weights = weights * torch.sinc(r / r[-1])
    kernel = r * torch.sinc(torch.outer(q, r) / math.pi)  # sin(Qr)/Q, [n_q, n_r]
    return 1.0 + (G * weights) @ kernel.T


def g_to_S(r, g, rho, q, *, lorch=False) -> torch.Tensor:
    """S(Q) = 1 + (4πρ/Q) ∫₀^{R} r (g(r) − 1) M(r) sin(Qr) dr (see :func:`G_to_S` for M)."""
    return G_to_S(r, g_to_G(r, g, rho), q, lorch=lorch)


def S_to_G(q, S, r, *, q_min=None, q_max=None, lorch=False) -> torch.Tensor:
    """G(r) = (2/π) ∫_{Q_min}^{Q_max} Q (S(Q) − 1) M(Q) sin(Qr) dQ, [..., n_r].

    Only grid points with q_min ≤ Q ≤ q_max are used (defaults: from 0 — the point (0, 0) is
    prepended if the grid starts above 0 — to q[-1]). lorch=True applies the Lorch window
    M(Q) = sin(πQ/Q_max)/(πQ/Q_max) (Lorch, J. Phys. C 2, 229 (1969),
    doi:10.1088/0022-3719/2/2/305), which damps the truncation ripples at the price of
    broader peaks; M ≡ 1 otherwise.
    """
    q, S = _check_grid(q, S, "q", "S")
    r = torch.as_tensor(r, dtype=S.dtype, device=S.device).reshape(-1)
    F = q * (S - 1.0)
    if q_min is not None or q_max is not None:
        lo = -math.inf if q_min is None else float(q_min)
        hi = math.inf if q_max is None else float(q_max)
        keep = (q >= lo) & (q <= hi)
        if int(keep.sum()) < 2:
            raise ValueError(f"fewer than two grid points of q lie in [{q_min}, {q_max}]")
        q, F = q[keep], F[..., keep]
    if q_min is None:
        q, F = _from_zero(q, F)
    weights = _trapezoid_weights(q)
    if lorch:
        weights = weights * torch.sinc(q / (q[-1] if q_max is None else float(q_max)))
    return (2.0 / math.pi) * (F * weights) @ torch.sin(torch.outer(q, r))


def instrument_G(r, g, rho, q_min, q_max, *, lorch=False, q_step=None) -> torch.Tensor:
    """G(r) as an instrument measuring q_min ≤ Q ≤ q_max reports it, [..., n_r] on the grid r.

    g → S(Q) on the uniform grid q_min..q_max (spacing ≤ q_step, default π/(10 R), R = r[-1],
    i.e. ten points per half-period of sin(QR)) by :func:`g_to_S`, then S → G by
    :func:`S_to_G` over that range, with the Lorch window if lorch=True.
    """
    r, g = _check_grid(r, g, "r", "g")
    if not 0 <= q_min < q_max:
        raise ValueError(f"need 0 <= q_min < q_max, got q_min={q_min}, q_max={q_max}")
    step = math.pi / (10.0 * float(r[-1])) if q_step is None else float(q_step)
    n_q = max(2, math.ceil((q_max - q_min) / step) + 1)
    q = torch.linspace(q_min, q_max, n_q, dtype=g.dtype, device=g.device)
    S = g_to_S(r, g, rho, q)
    return S_to_G(q, S, r, q_min=q_min, q_max=q_max, lorch=lorch)


# ----------------------------------------------------------------------------- helpers


def _as_int_list(numbers) -> list[int]:
    if isinstance(numbers, torch.Tensor):
        return [int(z) for z in numbers.reshape(-1).tolist()]
    if isinstance(numbers, int):
        return [numbers]
    return [int(z) for z in numbers]


def _check_grid(x, values, x_name, v_name):
    values = torch.as_tensor(values)
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    x = torch.as_tensor(x, dtype=values.dtype, device=values.device)
    if x.ndim != 1 or values.ndim < 1 or values.shape[-1] != x.shape[0] or x.shape[0] < 2:
        raise ValueError(
            f"{x_name}: expected a 1D grid [n] with n >= 2 matching {v_name} [..., n]; "
            f"got {x_name} {tuple(x.shape)} and {v_name} {tuple(values.shape)}"
        )
    return x, values


def _per_batch(rho, like: torch.Tensor) -> torch.Tensor:
    """ρ as a tensor that broadcasts against [..., n] values: scalar → [], [B] → [B, 1]."""
    rho = torch.as_tensor(rho, dtype=like.dtype, device=like.device)
    return rho if rho.ndim == 0 else rho[..., None]


def _from_zero(x, values):
    """Prepend the point (0, 0) when the grid x starts above 0 (G(0) = F(0) = 0)."""
    if bool(x[0] > 0):
        x = torch.cat([x.new_zeros(1), x])
        values = torch.cat([values.new_zeros(*values.shape[:-1], 1), values], dim=-1)
    return x, values


def _trapezoid_weights(x: torch.Tensor) -> torch.Tensor:
    """Weights w with Σ w_k f(x_k) the trapezoid rule on the (possibly non-uniform) grid x."""
    dx = x[1:] - x[:-1]
    weights = torch.zeros_like(x)
    weights[:-1] += 0.5 * dx
    weights[1:] += 0.5 * dx
    return weights
