"""One measured function on its grid, as a reader gives it, and the step from it to a target.

Functions and units: "rdf" g(r) (dimensionless, r in Å); "G" G(r) = 4πρr(g − 1) (Å⁻², ρ the
number density in Å⁻³); "S" S(Q) (→ 1 at large Q; Q = 4π sinθ/λ in Å⁻¹); "F" F(Q) = Q(S − 1)
(Å⁻¹). The readers are in :mod:`difftre_torch.experiment.readers`, the checks between a file,
a job and a structure in :mod:`difftre_torch.experiment.checks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from difftre_torch.experiment.checks import check_grid_domain, check_observable, fit_sigma, options_from_header
from difftre_torch.experiment.errors import ExperimentFileError
from difftre_torch.experiment.target import Target

FUNCTIONS: tuple[str, ...] = ("rdf", "G", "S", "F")


@dataclass
class ExperimentalData:
    """One measured function on its grid, as read from a file.

    function: "rdf" (g), "G" (G(r) = 4πρr(g − 1), Å⁻²), "S" (S(Q)) or "F" (F(Q) = Q(S − 1), Å⁻¹).
    x: [n] strictly increasing grid, r in Å ("rdf", "G") or Q in Å⁻¹ ("S", "F").
    values: [n] the function on x, in the units above.
    sigma: [n] standard errors as the file gives them (units of values; zeros, PDFgui's
        "unknown", kept), or ``None`` without a σ column; what a fit may use is decided by
        :meth:`to_target` (:func:`~difftre_torch.experiment.checks.fit_sigma`).
    metadata: what the header gave: ``source`` (path), ``header`` (raw key → string),
        ``header_lines`` (key → line), and where present ``q_min``, ``q_max``, ``q_max_inst``
        (Å⁻¹), ``r_poly``, ``r_min``, ``r_max``, ``r_step`` (Å), ``wavelength_A``, ``q_damp``,
        ``q_broad``, ``temperature_K``, ``mode`` ("xray" or "neutron"), ``composition`` (symbol →
        count), ``r_max_transform`` (Å, from ``rmax_transform``), ``header_keys`` (metadata key →
        the header's spelling), ``labels`` (#L) or ``columns`` (CSV header); and from the reader ``lines`` ([n]
        file line of each row), ``n_columns``, ``sigma_column`` (0-based), ``declared`` (the
        file's own word on its function: function, field, line) and ``function_from``.
    """

    function: str
    x: np.ndarray
    values: np.ndarray
    sigma: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_function(self.function)
        self.x = np.asarray(self.x, dtype=np.float64)
        self.values = np.asarray(self.values, dtype=np.float64)
        n = self.x.shape[0] if self.x.ndim == 1 else -1
        if self.x.ndim != 1 or self.values.shape != (n,):
            raise ValueError(f"x and values must be 1-D of one length, "
                             f"got {self.x.shape}, {self.values.shape}")
        if n < 2:
            raise ValueError(f"need at least 2 points, got {n}")
        if not (np.isfinite(self.x).all() and np.isfinite(self.values).all()):
            raise ValueError("x and values must be finite (no NaN or inf)")
        if not (np.diff(self.x) > 0).all():
            raise ValueError("x must be strictly increasing")
        if self.sigma is not None:
            self.sigma = np.asarray(self.sigma, dtype=np.float64)
            if self.sigma.shape != (n,):
                raise ValueError(f"sigma has shape {self.sigma.shape}, values ({n},)")

    def crop(self, x_range: Sequence[float] | None) -> ExperimentalData:
        """The rows with lo ≤ x ≤ hi (``x_range = [lo, hi]``, Å or Å⁻¹; ``None``: all), line
        numbers kept; fewer than 2 rows raise naming the file."""
        if x_range is None:
            return self
        lo, hi = (float(v) for v in x_range)
        inside = (self.x >= lo) & (self.x <= hi)
        if int(inside.sum()) < 2:
            raise ExperimentFileError(self.metadata.get("source"), None, f"expected at least 2 of the grid's "
                                      f"{self.x.shape[0]} points [{self.x[0]:g}, {self.x[-1]:g}] inside, "
                                      f"got {int(inside.sum())}", field=f"x_range [{lo:g}, {hi:g}]")
        metadata = dict(self.metadata)
        if metadata.get("lines") is not None and len(metadata["lines"]) == self.x.shape[0]:
            metadata["lines"] = metadata["lines"][inside]
        return ExperimentalData(self.function, self.x[inside], self.values[inside],
                                None if self.sigma is None else self.sigma[inside], metadata)

    def to_target(self, name: str, weight: float = 1.0, state_point: str | None = None, *,
                  observable: str | None = None, use_sigma: bool = True, sigma_floor: float = 0.0,
                  **options: Any) -> Target:
        """A :class:`Target` for the observable ``self.function`` on this grid.

        observable: what the job fits, which must be the file's function (``None``: not checked).
        use_sigma, sigma_floor: the σ rule of :func:`~difftre_torch.experiment.checks.fit_sigma`
            (with ``use_sigma`` the file must give σ > 0 on every row, or ``sigma_floor`` > 0).
        options: observable options; the header's declarations (``weighting`` from ``mode``; G's
            ``q_min``, ``q_max``; ``lorch``/``lorch_r``; ``r_max_A`` from ``rmax_transform``; a
            ``weighting`` key) come first and an option contradicting them is refused
            (:func:`~difftre_torch.experiment.checks.options_from_header`). Only options the
            observable declares are derived, and the Target checks them all: an unknown or
            invalid one raises :class:`~difftre_torch.observables.options.OptionsError`.

        The grid must suit the function (r ≥ 0 Å; Q > 0 Å⁻¹). The Target carries ``source`` (the
        path) and ``composition`` (the header's, for
        :func:`~difftre_torch.experiment.checks.check_target_against_system`).
        """
        check_observable(self, observable)
        check_grid_domain(self)
        derived = options_from_header(self, options)
        sigma = fit_sigma(self, use_sigma, sigma_floor)
        composition = self.metadata.get("composition")
        return Target(name=name, observable=self.function, values=self.values.copy(), x=self.x.copy(),
                      sigma=sigma, weight=weight, state_point=state_point, options=derived,
                      source=self.metadata.get("source"),
                      composition=None if composition is None else dict(composition))


def check_function(function: str | None, path: str | os.PathLike | None = None) -> str:
    """``function`` if it is one of :data:`FUNCTIONS`; else an error naming ``path`` (an
    :class:`ExperimentFileError`) or, without a path, a plain ``ValueError``."""
    if function not in FUNCTIONS:
        message = f"unknown function {function!r}; expected one of {list(FUNCTIONS)}"
        raise ExperimentFileError(path, None, message) if path is not None else ValueError(message)
    return function
