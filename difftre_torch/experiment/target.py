"""Targets: an observable, the experiment's values (with optional σ) and a weight in the loss.

A target is data. The observable is named by a key of
:data:`difftre_torch.observables.registry.OBSERVABLES` ("rdf", "G", "S", "F", "pressure",
"lattice_length", "interlayer_spacing", "density", …) and configured by ``options``, which are
validated against the observable's options dataclass when the target is built; adding a target
never touches the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from difftre_torch.experiment.errors import TargetCheckError


@dataclass
class Target:
    """One term of the DiffTRe loss, weight · mean_bins[((⟨O⟩ − values)/σ)²].

    name: unique label (used for logging and for the cached per-snapshot values).
    observable: registry key (see :mod:`difftre_torch.observables.registry`).
    values: [n] target values in the observable's units (a scalar target has n = 1).
    x: [n] grid of the values (r in Å or Q in Å⁻¹) for functions; ``None`` for scalars.
    sigma: [n] experimental standard errors (same units as values), or ``None``.
    weight: λ_k of this term.
    state_point: name of the state point whose ensemble it refers to (``None``: the only one).
    options: observable options (weighting, Q range, Lorch window, axes, ...) as a plain mapping,
        kept as given (for serialisation); checked when the target is built against the
        observable's options dataclass (:mod:`difftre_torch.observables.options`): an unknown,
        mistyped or out-of-range option raises
        :class:`~difftre_torch.observables.options.OptionsError` (a ``ValueError``).
    source: the file the values came from (path as given), named in errors; ``None`` for inline
        values.
    composition: the sample's formula as the file states it, element symbol → count (e.g.
        ``{"C": 3.0, "N": 4.0}``), or ``None``; checked against the simulated structure by
        :func:`~difftre_torch.experiment.checks.check_target_against_system`.
    settings: the validated options, an instance of that dataclass (e.g. ``GOptions``), which the
        observable functions read. Not an argument: derived from ``observable``, ``options`` and
        ``x``, and derived again when one of those is reassigned. The grid is checked against the
        model's bins too (:func:`~difftre_torch.observables.options.check_grid_size`: at most
        10 points per bin of g(r), at most 20 000 points): a longer grid raises
        :class:`~difftre_torch.experiment.errors.TargetCheckError` naming ``source``.
    """

    name: str
    observable: str
    values: torch.Tensor
    x: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    weight: float = 1.0
    state_point: str | None = None
    options: dict = field(default_factory=dict)
    source: str | None = None
    composition: dict[str, float] | None = None
    settings: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.values = torch.atleast_1d(torch.as_tensor(np.asarray(self.values), dtype=torch.float64))
        n = self.values.shape[0]
        if self.values.ndim != 1:
            raise ValueError(f"Target {self.name!r}: values must be 1-D, got shape {tuple(self.values.shape)}")
        if self.x is not None:
            self.x = torch.as_tensor(np.asarray(self.x), dtype=torch.float64)
            if self.x.shape != (n,):
                raise ValueError(f"Target {self.name!r}: x has shape {tuple(self.x.shape)}, values ({n},)")
        if self.sigma is not None:
            self.sigma = torch.atleast_1d(torch.as_tensor(np.asarray(self.sigma), dtype=torch.float64))
            if self.sigma.shape != (n,):
                raise ValueError(f"Target {self.name!r}: sigma has shape {tuple(self.sigma.shape)}, values ({n},)")
            if not bool((self.sigma > 0).all()):
                raise ValueError(f"Target {self.name!r}: every sigma must be > 0")
        if not torch.isfinite(self.values).all():
            raise ValueError(f"Target {self.name!r}: values contain NaN or inf")
        if self.weight < 0:
            raise ValueError(f"Target {self.name!r}: weight must be >= 0, got {self.weight}")
        self.options = {} if self.options is None else self.options
        self._validate_options()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _SETTINGS_INPUTS and "settings" in self.__dict__:  # after __post_init__
            self._validate_options()

    def _validate_options(self) -> None:
        from difftre_torch.observables.options import check_grid_size
        from difftre_torch.observables.registry import validate_options  # the registry imports Target

        settings = validate_options(self.observable, self.options, f"Target {self.name!r}", self.x)
        if settings.grid is not None and self.x is None:
            raise ValueError(f"Target {self.name!r}: observable {self.observable!r} is a function of "
                             f"{settings.grid}; give its grid x")
        try:
            check_grid_size(self.x, settings)
        except ValueError as exc:
            where = f"Target {self.name!r}" if self.source is None else f"{self.source} (target {self.name!r})"
            raise TargetCheckError(where, "x", str(exc)) from None
        object.__setattr__(self, "settings", settings)


_SETTINGS_INPUTS = frozenset({"observable", "options", "x"})  # Target fields settings derive from
