"""Options of each registered observable, as typed dataclasses, and their validation.

Every observable of :mod:`difftre_torch.observables.registry` declares one options class here
(``@register("G", options=GOptions)``). A :class:`~difftre_torch.experiment.target.Target`'s
``options`` mapping (as written in a config or derived from a file header) is checked against
it when the target is built, by :func:`parse_options`: an unknown name (with the closest known
one suggested), a value of the wrong type (``"5.0"`` for a number, ``"false"`` for a boolean:
strings are never coerced; an integer is a fine number) or a value out of range raises
:class:`OptionsError` naming where the options came from and the option. The observable
functions then read the typed instance (``target.settings``), never the raw mapping.

Each field carries a one-line description in ``field(metadata={"doc": ...})`` (see
:func:`option`), units included, from which a config reference can be generated; units are
ASE's: r in Å, Q in Å⁻¹.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

WEIGHTINGS: tuple[str, ...] = ("neutron", "xray", "xray_q", "number")
DEFAULT_BIN_WIDTH_A = 0.02
"""Width Δr (Å) of the model's g(r) bins unless a target says otherwise; never taken from the data
grid (whose spacing is the experimenter's choice, and may be uneven). Binning convolves g(r) with
a box of width Δr (variance Δr²/12 = 3.3e-5 Å²): against the narrowest peak we fit, a first-
neighbour shell at room temperature (σ ≳ 0.05 Å), that widens it by < 1 %, and the bins sample
Q up to π/Δr = 157 Å⁻¹, far beyond any instrument's Q_max. The model then has r_max/Δr bins
(1250 for 25 Å), whatever the file."""
MAX_POINTS_PER_BIN = 10
"""An r grid may have at most this many points per model bin (its median spacing ≥ Δr/10): the
model is a straight line between bin centres, so finer data add cost (one stored value per
point per snapshot), not information."""
MAX_GRID_POINTS = 20_000
"""At most this many grid points per target: each snapshot stores one float64 per point (160 kB
here), and g(r) → S(Q) holds an [n_Q, n_r] kernel (200 MB for 20 000 Q × 1250 r)."""
AXES = "abc"
MAX_Z = 118  # heaviest element with an atomic number


class OptionsError(ValueError):
    """Options of a target that do not fit its observable. The message is
    ``"<where>: <what is wrong, naming the option>"``."""

    def __init__(self, where: str, message: str) -> None:
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        return (type(self), (self.where, self.message))


def option(default: Any = MISSING, *, doc: str) -> Any:
    """A dataclass field with its one-line description (unit and meaning) in ``metadata["doc"]``;
    no ``default``: a required option."""
    return dataclasses.field(default=default, metadata={"doc": doc})


# ----------------------------------------------------------------------------- options classes


@dataclass(frozen=True)
class NoOptions:
    """An observable without options (the default of :func:`register`)."""

    grid: ClassVar[str | None] = None  # "r" (Å) or "Q" (Å⁻¹): the target needs a grid x; None: scalar

    def check(self, x: torch.Tensor | None) -> None:
        """Raise ``ValueError`` (naming the option) for values no field's type rules out; ``x``
        the target's grid, ``None`` when not known."""
        if self.grid is not None and x is not None:
            _check_grid(x, self.grid)


@dataclass(frozen=True)
class HistogramOptions(NoOptions):
    """Options shared by the observables computed from the pair-distance histogram g(r)."""

    weighting: str = option("neutron", doc='how the partials add up to the total: "neutron" (b_c), '
                                           '"xray" (Z), "xray_q" (S, F: form factors f(Q); Z in r space) '
                                           'or "number" (concentrations only); Faber–Ziman')
    pair: tuple[int, int] | None = option(None, doc="atomic numbers [Z_a, Z_b] of one partial to "
                                                    "compute instead of the total (diagnostics)")
    bin_width_A: float = option(DEFAULT_BIN_WIDTH_A, doc="width Δr in Å of the model's g(r) bins, whatever the "
                                                         "data grid (the model is interpolated linearly onto it)")
    r_max_A: float | None = option(None, doc="end of the internal r grid in Å (default: the target grid's "
                                             "last r + bin_width_A)")
    smoothing_A: float | None = option(None, doc="Gaussian width σ in Å smoothing the histogram "
                                                 "(default: hard bins)")

    def check(self, x: torch.Tensor | None) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"option 'weighting': expected one of {list(WEIGHTINGS)}, got "
                             f"{self.weighting!r}{did_you_mean(self.weighting, WEIGHTINGS)}")
        if self.pair is not None and not all(1 <= z <= MAX_Z for z in self.pair):
            raise ValueError(f"option 'pair': expected two atomic numbers 1…{MAX_Z}, got {list(self.pair)}")
        for name in ("bin_width_A", "r_max_A", "smoothing_A"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"option {name!r}: expected a length > 0 Å, got {value}")
        super().check(x)


@dataclass(frozen=True)
class RdfOptions(HistogramOptions):
    """g(r) on the target's r grid (Å)."""

    grid: ClassVar[str | None] = "r"

    def check(self, x: torch.Tensor | None) -> None:
        super().check(x)
        if x is not None and self.r_max_A is not None and float(x[-1]) > self.r_max_A:
            raise ValueError(f"option 'r_max_A' ({self.r_max_A} Å) is below the target grid's last "
                             f"r ({float(x[-1])} Å); expected r_max_A >= every r of x")


@dataclass(frozen=True)
class GOptions(RdfOptions):
    """G(r) = 4πρr(g − 1) on the target's r grid (Å); through the instrument's Q window
    [q_min, q_max] (Å⁻¹) when ``q_max`` is given, the ideal G otherwise."""

    r_max_A: float | None = option(None, doc="end of the internal r grid in Å (default: the target "
                                             "grid's last r + 5 Å with q_max, + bin_width_A without)")
    q_min: float = option(0.0, doc="lowest Q of the instrument in Å⁻¹ (used only with q_max)")
    q_max: float | None = option(None, doc="highest Q of the instrument in Å⁻¹ "
                                           "(default: none, the ideal G(r))")
    lorch: bool = option(False, doc="apply the Lorch window M(Q) in the Q → r transform (with q_max)")

    def check(self, x: torch.Tensor | None) -> None:
        super().check(x)
        if self.q_min < 0:
            raise ValueError(f"option 'q_min': expected a Q >= 0 Å⁻¹, got {self.q_min}")
        if self.q_max is not None and not self.q_max > self.q_min:
            raise ValueError(f"option 'q_max': expected q_max > q_min ({self.q_min} Å⁻¹), got {self.q_max}")


@dataclass(frozen=True)
class SOptions(HistogramOptions):
    """S(Q) on the target's Q grid (Å⁻¹), the Fourier transform of g(r) up to ``r_max_A``."""

    grid: ClassVar[str | None] = "Q"
    r_max_A: float = option(10.0, doc="end of the r range of the g(r) → S(Q) transform in Å")
    lorch_r: bool = option(False, doc="apply the real-space Lorch window M(r) in g(r) → S(Q)")


@dataclass(frozen=True)
class FOptions(SOptions):
    """F(Q) = Q(S(Q) − 1) (Å⁻¹) on the target's Q grid (Å⁻¹); the options of S(Q)."""


@dataclass(frozen=True)
class LatticeLengthOptions(NoOptions):
    """Cell lengths (Å) per unit cell of a supercell."""

    axes: str = option("abc", doc='which cell lengths, in order, from "a", "b", "c" (e.g. "ab")')
    repeats: tuple[int, int, int] = option((1, 1, 1), doc="unit cells per supercell along a, b, c; "
                                                          "lengths are divided by them")

    def check(self, x: torch.Tensor | None) -> None:
        if not self.axes or any(a not in AXES for a in self.axes):
            raise ValueError(f"option 'axes': expected letters from {AXES!r} (e.g. 'ab'), got {self.axes!r}")
        if not all(n >= 1 for n in self.repeats):
            raise ValueError(f"option 'repeats': expected 3 positive integers, got {list(self.repeats)}")
        super().check(x)


@dataclass(frozen=True)
class InterlayerSpacingOptions(NoOptions):
    """Mean spacing (Å) of layers stacked along c: V / |a × b| / layers_per_cell."""

    layers_per_cell: int = option(doc="layers stacked along c in the simulation cell")

    def check(self, x: torch.Tensor | None) -> None:
        if self.layers_per_cell < 1:
            raise ValueError(f"option 'layers_per_cell': expected an integer >= 1, got {self.layers_per_cell}")
        super().check(x)


@dataclass(frozen=True)
class DensityOptions(NoOptions):
    """Mass density (g/cm³); no options."""


@dataclass(frozen=True)
class PressureOptions(NoOptions):
    """Virial pressure (GPa); no options."""


@dataclass(frozen=True)
class StressOptions(NoOptions):
    """Total stress (GPa, Voigt order); no options."""


# ----------------------------------------------------------------------------- validation


def parse_options(cls: type, options: Mapping[str, Any] | None, where: str,
                  x: torch.Tensor | None = None) -> Any:
    """An instance of the options dataclass ``cls`` from the mapping ``options``.

    Raises :class:`OptionsError` ``"<where>: …"`` for an unknown name (closest known one
    suggested), a missing required option, a wrong type (strings are never coerced to numbers
    or booleans; integers are accepted for floats, lists for tuples) or a value ``cls.check``
    rejects; ``x`` (the target's grid, Å or Å⁻¹) is checked too where given.
    """
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise OptionsError(where, f"expected a mapping of option names to values, got {options!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in options:
        if name not in fields:
            if not fields:
                raise OptionsError(where, f"unknown option {name!r}: this observable takes no options")
            raise OptionsError(where, f"unknown option {name!r}{did_you_mean(name, fields)}; "
                                      f"expected some of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in options:
            try:
                values[name] = _coerce(options[name], hints[name])
            except _WrongType as exc:
                raise OptionsError(where, f"option {name!r}: {exc}") from None
        elif f.default is MISSING and f.default_factory is MISSING:
            raise OptionsError(where, f"missing required option {name!r} ({f.metadata.get('doc', '')})")
    settings = cls(**values)
    try:
        settings.check(None if x is None else torch.as_tensor(x))
    except ValueError as exc:
        raise OptionsError(where, str(exc)) from None
    return settings


def option_docs(cls: type) -> dict[str, str]:
    """Option name → its one-line description, in declaration order."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.init}


class _WrongType(Exception):
    pass


class _NotFinite(_WrongType):
    pass


def did_you_mean(name: Any, known) -> str:
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        return f"a list of {len(args)} {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` checked against ``hint`` (float, int, bool, str, tuple[...] or X | None) and
    converted (int → float, list → tuple); :class:`_WrongType` with the reason otherwise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg)
                except _NotFinite:
                    raise  # the right type, a wrong value: say so
                except _WrongType:
                    pass
        raise _wrong(value, hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _wrong(value, hint)
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    is_bool = isinstance(value, (bool, np.bool_))
    if hint is bool:
        if not is_bool:
            raise _wrong(value, hint)
        return bool(value)
    if hint is int:
        if is_bool or not isinstance(value, numbers.Integral):
            raise _wrong(value, hint)
        return int(value)
    if hint is float:
        if is_bool or not isinstance(value, numbers.Real):
            raise _wrong(value, hint)
        if not math.isfinite(float(value)):
            raise _NotFinite(f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(value, hint)
        return value
    raise TypeError(f"options cannot declare a field of type {hint!r}")


def _wrong(value: Any, hint: Any) -> _WrongType:
    quoted = isinstance(value, str) and any(
        t in (float, int, bool) for t in (hint, *typing.get_args(hint)))
    return _WrongType(f"expected {_type_name(hint)}, got {value!r} ({type(value).__name__})"
                      + (" (write it without quotes)" if quoted else ""))


def check_grid_size(x: torch.Tensor, settings: Any) -> None:
    """Raise ``ValueError("expected …, got …")`` if the target grid ``x`` (Å or Å⁻¹, [n]) is too
    long for the model: more than :data:`MAX_GRID_POINTS` points, or (r grids of g and G) a
    median spacing below ``bin_width_A`` / :data:`MAX_POINTS_PER_BIN`. Scalars pass."""
    if settings.grid is None or x is None or x.ndim != 1:
        return
    n = int(x.shape[0])
    bin_width = getattr(settings, "bin_width_A", None)
    if settings.grid == "r" and bin_width is not None and n > 2 * MAX_POINTS_PER_BIN:
        spacing = float(torch.diff(x).median())
        if spacing < bin_width / MAX_POINTS_PER_BIN:
            raise ValueError(
                f"expected a grid step >= {bin_width / MAX_POINTS_PER_BIN:g} Å (bin_width_A = {bin_width:g} Å "
                f"/ {MAX_POINTS_PER_BIN}: the model is linear between its bins), got a median step of "
                f"{spacing:.3g} Å over {n} points; thin the file to a step >= {bin_width / MAX_POINTS_PER_BIN:g} Å "
                f"(e.g. average blocks of {max(2, round(bin_width / MAX_POINTS_PER_BIN / spacing))} rows), crop it "
                f"with x_range, or give a smaller bin_width_A")
    if n > MAX_GRID_POINTS:
        raise ValueError(f"expected at most {MAX_GRID_POINTS} grid points (each snapshot stores one value per "
                         f"point), got {n}; crop the grid with x_range or thin the file")


def _check_grid(x: torch.Tensor, grid: str) -> None:
    """The target's grid: ≥ 2 finite points; r ≥ 0 Å, Q > 0 Å⁻¹."""
    unit = "Å" if grid == "r" else "Å⁻¹"
    if x.ndim != 1 or x.shape[0] < 2:
        raise ValueError(f"the grid x needs at least 2 points of {grid} ({unit}), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the grid x contains NaN or inf")
    if grid == "r" and bool((x < 0).any()):
        raise ValueError(f"the grid x has r < 0 ({float(x.min())} Å); expected r >= 0 Å")
    if grid == "Q" and bool((x <= 0).any()):
        raise ValueError(f"the grid x has Q <= 0 ({float(x.min())} Å⁻¹); expected Q > 0 Å⁻¹ "
                         "(crop the grid, e.g. x_min)")
