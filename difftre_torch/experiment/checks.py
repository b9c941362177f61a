"""Checks between an experiment file, what a job asks of it, and the structure it is compared with.

A file declares things: its function (a ``#L`` column label, a CSV column name), how it was
processed (``qmax``, ``mode``, ``lorch``, ``rmax_transform``, ``weighting``), the sample's
``composition``. A job states things too (``observable``, ``function``, ``options``,
``use_sigma``, ``sigma_floor``). Where both speak they must agree; where the file says nothing
the job's word stands. Every refusal is one line, ``"<file>[, line <n>]: <field>: expected …,
got …"`` (:class:`~difftre_torch.experiment.errors.ExperimentFileError`) or, against the
structure, ``"<where>: <file>: <field>: expected …, got …"``
(:class:`~difftre_torch.experiment.errors.TargetCheckError`).

Functions (as in :mod:`difftre_torch.experiment.readers`): "rdf" g(r), "G" G(r) = 4πρr(g − 1)
(Å⁻²), "S" S(Q), "F" F(Q) = Q(S − 1) (Å⁻¹); r in Å, Q in Å⁻¹.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from ase import Atoms

from difftre_torch.experiment.errors import ExperimentFileError, TargetCheckError

if TYPE_CHECKING:
    from difftre_torch.experiment.data import ExperimentalData
    from difftre_torch.experiment.target import Target

REAL_SPACE: frozenset[str] = frozenset({"rdf", "G"})
WEIGHTING_OF_MODE: dict[str, tuple[str, ...]] = {"xray": ("xray", "xray_q"), "neutron": ("neutron",)}
"""A header's scattering ``mode`` → the weightings that describe such a measurement (the first one
is derived when the job names none): x-rays scatter by the electrons (Z, or f(Q) with "xray_q"),
neutrons by the nuclei (b_c)."""
_ROLE = {"rdf": ("r", "g"), "G": ("r", "G"), "S": ("Q", "S"), "F": ("Q", "F")}


# ----------------------------------------------------------------------------- places in a file


def row_line(data: ExperimentalData, k: int) -> int | None:
    """1-based file line of row ``k`` of ``data`` (``None`` where not known)."""
    lines = data.metadata.get("lines")
    if lines is None or len(lines) != data.x.shape[0]:
        return None
    return int(lines[k])


def column_name(metadata: Mapping[str, Any], function: str, k: int) -> str:
    """``"column 3 (dG)"``: the 1-based column ``k + 1`` of a file of ``function`` with its label
    where the file has one (``#L`` line, CSV header: ``metadata``), else its role (r or Q, the
    function, σ)."""
    labels = metadata.get("labels") or metadata.get("columns") or []
    if k < len(labels):
        return f"column {k + 1} ({labels[k]})"
    if k == metadata.get("sigma_column"):
        return f"column {k + 1} (σ)"
    role = _ROLE[function]
    return f"column {k + 1} ({role[k]})" if k < 2 else f"column {k + 1}"


def _source(data: ExperimentalData) -> str:
    return data.metadata.get("source", "<no file>")


# ----------------------------------------------------------------------------- the file vs the job


def check_observable(data: ExperimentalData, observable: str | None) -> None:
    """Refuse fitting ``data`` (function ``data.function``) as another ``observable``.

    The message names what decided the file's function: the file's own declaration (a ``#L``
    label or CSV column name, with its line), or how it was read (``function=`` or the extension).
    """
    if observable is None or observable == data.function:
        return
    declared = data.metadata.get("declared")
    if declared is not None:
        raise ExperimentFileError(_source(data), declared["line"], f"expected observable {data.function!r} "
                                  f"(what the file declares), got {observable!r}", field=declared["field"])
    how = data.metadata.get("function_from", "function")
    raise ExperimentFileError(_source(data), None, f"expected observable {data.function!r} (the file was read "
                              f"as {data.function!r} by its {how}), got {observable!r}", field="observable")


def check_grid_domain(data: ExperimentalData) -> None:
    """r ≥ 0 Å for g and G; Q > 0 Å⁻¹ for S and F (S(Q) = 1 + (4πρ/Q)∫r(g − 1)sin(Qr)dr is not
    defined at Q = 0: crop the grid). Names the first offending row's line."""
    x = data.x
    real = data.function in REAL_SPACE
    bad = (x < 0) if real else (x <= 0)
    if bad.any():
        k = int(np.argmax(bad))
        expected = ("r >= 0 Å" if real
                    else f"Q > 0 Å⁻¹ ({data.function}(Q) is fitted at Q > 0; crop with x_range)")
        raise ExperimentFileError(_source(data), row_line(data, k), f"expected {expected}, got {x[k]:g} "
                                  f"({int(bad.sum())} such rows)", field=column_name(data.metadata, data.function, 0))


def _header_derived(data: ExperimentalData) -> list[tuple[str, Any, str]]:
    """(option, value, header key) for each option the header declares, in order of precedence."""
    meta, header = data.metadata, data.metadata.get("header", {})
    out: list[tuple[str, Any, str]] = []
    if data.function == "G":
        out += [(k, float(meta[k]), meta.get("header_keys", {}).get(k, k)) for k in ("q_min", "q_max")
                if meta.get(k) is not None]
    if meta.get("mode") in WEIGHTING_OF_MODE:
        out.append(("weighting", WEIGHTING_OF_MODE[meta["mode"]][0], meta.get("header_keys", {}).get("mode", "mode")))
    flag = {"G": "lorch", "S": "lorch_r", "F": "lorch_r"}.get(data.function)
    if flag is not None and flag in header:
        out.append((flag, header[flag].strip().lower() in ("1", "true", "yes", "on"), flag))
    if meta.get("r_max_transform") is not None:
        out.append(("r_max_A", float(meta["r_max_transform"]), "rmax_transform"))
    if "weighting" in header:
        out.append(("weighting", header["weighting"].strip(), "weighting"))
    return out


def _agree(option: str, declared: Any, stated: Any, mode: str | None) -> bool:
    if option == "weighting" and mode is not None:  # a mode admits each weighting of its kind
        return stated in WEIGHTING_OF_MODE[mode]
    if isinstance(declared, float) and isinstance(stated, (int, float)) and not isinstance(stated, bool):
        return math.isclose(declared, float(stated), rel_tol=1e-12, abs_tol=0.0)
    return declared == stated


def options_from_header(data: ExperimentalData, options: Mapping[str, Any]) -> dict[str, Any]:
    """The target's options: what the header declares (G: ``q_min``, ``q_max`` from qmin/qmax;
    ``weighting`` from ``mode``, xray → "xray", neutron → "neutron", or from a ``weighting`` key;
    ``lorch`` (G) / ``lorch_r`` (S, F); ``r_max_A`` from ``rmax_transform``), then ``options``.

    An option that contradicts the header is refused (the model must be processed as the data
    were): ``weighting`` must be one of the mode's (xray: "xray" or "xray_q"; neutron:
    "neutron"), numbers must be equal (relative 1e-12), flags identical. Options the header does
    not speak of pass unchanged.
    """
    derived: dict[str, Any] = {}
    origin: dict[str, tuple[str, str | None]] = {}  # option -> (header key, mode it came from)
    for option, value, key in _header_derived(data):
        mode = data.metadata["mode"] if key in ("mode", "stype") else None
        if option in derived and not _agree(option, derived[option], value, origin[option][1]):
            raise _header_conflict(data, key, f"expected a weighting of mode {data.metadata['mode']!r} "
                                   f"({' or '.join(map(repr, WEIGHTING_OF_MODE[data.metadata['mode']]))}) "
                                   "as the same header says", value)
        derived[option], origin[option] = value, (key, mode)
    for option, stated in options.items():
        if option in derived and not _agree(option, derived[option], stated, origin[option][1]):
            key, mode = origin[option]
            what = (" or ".join(map(repr, WEIGHTING_OF_MODE[mode])) if mode is not None else repr(derived[option]))
            raise _header_conflict(data, key, f"expected options.{option} {what} (what the file declares: "
                                   f"{key} = {data.metadata.get('header', {}).get(key, derived[option])}) "
                                   "or no such option", stated)
    derived.update(options)
    return derived


def _header_conflict(data: ExperimentalData, key: str, expected: str, got: Any) -> ExperimentFileError:
    line = data.metadata.get("header_lines", {}).get(key)
    return ExperimentFileError(_source(data), line, f"{expected}, got {got!r}", field=key)


def fit_sigma(data: ExperimentalData, use_sigma: bool, sigma_floor: float = 0.0) -> np.ndarray | None:
    """The σ the loss divides by, [n], or ``None`` (unweighted).

    ``use_sigma`` false: ``None``, whatever the file holds. True: the file's σ column, each
    entry finite and > 0, floored in quadrature, σ' = √(σ² + sigma_floor²); zeros (PDFgui's
    "unknown") pass only with sigma_floor > 0; without a σ column, σ' = sigma_floor on every
    point, which must then be > 0. Anything else raises naming the file, the column, how many
    rows fail and the first one's line.
    """
    if not (isinstance(sigma_floor, (int, float)) and math.isfinite(sigma_floor) and sigma_floor >= 0):
        raise ExperimentFileError(_source(data), None, f"expected a number >= 0, got {sigma_floor!r}",
                                  field="sigma_floor")
    if not use_sigma:
        return None
    n = data.x.shape[0]
    if data.sigma is None:
        if sigma_floor > 0:
            return np.full(n, float(sigma_floor))
        n_columns = data.metadata.get("n_columns", 2)
        raise ExperimentFileError(_source(data), None, f"expected a σ column (use_sigma is true), got "
                                  f"{n_columns} columns without one; add σ, state sigma_floor (σ on every "
                                  "point) or set use_sigma: false", field="σ")
    sigma = data.sigma
    bad = ~np.isfinite(sigma) | (sigma < 0) | ((sigma == 0) & (sigma_floor == 0))
    if bad.any():
        k = int(np.argmax(bad))
        column = column_name(data.metadata, data.function, data.metadata.get("sigma_column", 2))
        zeros_only = bool((sigma[bad] == 0).all())  # a floor makes zeros usable, not NaN or σ < 0
        hint = ("state sigma_floor (added in quadrature) or set use_sigma: false" if zeros_only
                else "fix those rows or set use_sigma: false")
        raise ExperimentFileError(_source(data), row_line(data, k), f"expected σ > 0 in every row (use_sigma is "
                                  f"true), got {int(bad.sum())} of {n} rows with σ <= 0 or not finite (first: "
                                  f"{sigma[k]:g}); {hint}", field=column)
    return np.sqrt(sigma**2 + float(sigma_floor) ** 2) if sigma_floor > 0 else sigma.copy()


# ----------------------------------------------------------------------------- the target vs the structure


def _counts(atoms: Atoms) -> Counter:
    return Counter(atoms.get_chemical_symbols())


def _formula(counts: Mapping[str, float]) -> str:
    return " ".join(f"{s}{c:g}" for s, c in counts.items())


def composition_problem(composition: Mapping[str, float], atoms: Atoms) -> str | None:
    """``None`` if the structure has the file's composition, else ``"expected …, got …"``.

    Rule: scaled to the structure's N atoms, the formula's count of every element (deuterium "D"
    counted as H) is within one atom of the structure's, and the structure has no element the
    formula lacks. One atom is the finest a structure can match a formula by (C3N4 in 112 atoms:
    C48 N64).
    """
    formula: dict[str, float] = {}
    for symbol, count in composition.items():
        key = "H" if symbol == "D" else symbol
        formula[key] = formula.get(key, 0.0) + float(count)
    have = _counts(atoms)
    n = sum(have.values())
    total = sum(formula.values())
    scaled = {s: c * n / total for s, c in formula.items()}
    off = [s for s in set(scaled) | set(have) if abs(scaled.get(s, 0.0) - have.get(s, 0)) >= 1.0]
    if not off:
        return None
    return (f"expected a structure of composition {_formula(composition)} (scaled to its {n} atoms: "
            f"{_formula({s: round(c, 2) for s, c in scaled.items()})}, each within one atom), got "
            f"{_formula(dict(sorted(have.items())))}")


def _cell_widths(atoms: Atoms) -> np.ndarray:
    """Distances between opposite faces of the cell, Å [3]: V / |a_j × a_k|."""
    cell = np.asarray(atoms.cell.array)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def check_target_against_system(target: Target, atoms: Atoms, where: str) -> list[str]:
    """Check a target against the structure it will be compared with; return notes (true, not
    errors) for the build to print.

    Refused (:class:`~difftre_torch.experiment.errors.TargetCheckError`, ``"<where>: <file>:
    <field>: expected …, got …"``):

    * the file's ``composition`` (``target.composition``) against the structure's, by
      :func:`composition_problem` (within one atom of the formula scaled to N atoms);
    * deuterium in that composition with neutron weighting: the structure's H atoms get the
      coherent scattering length of ¹H (−3.74 fm), not D's (6.67 fm);
    * ``options.pair`` naming an element the structure lacks, or a like pair of a species with a
      single atom (g_aa undefined).

    Noted: where the model's g(r) (up to
    :func:`~difftre_torch.observables.registry.model_r_max_A`: about the grid's last r for g and
    ideal G, 5 Å more through a Q window, ``r_max_A`` of the g(r) → S(Q) transform for S and F)
    passes half the cell's smallest width w (face-to-face distance). Pairs are counted over all
    periodic images, so nothing is wrong with the counting there, and g(r) is exact for the
    periodic system; but that system has no motion longer than the cell: for a crystal the peak
    positions beyond w/2 are right and their widths too small (an atom and its own images, at
    the lattice vectors, move together: unbroadened peaks), for a liquid or a disordered solid
    g(r) there carries the cell's periodicity. Nothing is checked against the potential's
    cut-off: g(r) is a property of the configurations, not of the potential's range.

    ``where``: the target's place in the job, e.g. ``"job.yaml: targets[0] (G_total)"``.
    """
    from difftre_torch.observables.registry import model_r_max_A

    label = where if target.source is None else f"{where}: {target.source}"
    settings = target.settings
    if target.composition:
        problem = composition_problem(target.composition, atoms)
        if problem is not None:
            raise TargetCheckError(label, f"composition {_formula(target.composition)}", problem)
        if "D" in target.composition and getattr(settings, "weighting", None) == "neutron" \
                and getattr(settings, "pair", None) is None:
            raise TargetCheckError(label, f"composition {_formula(target.composition)}",
                                   "expected no deuterium with neutron weighting (the structure's H atoms are "
                                   "weighted with b_c of ¹H, −3.74 fm, not D's 6.67 fm), got D")
    pair = getattr(settings, "pair", None)
    if pair is not None:
        have = Counter(int(z) for z in atoms.numbers)
        missing = [z for z in pair if z not in have]
        if missing:
            raise TargetCheckError(label, "options.pair", f"expected atomic numbers present in the structure "
                                   f"({sorted(have)}), got {list(pair)}")
        if pair[0] == pair[1] and have[pair[0]] < 2:
            raise TargetCheckError(label, "options.pair", f"expected a species with at least 2 atoms for a like "
                                   f"pair (g_aa needs N_a − 1 > 0), got {have[pair[0]]} atom of Z = {pair[0]}")
    notes: list[str] = []
    if target.x is not None and target.observable in ("rdf", "G", "S", "F"):
        r_end = model_r_max_A(target)
        half = 0.5 * float(_cell_widths(atoms).min())
        if r_end > half:
            notes.append(f"{label}: the model's g(r) runs to {r_end:g} Å, past half the cell's smallest width "
                         f"({half:.3g} Å): beyond it g(r) is that of the periodic cell (all images counted; no "
                         "motion longer than the cell): a crystal's peaks there sit right but are too narrow, a "
                         "liquid's or disordered solid's carry the cell's periodicity")
    return notes
