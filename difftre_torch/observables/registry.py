"""Observables a :class:`~difftre_torch.experiment.target.Target` can name, and how to compute them.

Two kinds:

* θ-independent (depend on the snapshot only): ``fn(positions [b,N,3], cells [b,3,3],
  numbers [N], target) -> [b, n]``. Computed once when a snapshot store is filled and
  reweighted: ⟨O⟩ = Σ w_i O(S_i).
* θ-dependent (depend on the potential too): ``fn(evaluation, n_atoms, temperature_K, target)
  -> [b, n]`` from one energy + stress evaluation (:class:`~difftre_torch.potentials.base.Evaluation`)
  shared by all of them. Recomputed in every update; the gradient gets ⟨∂O/∂θ⟩ as well.

Functions of r or Q are computed on an internal uniform grid and interpolated linearly onto
the target's grid (linear, so it commutes with reweighting). Options common to the
scattering observables (``target.options``):

* ``weighting``: "neutron" (default), "xray", "xray_q" (S/F: Q-dependent form factors; Z in
  r space) or "number" (Faber–Ziman total); or
  ``pair: [Z_a, Z_b]`` for one partial (diagnostics: experiments do not measure partials).
* ``bin_width_A`` (default: the target's grid step for g and G, 0.02 Å for S and F),
  ``r_max_A`` (internal grid end),
  ``smoothing_A`` (Gaussian smoothing of the histogram).
* G(r): ``q_min``, ``q_max``, ``lorch`` — the instrument's Q range and Lorch window; without
  ``q_max`` G is the ideal 4πρr(g − 1).
* S(Q), F(Q): ``lorch_r`` (real-space window in g → S).

Units: r Å, Q Å⁻¹, G Å⁻², F Å⁻¹, pressure and stress GPa, lengths Å, density g/cm³.

To add an observable: write its function here (or in a module of its own) and decorate it with
:func:`register`; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from ase import units

from difftre_torch.experiment.target import Target
from difftre_torch.observables.rdf import partial_rdfs, total_rdf
from difftre_torch.observables.scattering import (
    S_to_F,
    g_to_G,
    g_to_S,
    instrument_G,
    number_density,
    total_structure_factor,
)
from difftre_torch.observables.thermo import (
    interlayer_spacing,
    lattice_lengths,
    mass_density,
    pressure_from_stress,
    total_stress,
)


@dataclass(frozen=True)
class ObservableSpec:
    name: str
    depends_on_theta: bool
    fn: Callable


OBSERVABLES: dict[str, ObservableSpec] = {}
DEFAULT_BIN_WIDTH_A = 0.02  # r bins of the internal g(r) for Q-space targets (S, F)


def register(name: str, depends_on_theta: bool = False):
    """Decorator adding ``fn`` to :data:`OBSERVABLES` under ``name``."""
    def wrap(fn: Callable) -> Callable:
        OBSERVABLES[name] = ObservableSpec(name, depends_on_theta, fn)
        return fn
    return wrap


def spec(target: Target) -> ObservableSpec:
    """The registry entry a target names; a clear error if unknown."""
    try:
        return OBSERVABLES[target.observable]
    except KeyError:
        raise ValueError(
            f"Target {target.name!r}: unknown observable {target.observable!r}; "
            f"expected one of {sorted(OBSERVABLES)}"
        ) from None


# ----------------------------------------------------------------------------- helpers


def _interp(x_new: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of y [b, n] given on uniform x [n] at x_new [m] → [b, m]."""
    x_new = x_new.to(y)
    step = x[1] - x[0]
    pos = ((x_new - x[0]) / step).clamp(0, x.shape[0] - 1)
    lo = pos.floor().long().clamp(max=x.shape[0] - 2)
    frac = pos - lo
    return y[:, lo] * (1 - frac) + y[:, lo + 1] * frac


def _require_grid(target: Target) -> torch.Tensor:
    if target.x is None or target.x.shape[0] < 2:
        raise ValueError(f"Target {target.name!r}: observable {target.observable!r} needs a grid x")
    return target.x


def _g_on_grid(positions, cells, numbers, target: Target, r_max_A: float):
    """(r [n_r], g [b, n_r]) on the internal uniform grid up to ``r_max_A``."""
    x = target.x
    real_space_grid = x is not None and target.observable in ("rdf", "G")
    step = float(target.options.get("bin_width_A", float(x[1] - x[0]) if real_space_grid else DEFAULT_BIN_WIDTH_A))
    n_bins = max(2, int(round(r_max_A / step)))
    r, partials = partial_rdfs(positions, cells, numbers, n_bins * step, n_bins,
                               smoothing_A=target.options.get("smoothing_A"))
    pair = target.options.get("pair")
    if pair is not None:
        key = tuple(sorted(int(z) for z in pair))
        if key not in partials:
            raise ValueError(f"Target {target.name!r}: no species pair {key}; have {sorted(partials)}")
        return r, partials[key], partials
    weighting = target.options.get("weighting", "neutron")
    # "xray_q" (Q-dependent form factors) only exists in Q space; in r space it is Z weighting
    g = total_rdf(partials, numbers, "xray" if weighting == "xray_q" else weighting)
    return r, g, partials


# ----------------------------------------------------------------------------- θ-independent


@register("rdf")
def rdf(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Total (Faber–Ziman) or partial g(r) on the target's r grid, [b, n]."""
    x = _require_grid(target)
    r, g, _ = _g_on_grid(positions, cells, numbers, target,
                         float(target.options.get("r_max_A", float(x[-1]) + float(x[1] - x[0]))))
    return _interp(x, r, g)


@register("G")
def reduced_pdf(positions, cells, numbers, target: Target) -> torch.Tensor:
    """G(r) = 4πρr(g − 1) (Å⁻²) on the target's grid; through the instrument's Q range if
    ``q_max`` is given (``q_min`` default 0, ``lorch`` default False)."""
    x = _require_grid(target)
    opts = target.options
    default_r_max = float(x[-1]) + (5.0 if "q_max" in opts else float(x[1] - x[0]))
    r, g, _ = _g_on_grid(positions, cells, numbers, target, float(opts.get("r_max_A", default_r_max)))
    rho = number_density(len(numbers), cells)
    if "q_max" in opts:
        G = instrument_G(r, g, rho, float(opts.get("q_min", 0.0)), float(opts["q_max"]),
                         lorch=bool(opts.get("lorch", False)))
    else:
        G = g_to_G(r, g, rho)
    return _interp(x, r, G)


def _structure_factor(positions, cells, numbers, target: Target) -> torch.Tensor:
    q = _require_grid(target)
    opts = target.options
    r_max = float(opts.get("r_max_A", 10.0))
    r, g, partials = _g_on_grid(positions, cells, numbers, target, r_max)
    rho = number_density(len(numbers), cells)
    lorch = bool(opts.get("lorch_r", False))
    if opts.get("weighting") == "xray_q" and "pair" not in opts:
        return total_structure_factor(r, partials, numbers, rho, q.to(g), weighting="xray", lorch=lorch)
    return g_to_S(r, g, rho, q.to(g), lorch=lorch)


@register("S")
def structure_factor(positions, cells, numbers, target: Target) -> torch.Tensor:
    """S(Q) on the target's Q grid from g(r) up to ``r_max_A`` (default 10 Å); weighting
    ``"xray_q"`` uses Q-dependent form factors."""
    return _structure_factor(positions, cells, numbers, target)


@register("F")
def reduced_structure_factor(positions, cells, numbers, target: Target) -> torch.Tensor:
    """F(Q) = Q(S(Q) − 1) (Å⁻¹) on the target's Q grid."""
    return S_to_F(target.x.to(positions), _structure_factor(positions, cells, numbers, target))


@register("lattice_length")
def lattice_length(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Lattice lengths (Å): ``axes`` (default "abc") of the cell divided by ``repeats``
    (default [1, 1, 1]), so a supercell reports its unit cell's lengths. [b, len(axes)]."""
    axes = target.options.get("axes", "abc")
    repeats = torch.as_tensor(target.options.get("repeats", [1, 1, 1]), dtype=cells.dtype)
    lengths = lattice_lengths(cells) / repeats.to(cells.device)
    return lengths[:, ["abc".index(a) for a in axes]]


@register("interlayer_spacing")
def spacing(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Mean interlayer spacing (Å) of layers stacked along c; option ``layers_per_cell``."""
    if "layers_per_cell" not in target.options:
        raise ValueError(f"Target {target.name!r}: interlayer_spacing needs options.layers_per_cell")
    return interlayer_spacing(cells, int(target.options["layers_per_cell"]))[:, None]


@register("density")
def density(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Mass density (g/cm³), [b, 1]."""
    from ase.data import atomic_masses

    masses = torch.as_tensor(atomic_masses[numbers.cpu().numpy()], dtype=cells.dtype, device=cells.device)
    return mass_density(cells, masses)[:, None]


# ----------------------------------------------------------------------------- θ-dependent


@register("pressure", depends_on_theta=True)
def pressure_GPa(evaluation, n_atoms: int, temperature_K: float, target: Target) -> torch.Tensor:
    """Virial pressure with the canonical kinetic term (GPa), [b, 1]."""
    sigma = total_stress(evaluation.stress, evaluation.volume, n_atoms, temperature_K)
    return (pressure_from_stress(sigma) / units.GPa)[:, None]


@register("stress", depends_on_theta=True)
def stress_GPa(evaluation, n_atoms: int, temperature_K: float, target: Target) -> torch.Tensor:
    """Total stress (GPa, ASE sign) in Voigt order xx, yy, zz, yz, xz, xy, [b, 6]."""
    s = total_stress(evaluation.stress, evaluation.volume, n_atoms, temperature_K) / units.GPa
    return torch.stack([s[:, 0, 0], s[:, 1, 1], s[:, 2, 2], s[:, 1, 2], s[:, 0, 2], s[:, 0, 1]], dim=-1)


# ----------------------------------------------------------------------------- evaluation


def static_observables(positions: torch.Tensor, cells: torch.Tensor, numbers: torch.Tensor,
                       targets: list[Target], chunk_size: int = 32) -> dict[str, torch.Tensor]:
    """Per-snapshot values of every θ-independent target, name → [S, n], in chunks."""
    out: dict[str, list[torch.Tensor]] = {}
    for target in targets:
        entry = spec(target)
        if entry.depends_on_theta:
            continue
        parts = []
        for k in range(0, positions.shape[0], chunk_size):
            with torch.no_grad():
                parts.append(entry.fn(positions[k:k + chunk_size], cells[k:k + chunk_size],
                                      numbers, target))
        out[target.name] = torch.cat(parts)
    return out


def theta_observables(evaluation, n_atoms: int, temperature_K: float,
                      targets: list[Target]) -> dict[str, torch.Tensor]:
    """Values of every θ-dependent target from one evaluation, name → [b, n]."""
    return {
        t.name: spec(t).fn(evaluation, n_atoms, temperature_K, t)
        for t in targets
        if spec(t).depends_on_theta
    }
