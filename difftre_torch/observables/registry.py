"""Observables a :class:`~difftre_torch.experiment.target.Target` can name, and how to compute them.

Two kinds:

* θ-independent (depend on the snapshot only): ``fn(positions [b,N,3], cells [b,3,3],
  numbers [N], target) -> [b, n]``. Computed once when a snapshot store is filled and
  reweighted: ⟨O⟩ = Σ w_i O(S_i).
* θ-dependent (depend on the potential too): ``fn(evaluation, n_atoms, temperature_K, target)
  -> [b, n]`` from one energy + stress evaluation (:class:`~difftre_torch.potentials.base.Evaluation`)
  shared by all of them. Recomputed in every update; the gradient gets ⟨∂O/∂θ⟩ as well.

Functions of r or Q are computed on the model's own uniform grid (bins of ``bin_width_A``, 0.02 Å
by default, up to ``r_max_A``), never derived from the data's spacing, and interpolated linearly
onto the target's grid, uniform or not (linear, so it commutes with reweighting). Each observable
declares its options as a dataclass of :mod:`difftre_torch.observables.options` (``@register("G",
options=GOptions)``); a target's ``options`` mapping is validated against it when the target is
built (:func:`validate_options`: a misspelt or mistyped option is an error, not a silent
default) and the functions here read the typed instance ``target.settings``. In short:

* ``weighting``: "neutron" (default), "xray", "xray_q" (S/F: Q-dependent form factors; Z in
  r space) or "number" (Faber–Ziman total); or
  ``pair: [Z_a, Z_b]`` for one partial (diagnostics: experiments do not measure partials).
* ``bin_width_A`` (default 0.02 Å, :data:`~difftre_torch.observables.options.DEFAULT_BIN_WIDTH_A`),
  ``r_max_A`` (internal grid end; g and G: the target's last r + one bin by default),
  ``smoothing_A`` (Gaussian smoothing of the histogram).
* G(r): ``q_min``, ``q_max``, ``lorch`` — the instrument's Q range and Lorch window; without
  ``q_max`` G is the ideal 4πρr(g − 1).
* S(Q), F(Q): ``lorch_r`` (real-space window in g → S).
* lattice_length: ``axes``, ``repeats``; interlayer_spacing: ``layers_per_cell`` (required).

Units: r Å, Q Å⁻¹, G Å⁻², F Å⁻¹, pressure and stress GPa, lengths Å, density g/cm³.

To add an observable: write its function here (or in a module of its own) and decorate it with
:func:`register`, with its options class if it takes options; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from ase import units

from difftre_torch.experiment.target import Target
from difftre_torch.observables.options import (
    DensityOptions,
    FOptions,
    GOptions,
    InterlayerSpacingOptions,
    LatticeLengthOptions,
    NoOptions,
    OptionsError,
    PressureOptions,
    RdfOptions,
    SOptions,
    StressOptions,
    did_you_mean,
    parse_options,
)
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
    options: type = NoOptions  # its options dataclass (difftre_torch.observables.options)


OBSERVABLES: dict[str, ObservableSpec] = {}


def register(name: str, depends_on_theta: bool = False, options: type = NoOptions):
    """Decorator adding ``fn`` to :data:`OBSERVABLES` under ``name``; ``options``: the frozen
    dataclass of its options, a subclass of :class:`NoOptions` (fields documented in
    ``metadata["doc"]``, values checked by its ``check(x)``; see
    :mod:`difftre_torch.observables.options`), :class:`NoOptions` itself when it takes none."""
    if not (isinstance(options, type) and issubclass(options, NoOptions)):
        raise TypeError(f"register({name!r}): options must be a dataclass subclassing NoOptions, got {options!r}")

    def wrap(fn: Callable) -> Callable:
        OBSERVABLES[name] = ObservableSpec(name, depends_on_theta, fn, options)
        return fn
    return wrap


def spec(target: Target) -> ObservableSpec:
    """The registry entry a target names; a clear error if unknown."""
    return _entry(target.observable, f"Target {target.name!r}")


def validate_options(observable: str, options: dict | None, where: str,
                     x: torch.Tensor | None = None) -> Any:
    """The options dataclass instance of ``observable`` (e.g. :class:`GOptions`) from the mapping
    ``options``, every name, type and value checked; ``x`` the target's grid (r in Å or Q in
    Å⁻¹, ``None``: not checked). Raises :class:`OptionsError` (a ``ValueError``) whose message
    starts with ``where`` (e.g. ``"config.yaml: targets[2] (G_total).options"``) and names the
    option: ``unknown option 'q_mx' (did you mean 'q_max'?); expected some of [...]``."""
    return parse_options(_entry(observable, where).options, options, where, x)


def _entry(observable: str, where: str) -> ObservableSpec:
    try:
        return OBSERVABLES[observable]
    except (KeyError, TypeError):
        raise OptionsError(where, f"unknown observable {observable!r}{did_you_mean(observable, OBSERVABLES)}; "
                                  f"expected one of {sorted(OBSERVABLES)}") from None


# ----------------------------------------------------------------------------- helpers


def _interp(x_new: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of y [b, n] given on the uniform grid x [n] (the model's bin centres)
    at any points x_new [m] (uneven, unsorted, repeated: each is placed on its own) → [b, m].
    Outside [x[0], x[-1]] the end value is held."""
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
    """(r [n_r], g [b, n_r]) on the model's uniform grid: bins of ``bin_width_A`` up to
    ``r_max_A`` (rounded to whole bins), whatever the target's grid."""
    opts = target.settings
    step = opts.bin_width_A
    n_bins = max(2, int(round(r_max_A / step)))
    r, partials = partial_rdfs(positions, cells, numbers, n_bins * step, n_bins, smoothing_A=opts.smoothing_A)
    if opts.pair is not None:
        key = tuple(sorted(opts.pair))
        if key not in partials:
            raise ValueError(f"Target {target.name!r}: no species pair {key}; have {sorted(partials)}")
        return r, partials[key], partials
    # "xray_q" (Q-dependent form factors) only exists in Q space; in r space it is Z weighting
    g = total_rdf(partials, numbers, "xray" if opts.weighting == "xray_q" else opts.weighting)
    return r, g, partials


# ----------------------------------------------------------------------------- θ-independent


def model_r_max_A(target: Target) -> float:
    """End (Å) of the model's r grid for a g(r)-based target: ``r_max_A`` where given; else for
    g the target's last r + ``bin_width_A``, for G that + 5 Å with ``q_max`` (room for the Q-window
    transform's ripple) and + ``bin_width_A`` without; S and F always give ``r_max_A``."""
    opts = target.settings
    if opts.r_max_A is not None:
        return float(opts.r_max_A)
    x = _require_grid(target)
    return float(x[-1]) + (5.0 if getattr(opts, "q_max", None) is not None else opts.bin_width_A)


@register("rdf", options=RdfOptions)
def rdf(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Total (Faber–Ziman) or partial g(r) on the target's r grid, [b, n]."""
    x = _require_grid(target)
    r, g, _ = _g_on_grid(positions, cells, numbers, target, model_r_max_A(target))
    return _interp(x, r, g)


@register("G", options=GOptions)
def reduced_pdf(positions, cells, numbers, target: Target) -> torch.Tensor:
    """G(r) = 4πρr(g − 1) (Å⁻²) on the target's grid; through the instrument's Q range if
    ``q_max`` is given (``q_min`` default 0, ``lorch`` default False)."""
    x = _require_grid(target)
    opts: GOptions = target.settings
    r, g, _ = _g_on_grid(positions, cells, numbers, target, model_r_max_A(target))
    rho = number_density(len(numbers), cells)
    if opts.q_max is not None:
        G = instrument_G(r, g, rho, opts.q_min, opts.q_max, lorch=opts.lorch)
    else:
        G = g_to_G(r, g, rho)
    return _interp(x, r, G)


def _structure_factor(positions, cells, numbers, target: Target) -> torch.Tensor:
    q = _require_grid(target)
    opts: SOptions = target.settings
    r, g, partials = _g_on_grid(positions, cells, numbers, target, opts.r_max_A)
    rho = number_density(len(numbers), cells)
    if opts.weighting == "xray_q" and opts.pair is None:
        return total_structure_factor(r, partials, numbers, rho, q.to(g), weighting="xray", lorch=opts.lorch_r)
    return g_to_S(r, g, rho, q.to(g), lorch=opts.lorch_r)


@register("S", options=SOptions)
def structure_factor(positions, cells, numbers, target: Target) -> torch.Tensor:
    """S(Q) on the target's Q grid from g(r) up to ``r_max_A`` (default 10 Å); weighting
    ``"xray_q"`` uses Q-dependent form factors."""
    return _structure_factor(positions, cells, numbers, target)


@register("F", options=FOptions)
def reduced_structure_factor(positions, cells, numbers, target: Target) -> torch.Tensor:
    """F(Q) = Q(S(Q) − 1) (Å⁻¹) on the target's Q grid."""
    return S_to_F(target.x.to(positions), _structure_factor(positions, cells, numbers, target))


@register("lattice_length", options=LatticeLengthOptions)
def lattice_length(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Lattice lengths (Å): ``axes`` (default "abc") of the cell divided by ``repeats``
    (default [1, 1, 1]), so a supercell reports its unit cell's lengths. [b, len(axes)]."""
    opts: LatticeLengthOptions = target.settings
    repeats = torch.as_tensor(opts.repeats, dtype=cells.dtype)
    lengths = lattice_lengths(cells) / repeats.to(cells.device)
    return lengths[:, ["abc".index(a) for a in opts.axes]]


@register("interlayer_spacing", options=InterlayerSpacingOptions)
def spacing(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Mean interlayer spacing (Å) of layers stacked along c; option ``layers_per_cell``."""
    return interlayer_spacing(cells, target.settings.layers_per_cell)[:, None]


@register("density", options=DensityOptions)
def density(positions, cells, numbers, target: Target) -> torch.Tensor:
    """Mass density (g/cm³), [b, 1]."""
    from ase.data import atomic_masses

    masses = torch.as_tensor(atomic_masses[numbers.cpu().numpy()], dtype=cells.dtype, device=cells.device)
    return mass_density(cells, masses)[:, None]


# ----------------------------------------------------------------------------- θ-dependent


@register("pressure", depends_on_theta=True, options=PressureOptions)
def pressure_GPa(evaluation, n_atoms: int, temperature_K: float, target: Target) -> torch.Tensor:
    """Virial pressure with the canonical kinetic term (GPa), [b, 1]."""
    sigma = total_stress(evaluation.stress, evaluation.volume, n_atoms, temperature_K)
    return (pressure_from_stress(sigma) / units.GPa)[:, None]


@register("stress", depends_on_theta=True, options=StressOptions)
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
