"""Readers for the files experimenters have: PDFgetX3 / PDFgetN / PDFgui ``.gr`` (``.sq``, ``.fq``)
files and plain two- or three-column text or CSV, and a writer for the ``.gr`` layout.

Functions and units, as in :mod:`difftre_torch.observables.registry` and
:mod:`difftre_torch.observables.scattering`:

* ``"rdf"``: g(r), dimensionless; r in Å.
* ``"G"``: G(r) = 4πρr(g(r) − 1) in Å⁻² (ρ the number density in Å⁻³); r in Å.
* ``"S"``: S(Q), dimensionless, → 1 at large Q; Q = 4π sinθ/λ in Å⁻¹.
* ``"F"``: F(Q) = Q(S(Q) − 1) in Å⁻¹; Q in Å⁻¹.

Layout of a PDFgetX3 output file (Juhás et al., J. Appl. Cryst. 46, 560 (2013),
doi:10.1107/S0021889813005190)::

    [DEFAULT]
    version = diffpy.pdfgetx-2.1.2
    # PDF calculation setup
    mode = xray
    composition = SiO2
    qmin = 0
    qmax = 12.5
    rpoly = 0.9
    #### start data
    #S 1
    #L r($\\AA$)  G($\\AA^{-2}$)
    0 0
    0.01 0.000792929

PDFgui and PDFgetN write more columns: three are x, y, dy and four are x, y, dx, dy (dx is
ignored). A PDFgui header says ``stype=X`` or ``stype=N`` where PDFgetX3 says ``mode``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from ase.data import chemical_symbols

from difftre_torch.checkpoint import atomic_write_text
from difftre_torch.experiment.target import Target

FUNCTIONS: tuple[str, ...] = ("rdf", "G", "S", "F")
REAL_SPACE: frozenset[str] = frozenset({"rdf", "G"})
_SUFFIX_FUNCTION = {".gr": "G", ".sq": "S", ".fq": "F"}
_PDF_SUFFIXES = (".gr", ".sq", ".fq", ".iq")
_COLUMN_SUFFIXES = (".csv", ".txt", ".dat", ".xy", ".tsv")
_NUMERIC = "a number"
_A_TEMPERATURE = "a temperature such as '300', '300 K' or '25 C'"
_LABEL_FUNCTION = {"G": "G", "g": "rdf", "S": "S", "F": "F"}
_WEIGHTING_OF_MODE = {"xray": "xray", "neutron": "neutron"}
_COLUMN_LABELS = {  # function -> (x, value, sigma) labels in PDFgetX3's LaTeX style
    "rdf": (r"r($\AA$)", "g", "dg"),
    "G": (r"r($\AA$)", r"G($\AA^{-2}$)", r"dG($\AA^{-2}$)"),
    "S": (r"Q($\AA^{-1}$)", "S", "dS"),
    "F": (r"Q($\AA^{-1}$)", r"F($\AA^{-1}$)", r"dF($\AA^{-1}$)"),
}
_KEY_VALUE = re.compile(r"^([A-Za-z][\w.\-]*)\s*=\s*(.*)$")
_START_DATA = re.compile(r"^#+\s*start\s+data", re.IGNORECASE)
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)\s*(\d+(?:\.\d*)?|\.\d+)?")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TEMPERATURE = re.compile(rf"^({_NUMBER})\s*(K|C|°C)?$")
_QUANTITY = re.compile(rf"^({_NUMBER})\s*[A-Za-zÅ$\\^{{}}()/\-\d]*$")  # a number, maybe a unit


class ExperimentFileError(ValueError):
    """A file that cannot be read as an experiment. The message is
    ``"<file>, line <n>: expected …"`` (1-based line number; no line where the problem is not on
    one line)."""

    def __init__(self, path: str | os.PathLike, line: int | None, expected: str) -> None:
        self.path, self.line, self.expected = str(path), line, expected
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {expected}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.expected))


@dataclass
class ExperimentalData:
    """One measured function on its grid, as read from a file.

    function: "rdf" (g), "G" (G(r) = 4πρr(g − 1), Å⁻²), "S" (S(Q)) or "F" (F(Q) = Q(S − 1), Å⁻¹).
    x: [n] strictly increasing grid, r in Å ("rdf", "G") or Q in Å⁻¹ ("S", "F").
    values: [n] the function on x, in the units above.
    sigma: [n] standard errors (> 0, units of values), or ``None``.
    metadata: what the header gave: ``source`` (path), ``header`` (raw key → string), and where
        present ``q_min``, ``q_max``, ``q_max_inst`` (Å⁻¹), ``r_poly``, ``r_min``, ``r_max``,
        ``r_step`` (Å), ``wavelength_A``, ``q_damp``, ``q_broad``, ``temperature_K``, ``mode``
        ("xray", "neutron", …), ``composition`` (symbol → count), ``labels``, ``columns``.
    """

    function: str
    x: np.ndarray
    values: np.ndarray
    sigma: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_function(self.function)
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
            if not (np.isfinite(self.sigma).all() and (self.sigma > 0).all()):
                raise ValueError("every sigma must be finite and > 0")

    def to_target(self, name: str, weight: float = 1.0, state_point: str | None = None,
                  **options: Any) -> Target:
        """A :class:`Target` for the observable ``self.function`` on this grid.

        From the header: ``weighting`` from ``mode`` ("xray" → "xray", "neutron" → "neutron"),
        and for G the instrument's ``q_min``, ``q_max`` (Å⁻¹; the registry then computes G through
        that Q window). Files written by :func:`write_gr` also say how they were processed, and
        those keys become options too: ``lorch`` (G), ``lorch_r`` (S, F), ``rmax_transform``
        (→ ``r_max_A``) and ``weighting`` (e.g. "xray_q"). Keyword ``options`` are added last
        and override all of these. Only options the observable declares are derived (the rest of
        the header stays in ``metadata``), and the Target checks them all: an unknown or invalid
        one raises :class:`~difftre_torch.observables.options.OptionsError` naming the target.
        """
        derived: dict[str, Any] = {}
        if self.function == "G":
            derived.update({k: float(self.metadata[k]) for k in ("q_min", "q_max")
                            if self.metadata.get(k) is not None})
        if self.metadata.get("mode") in _WEIGHTING_OF_MODE:
            derived["weighting"] = _WEIGHTING_OF_MODE[self.metadata["mode"]]
        derived.update(self._processing_options())
        derived.update(options)
        return Target(name=name, observable=self.function, values=self.values.copy(),
                      x=self.x.copy(), sigma=None if self.sigma is None else self.sigma.copy(),
                      weight=weight, state_point=state_point, options=derived)


    def _processing_options(self) -> dict[str, Any]:
        header = self.metadata.get("header", {})
        out: dict[str, Any] = {}
        flags = {"G": "lorch", "S": "lorch_r", "F": "lorch_r"}
        flag = flags.get(self.function)
        if flag is not None and flag in header:
            out[flag] = header[flag].strip().lower() in ("1", "true", "yes", "on")
        if "rmax_transform" in header:
            out["r_max_A"] = _quantity(header["rmax_transform"])
        if "weighting" in header:
            out["weighting"] = header["weighting"].strip()
        return out


# ----------------------------------------------------------------------------- header values


def parse_composition(formula: str) -> dict[str, float]:
    """Element symbol → count from a formula such as "C3N4", "C6 N8", "SiO2" or "Cu Sn0.5".

    A missing count is 1; repeated symbols add up; "D" (deuterium) is accepted. Raises
    ``ValueError`` for anything else (parentheses, charges, unknown symbols, zero counts).
    """
    composition: dict[str, float] = {}
    text = formula.strip()
    pos = 0
    while pos < len(text):
        if text[pos] in " \t,":
            pos += 1
            continue
        match = _FORMULA_TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"cannot read a formula at {text[pos:]!r}")
        symbol, count = match.group(1), float(match.group(2) or 1.0)
        if symbol not in chemical_symbols[1:] and symbol != "D":
            raise ValueError(f"unknown element {symbol!r}")
        if count <= 0:
            raise ValueError(f"count of {symbol} must be > 0")
        composition[symbol] = composition.get(symbol, 0.0) + count
        pos = match.end()
    if not composition:
        raise ValueError("empty formula")
    return composition


def _format_composition(composition: Mapping[str, float]) -> str:
    return "".join(f"{s}{_format_number(float(c)).removesuffix('.0')}" for s, c in composition.items())


def _quantity(value: str) -> float:
    """A number, optionally followed by a unit that is not converted ("12.5 A^-1" → 12.5)."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(_NUMERIC)
    return float(match.group(1))


def _mode(value: str) -> str:
    mode = value.strip().lower()
    return {"x": "xray", "x-ray": "xray", "n": "neutron"}.get(mode, mode)


def _temperature_K(value: str) -> float:
    match = _TEMPERATURE.match(value.strip())
    if match is None:
        raise ValueError(_A_TEMPERATURE)
    return float(match.group(1)) + (273.15 if match.group(2) in ("C", "°C") else 0.0)


# header key (lower case) -> (metadata key, parser, what a value must look like); PDFgetX3's
# spellings and this module's (as in ExperimentalData.metadata) both work
_HEADER_SPEC: tuple[tuple[tuple[str, ...], str, Callable[[str], Any], str], ...] = (
    (("qmin", "q_min"), "q_min", _quantity, _NUMERIC),
    (("qmax", "q_max"), "q_max", _quantity, _NUMERIC),
    (("qmaxinst", "q_max_inst"), "q_max_inst", _quantity, _NUMERIC),
    (("rpoly", "r_poly"), "r_poly", _quantity, _NUMERIC),
    (("rmin", "r_min"), "r_min", _quantity, _NUMERIC),
    (("rmax", "r_max"), "r_max", _quantity, _NUMERIC),
    (("rstep", "r_step"), "r_step", _quantity, _NUMERIC),
    (("wavelength", "wavelength_a", "lambda"), "wavelength_A", _quantity, _NUMERIC),
    (("qdamp", "q_damp"), "q_damp", _quantity, _NUMERIC),
    (("qbroad", "q_broad"), "q_broad", _quantity, _NUMERIC),
    (("temperature", "temperature_k", "temp"), "temperature_K", _temperature_K, _A_TEMPERATURE),
    (("composition",), "composition", parse_composition, "a formula such as 'C3N4' or 'C6 N8'"),
    (("mode", "stype"), "mode", _mode, "a scattering mode"),
)
_HEADER_KEYS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    name: (meta, parse, what) for names, meta, parse, what in _HEADER_SPEC for name in names
}


def _header_entry(path: Path, lineno: int, text: str, metadata: dict[str, Any]) -> None:
    """Record a ``key = value`` header line. Comments (``#``, ``;``: a commented-out setting is
    not a setting), ``[section]`` lines and free text are skipped."""
    match = _KEY_VALUE.match(text)
    if match is None:
        return
    key, value = match.group(1).lower(), match.group(2).strip()
    metadata["header"][key] = value
    if key not in _HEADER_KEYS or not value:
        return
    meta_key, parse, what = _HEADER_KEYS[key]
    try:
        metadata[meta_key] = parse(value)
    except ValueError as err:
        detail = "" if str(err) == what else f" ({err})"
        raise ExperimentFileError(path, lineno,
                                  f"expected {what} for {key!r}, got {value!r}{detail}") from None


# ----------------------------------------------------------------------------- shared checks


def _check_function(function: str | None, path: str | os.PathLike | None = None) -> str:
    if function not in FUNCTIONS:
        message = f"unknown function {function!r}; expected one of {list(FUNCTIONS)}"
        raise ExperimentFileError(path, None, message) if path is not None else ValueError(message)
    return function


def _numbers(fields: list[str]) -> list[float] | None:
    try:
        return [float(f) for f in fields]
    except ValueError:
        return None


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:  # older PDFgetN/PDFgui files write Å in Latin-1
        return raw.decode("latin-1").splitlines()


def _finish(path: Path, function: str, rows: list[list[float]], linenos: list[int], n_lines: int,
            sigma_column: int | None, metadata: dict[str, Any]) -> ExperimentalData:
    """Check the rows (count, finite, increasing x, sigma > 0) and build the data."""
    if len(rows) < 2:
        raise ExperimentFileError(path, max(n_lines, 1),
                                  f"expected at least 2 data rows, found {len(rows)}")
    table = np.asarray(rows, dtype=np.float64)
    bad = ~np.isfinite(table).all(axis=1)
    if bad.any():
        raise ExperimentFileError(path, linenos[int(np.argmax(bad))],
                                  "expected finite numbers, got NaN or inf")
    x = table[:, 0]
    step = np.diff(x) <= 0
    if step.any():
        k = int(np.argmax(step)) + 1
        raise ExperimentFileError(path, linenos[k],
                                  f"expected x increasing, got {x[k]:g} after {x[k - 1]:g}")
    sigma = None
    if sigma_column is not None:
        sigma = table[:, sigma_column]
        if (sigma == 0).all():  # PDFgui and PDFgetN write dG = 0 where it is unknown
            sigma = None
        elif (sigma <= 0).any():
            k = int(np.argmax(sigma <= 0))
            raise ExperimentFileError(path, linenos[k], f"expected a positive sigma, got {sigma[k]:g}")
    return ExperimentalData(function, x, table[:, 1], sigma, metadata)


# ----------------------------------------------------------------------------- readers


def read_gr(path: str | os.PathLike, function: str | None = None) -> ExperimentalData:
    """Read a PDFgetX3 / PDFgetN / PDFgui ``.gr`` file (or PDFgetX3's ``.sq`` and ``.fq``).

    Header: ``key = value`` lines (``[section]`` lines and ``#`` comments skipped) up to a
    ``#### start data`` line, or up to the first numeric row where there is none. Recognised
    keys (either spelling): qmin/q_min, qmax/q_max, qmaxinst, rpoly, rmin, rmax, rstep (Å⁻¹ or Å),
    wavelength (Å), qdamp, qbroad, temperature (K, or "25 C"), composition (formula), mode or
    stype (x/xray/x-ray → "xray", n/neutron → "neutron"). Every key=value line is kept verbatim
    in ``metadata["header"]``.

    Data: 2–4 numeric columns, x, y [, dy] or x, y, dx, dy; an all-zero dy column means no
    sigma. ``function`` ("rdf", "G", "S", "F") defaults to the y label of the ``#L`` line
    (G → "G", g → "rdf", S → "S", F → "F") and then to the extension (.gr → G, .sq → S,
    .fq → F). r is in Å and Q in Å⁻¹; G(r) = 4πρr(g − 1) in Å⁻², F(Q) = Q(S − 1) in Å⁻¹.
    """
    path = Path(path)
    lines = _read_lines(path)
    marker = next((i + 1 for i, line in enumerate(lines) if _START_DATA.match(line.strip())), None)
    metadata: dict[str, Any] = {"source": str(path), "header": {}}
    labels: tuple[int, list[str]] | None = None
    rows: list[list[float]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if marker is not None and lineno <= marker:
            _header_entry(path, lineno, text, metadata)
            continue
        if not text:
            continue
        if text.startswith("#"):
            if text.startswith("#L") and not rows:
                labels = (lineno, text[2:].split())
            continue
        fields = text.split()
        values = _numbers(fields)
        if not rows and marker is None and _numbers(fields[:1]) is None:  # header without a marker
            _header_entry(path, lineno, text, metadata)
            continue
        if values is None or not 2 <= len(values) <= 4:
            raise ExperimentFileError(path, lineno, f"expected 2–4 numeric columns, got {text!r}")
        if rows and len(values) != len(rows[0]):
            raise ExperimentFileError(path, lineno, f"expected {len(rows[0])} numeric columns "
                                                    f"as on line {linenos[0]}, got {text!r}")
        rows.append(values)
        linenos.append(lineno)
    if labels is not None:
        metadata["labels"] = labels[1]
    function = _gr_function(path, function, labels)
    n_columns = len(rows[0]) if rows else 2
    return _finish(path, function, rows, linenos, len(lines), None if n_columns == 2 else n_columns - 1,
                   metadata)


def _gr_function(path: Path, function: str | None, labels: tuple[int, list[str]] | None) -> str:
    """The explicit function, else the #L y label's, else the extension's; checks the x label."""
    if function is not None:
        _check_function(function, path)
    elif labels is not None and len(labels[1]) >= 2:
        name = re.match(r"[A-Za-z]*", labels[1][1]).group(0)
        function = _LABEL_FUNCTION.get(name)
    if function is None:
        function = _SUFFIX_FUNCTION.get(path.suffix.lower())
    if function is None:
        where = labels[0] if labels is not None else None
        raise ExperimentFileError(path, where, f"expected a column label or extension naming one of "
                                               f"{list(FUNCTIONS)} (pass function=…)")
    if labels is not None and labels[1]:
        x_label = labels[1][0][:1]
        if (x_label == "r") != (function in REAL_SPACE) and x_label in "rQq":
            raise ExperimentFileError(path, labels[0], f"expected a grid for {function!r}, "
                                                       f"got column label {labels[1][0]!r}")
    return function


def _split_fields(text: str) -> list[str]:
    """Fields of a CSV/text row: ';' (then ',' is a decimal comma), else ',', else whitespace."""
    if ";" in text:
        fields = [f.strip().replace(",", ".") for f in text.split(";")]
    elif "," in text:
        fields = [f.strip() for f in text.split(",")]
    else:
        fields = text.split()
    while fields and not fields[-1]:
        fields.pop()
    return fields


def _length_scale(x_unit: str, function: str) -> float:
    """Å per unit of the x column's length (1/length for Q); checks the unit fits the function."""
    unit = x_unit.strip().lower().replace(" ", "").replace("⁻¹", "^-1")
    reciprocal = unit.startswith("1/") or unit.endswith(("^-1", "-1"))
    base = unit.removeprefix("1/").removesuffix("^-1").removesuffix("-1")
    scale = {"a": 1.0, "å": 1.0, "ang": 1.0, "angstrom": 1.0, "nm": 10.0}.get(base)
    if scale is None:
        raise ValueError(f"unknown x_unit {x_unit!r}; expected Å, nm, 1/Å or 1/nm")
    if reciprocal == (function in REAL_SPACE):
        raise ValueError(f"x_unit {x_unit!r} does not fit {function!r} "
                         f"(a function of {'r' if function in REAL_SPACE else 'Q'})")
    return scale


def read_columns(path: str | os.PathLike, function: str | None,
                 x_unit: str | None = None) -> ExperimentalData:
    """Read x, value [, sigma] columns from a text or CSV file.

    Separators: ';' (a ',' inside a field is then a decimal comma), ',', or whitespace. ``#``
    starts a comment; one header row of column names before the data is skipped (kept in
    ``metadata["columns"]``). ``function`` ("rdf", "G", "S", "F") is required: the file does not
    say. ``x_unit`` (default Å for r, Å⁻¹ for Q) may be "nm" or "1/nm": x is converted to Å or
    Å⁻¹, and G (nm⁻² with r in nm) and F (nm⁻¹ with Q in nm⁻¹) with their sigma are converted
    to Å⁻² and Å⁻¹ too; g and S are dimensionless. G(r) = 4πρr(g − 1), F(Q) = Q(S − 1).
    """
    path = Path(path)
    if function is None:
        raise ExperimentFileError(path, None, f"expected function= (one of {list(FUNCTIONS)}); "
                                              "a column file does not say what it holds")
    _check_function(function, path)
    scale = 1.0 if x_unit is None else _length_scale(x_unit, function)
    lines = _read_lines(path)
    metadata: dict[str, Any] = {"source": str(path)}
    rows: list[list[float]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = _split_fields(text)
        values = _numbers(fields)
        if values is None and not rows and "columns" not in metadata:
            metadata["columns"] = fields
            continue
        if values is None or len(values) not in (2, 3):
            raise ExperimentFileError(path, lineno, "expected 2 or 3 numeric columns "
                                                    f"(x, value[, sigma]), got {text!r}")
        if rows and len(values) != len(rows[0]):
            raise ExperimentFileError(path, lineno, f"expected {len(rows[0])} numeric columns "
                                                    f"as on line {linenos[0]}, got {text!r}")
        rows.append(values)
        linenos.append(lineno)
    data = _finish(path, function, rows, linenos, len(lines), 2 if rows and len(rows[0]) == 3 else None,
                   metadata)
    if x_unit is not None:
        metadata["x_unit"] = x_unit
        value_scale = {"G": scale ** -2, "F": 1.0 / scale}.get(function, 1.0)  # per nm → per Å
        data.x = data.x * scale if function in REAL_SPACE else data.x / scale
        data.values = data.values * value_scale
        data.sigma = None if data.sigma is None else data.sigma * value_scale
    return data


def read_experiment(path: str | os.PathLike, function: str | None = None) -> ExperimentalData:
    """Read ``path`` by its extension: .gr/.sq/.fq/.iq with :func:`read_gr`, .csv/.txt/.dat/.xy/.tsv
    with :func:`read_columns` (which needs ``function``)."""
    suffix = Path(path).suffix.lower()
    if suffix in _PDF_SUFFIXES:
        return read_gr(path, function)
    if suffix in _COLUMN_SUFFIXES:
        return read_columns(path, function)
    known = list(_PDF_SUFFIXES + _COLUMN_SUFFIXES)
    raise ExperimentFileError(path, None, f"expected an extension in {known}, got {suffix!r}")


# ----------------------------------------------------------------------------- writer


def _format_number(value: float) -> str:
    return repr(float(value))  # shortest string that reads back to the same float64


def write_gr(path: str | os.PathLike, data: ExperimentalData,
             header: Mapping[str, Any] | None = None) -> Path:
    """Write ``data`` in the PDFgetX3 layout :func:`read_gr` reads, atomically; returns the path.

    ``header`` entries become ``key = value`` lines in a ``[DEFAULT]`` section, in order; use the
    PDFgetX3 names (qmin, qmax, mode, composition, …) or this module's (q_min, temperature_K, …).
    Floats are written exactly; ``composition`` may be a dict (symbol → count); ``None`` values
    are skipped. Columns: x, value and, where ``data.sigma`` is set, sigma; the ``#L`` labels
    name the function (r/G, r/g, Q/S, Q/F) so the file reads back whatever its extension.
    """
    lines = ["[DEFAULT]", "", f"# written by difftre_torch.experiment.readers: {data.function}"]
    for key, value in (header or {}).items():
        if value is None:
            continue
        if isinstance(value, Mapping) and str(key).lower() == "composition":
            value = _format_composition(value)
        elif isinstance(value, (float, np.floating)):
            value = _format_number(value)
        text = f"{key} = {value}"
        if _KEY_VALUE.match(text) is None or "\n" in text or "\r" in text or isinstance(value, Mapping):
            raise ValueError(f"header entry {key!r}: {value!r} cannot be one 'key = value' line")
        lines.append(text)
    labels = _COLUMN_LABELS[data.function]
    columns = [data.x, data.values] + ([data.sigma] if data.sigma is not None else [])
    lines += ["", "#### start data", "#S 1", "#L " + "  ".join(labels[:len(columns)])]
    lines += ["  ".join(_format_number(v) for v in row) for row in zip(*(c.tolist() for c in columns))]
    return atomic_write_text(path, "\n".join(lines) + "\n")
