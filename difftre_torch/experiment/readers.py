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

What a file declares wins over nothing, and must agree with what a caller asks: the function is
declared by the y label of a ``#L`` line (``G(...)`` → G, ``g`` → rdf, ``S`` → S, ``F`` → F) or
by a CSV header's second column name (``g``, ``G_per_A2``, ``S``, ``F(Q)``, …); a ``function=``
that contradicts it is refused. The extension (.gr → G, .sq → S, .fq → F) is only a default when
neither the file nor the caller says. Every data row keeps its file line
(``metadata["lines"]``) so later checks name it.
"""

from __future__ import annotations

import codecs
import os
import re
from array import array
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from difftre_torch.checkpoint import atomic_write_text
from difftre_torch.experiment.checks import REAL_SPACE, column_name
from difftre_torch.experiment.data import FUNCTIONS, ExperimentalData, check_function
from difftre_torch.experiment.errors import ExperimentFileError
from difftre_torch.experiment.header import KEY_VALUE, format_composition, header_entry, parse_composition
from difftre_torch.experiment.target import Target

_SUFFIX_FUNCTION = {".gr": "G", ".sq": "S", ".fq": "F"}
_PDF_SUFFIXES = (".gr", ".sq", ".fq", ".iq")
_COLUMN_SUFFIXES = (".csv", ".txt", ".dat", ".xy", ".tsv")
_LABEL_FUNCTION = {"G": "G", "Gr": "G", "g": "rdf", "gr": "rdf", "rdf": "rdf", "S": "S", "Sq": "S", "SQ": "S",
                   "F": "F", "Fq": "F", "FQ": "F"}
_LABEL_GRID = {"r": "r", "Q": "Q", "q": "Q"}
_COLUMN_LABELS = {  # function -> (x, value, sigma) labels in PDFgetX3's LaTeX style
    "rdf": (r"r($\AA$)", "g", "dg"),
    "G": (r"r($\AA$)", r"G($\AA^{-2}$)", r"dG($\AA^{-2}$)"),
    "S": (r"Q($\AA^{-1}$)", "S", "dS"),
    "F": (r"Q($\AA^{-1}$)", r"F($\AA^{-1}$)", r"dF($\AA^{-1}$)"),
}
_START_DATA = re.compile(r"^#+\s*start\s+data", re.IGNORECASE)
_LABEL_STEM = re.compile(r"[_(\[\s/$]")

__all__ = ["FUNCTIONS", "ExperimentFileError", "ExperimentalData", "load_target", "parse_composition",
           "read_columns", "read_experiment", "read_gr", "write_gr"]


def load_target(path: str | os.PathLike, *, name: str, observable: str, function: str | None = None,
                x_range: Sequence[float] | None = None, use_sigma: bool = True, sigma_floor: float = 0.0,
                weight: float = 1.0, state_point: str | None = None,
                options: Mapping[str, Any] | None = None) -> Target:
    """A target from an experiment file, as a job entry describes it: :func:`read_experiment`
    (``function`` must agree with what the file declares), cropped to ``x_range``, then
    :meth:`ExperimentalData.to_target` (``observable`` must be the file's function; σ by
    ``use_sigma``/``sigma_floor``; ``options`` must agree with the header)."""
    data = read_experiment(path, function=function).crop(x_range)
    return data.to_target(name, weight, state_point, observable=observable, use_sigma=use_sigma,
                          sigma_floor=sigma_floor, **dict(options or {}))


# ----------------------------------------------------------------------------- shared checks


def _numbers(fields: list[str]) -> list[float] | None:
    try:
        return [float(f) for f in fields]
    except ValueError:
        return None


def _encoding(path: Path) -> str:
    """UTF-8 if the file decodes as such (``utf-8-sig``: a leading byte-order mark, as some
    spreadsheet programs write, is dropped), else Latin-1 (older PDFgetN/PDFgui files write Å in
    it); checked in 1 MiB chunks, so a long file is never held in memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8-sig"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of the file, streamed (any of \\n, \\r\\n, \\r ends a line)."""
    with open(path, encoding=_encoding(path), newline=None) as handle:
        yield from enumerate(handle, start=1)


def _label_stem(label: str) -> str:
    """"G" from "G($\\AA^{-2}$)", "G_per_A2", "G(r)"; "r" from "r_A"."""
    return _LABEL_STEM.split(label.strip(), maxsplit=1)[0]


def _declared(path: Path, function: str | None, labels: list[str] | None, line: int | None, kind: str,
              metadata: dict[str, Any]) -> str | None:
    """The function: the file's declaration (y label ``labels[1]``) where it has one, checked
    against ``function`` and the x label; else ``function``. Records ``metadata["declared"]``."""
    if function is not None:
        check_function(function, path)
    if not labels:
        return function
    declared = _LABEL_FUNCTION.get(_label_stem(labels[1])) if len(labels) >= 2 else None
    if declared is not None:
        where = f"#L label '{labels[1]}'" if kind == "#L label" else f"column 2 header '{labels[1]}'"
        metadata["declared"] = {"function": declared, "field": where, "line": line}
        if function is not None and function != declared:
            raise ExperimentFileError(path, line, f"expected function {declared!r} (what the file declares) or "
                                      f"none, got {function!r}", field=where)
    function = declared or function
    grid = _LABEL_GRID.get(_label_stem(labels[0]))
    if function is not None and grid is not None and (grid == "r") != (function in REAL_SPACE):
        raise ExperimentFileError(path, line, f"expected a grid for {function!r}, got column label {labels[0]!r}",
                                  field=f"{kind} '{labels[0]}'" if kind == "#L label"
                                  else f"column 1 header '{labels[0]}'")
    return function


def _finish(path: Path, function: str, table: np.ndarray, linenos: np.ndarray, n_lines: int,
            sigma_column: int | None, metadata: dict[str, Any]) -> ExperimentalData:
    """Check the rows (count, finite x and values, strictly increasing x) and build the data;
    σ is kept as read (its use is decided when a target is made)."""
    if table.shape[0] < 2:
        raise ExperimentFileError(path, max(n_lines, 1), f"expected at least 2 data rows, found {table.shape[0]}")
    metadata.update(lines=linenos, n_columns=table.shape[1], sigma_column=sigma_column)
    for k in range(2):
        bad = ~np.isfinite(table[:, k])
        if bad.any():
            i = int(np.argmax(bad))
            raise ExperimentFileError(path, int(linenos[i]), f"expected a finite number, got {float(table[i, k])} "
                                      f"({int(bad.sum())} such rows)", field=column_name(metadata, function, k))
    x = table[:, 0]
    step = np.diff(x)
    if (step <= 0).any():
        i = int(np.argmax(step <= 0)) + 1
        what = "a duplicate" if step[i - 1] == 0 else "a decrease"
        raise ExperimentFileError(path, int(linenos[i]), f"expected x increasing, got {x[i]:g} after {x[i - 1]:g} "
                                  f"(line {int(linenos[i - 1])}): {what}", field=column_name(metadata, function, 0))
    sigma = None if sigma_column is None else table[:, sigma_column].copy()
    return ExperimentalData(function, x.copy(), table[:, 1].copy(), sigma, metadata)


# ----------------------------------------------------------------------------- readers


def read_gr(path: str | os.PathLike, function: str | None = None) -> ExperimentalData:
    """Read a PDFgetX3 / PDFgetN / PDFgui ``.gr`` file (or PDFgetX3's ``.sq`` and ``.fq``).

    Header: ``key = value`` lines (``[section]`` lines and ``#`` comments skipped) up to a
    ``#### start data`` line, or up to the first numeric row where there is none. Recognised
    keys (either spelling): qmin/q_min, qmax/q_max, qmaxinst, rpoly, rmin, rmax, rstep (Å⁻¹ or Å),
    wavelength (Å), qdamp, qbroad, temperature (K, or "25 C"), composition (formula), mode or
    stype (x/xray/x-ray → "xray", n/neutron → "neutron"; any other mode is refused). Every
    key=value line is kept verbatim in ``metadata["header"]``.

    Data: 2–4 numeric columns, x, y [, dy] or x, y, dx, dy; dy is kept as read (zeros too).
    ``function`` ("rdf", "G", "S", "F"): the ``#L`` line's y label declares it (G → "G",
    g → "rdf", S → "S", F → "F") and a different ``function`` is refused; without such a label
    ``function`` stands, and without it the extension (.gr → G, .sq → S, .fq → F). r is in Å
    and Q in Å⁻¹; G(r) = 4πρr(g − 1) in Å⁻², F(Q) = Q(S − 1) in Å⁻¹.
    """
    path = Path(path)
    marker = next((k for k, line in _lines(path)
                   if line.lstrip().startswith("#") and _START_DATA.match(line.strip())), None)
    metadata: dict[str, Any] = {"source": str(path), "header": {}, "header_lines": {}, "header_keys": {}}
    labels: tuple[int, list[str]] | None = None
    flat = array("d")
    linenos = array("q")
    n_columns = lineno = 0
    for lineno, line in _lines(path):
        text = line.strip()
        if marker is not None and lineno <= marker:
            header_entry(path, lineno, text, metadata)
            continue
        if not text:
            continue
        if text[0] == "#":
            if text.startswith("#L") and not linenos:
                labels = (lineno, text[2:].split())
            continue
        fields = text.split()
        values = _numbers(fields)
        if not linenos and marker is None and _numbers(fields[:1]) is None:  # header without a marker
            header_entry(path, lineno, text, metadata)
            continue
        if values is None or not 2 <= len(values) <= 4:
            raise ExperimentFileError(path, lineno, f"expected 2–4 numeric columns, got {text!r}")
        if not linenos:
            n_columns = len(values)
        elif len(values) != n_columns:
            raise ExperimentFileError(path, lineno, f"expected {n_columns} numeric columns "
                                                    f"as on line {linenos[0]}, got {text!r}")
        flat.extend(values)
        linenos.append(lineno)
    if labels is not None:
        metadata["labels"] = labels[1]
    function = _declared(path, function, labels[1] if labels else None, labels[0] if labels else None,
                         "#L label", metadata)
    if function is not None and "declared" not in metadata:
        metadata["function_from"] = "function argument"
    if function is None:
        function = _SUFFIX_FUNCTION.get(path.suffix.lower())
        metadata["function_from"] = f"extension {path.suffix}"
    if function is None:
        raise ExperimentFileError(path, labels[0] if labels else None, f"expected a column label or extension "
                                  f"naming one of {list(FUNCTIONS)} (pass function=…)")
    table = np.frombuffer(flat, dtype=np.float64).reshape(-1, max(n_columns, 2))
    return _finish(path, function, table, np.frombuffer(linenos, dtype=np.int64).copy(), lineno,
                   None if n_columns <= 2 else n_columns - 1, metadata)


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
    starts a comment; one header row of column names before the data is kept in
    ``metadata["columns"]``. ``function`` ("rdf", "G", "S", "F"): a header whose value column
    names a function (``g``, ``G_per_A2``, ``S``, ``F(Q)``, …) declares it, and a different
    ``function`` is refused; otherwise ``function`` is required. ``x_unit`` (default Å for r,
    Å⁻¹ for Q) may be "nm" or "1/nm": x is converted to Å or Å⁻¹, and G (nm⁻² with r in nm) and
    F (nm⁻¹ with Q in nm⁻¹) with their sigma are converted to Å⁻² and Å⁻¹ too; g and S are
    dimensionless. G(r) = 4πρr(g − 1), F(Q) = Q(S − 1).
    """
    path = Path(path)
    if function is not None:
        check_function(function, path)
    metadata: dict[str, Any] = {"source": str(path)}
    flat = array("d")
    linenos = array("q")
    n_columns, header_line, lineno = 0, None, 0
    for lineno, line in _lines(path):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = _split_fields(text)
        values = _numbers(fields)
        if values is None and not linenos and "columns" not in metadata:
            metadata["columns"], header_line = fields, lineno
            continue
        if values is None or len(values) not in (2, 3):
            raise ExperimentFileError(path, lineno, "expected 2 or 3 numeric columns "
                                                    f"(x, value[, sigma]), got {text!r}")
        if not linenos:
            n_columns = len(values)
        elif len(values) != n_columns:
            raise ExperimentFileError(path, lineno, f"expected {n_columns} numeric columns "
                                                    f"as on line {linenos[0]}, got {text!r}")
        flat.extend(values)
        linenos.append(lineno)
    function = _declared(path, function, metadata.get("columns"), header_line, "column", metadata)
    if function is None:
        raise ExperimentFileError(path, None, f"expected function= (one of {list(FUNCTIONS)}); "
                                              "a column file does not say what it holds")
    if "declared" not in metadata:
        metadata["function_from"] = "function argument"
    table = np.frombuffer(flat, dtype=np.float64).reshape(-1, max(n_columns, 2))
    data = _finish(path, function, table, np.frombuffer(linenos, dtype=np.int64).copy(), lineno,
                   2 if n_columns == 3 else None, metadata)
    if x_unit is not None:
        scale = _length_scale(x_unit, function)
        metadata["x_unit"] = x_unit
        value_scale = {"G": scale ** -2, "F": 1.0 / scale}.get(function, 1.0)  # per nm → per Å
        data.x = data.x * scale if function in REAL_SPACE else data.x / scale
        data.values = data.values * value_scale
        data.sigma = None if data.sigma is None else data.sigma * value_scale
    return data


def read_experiment(path: str | os.PathLike, function: str | None = None) -> ExperimentalData:
    """Read ``path`` by its extension: .gr/.sq/.fq/.iq with :func:`read_gr`, .csv/.txt/.dat/.xy/.tsv
    with :func:`read_columns` (which needs ``function`` unless its header names one)."""
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
            value = format_composition(value)
        elif isinstance(value, (float, np.floating)):
            value = _format_number(value)
        text = f"{key} = {value}"
        if KEY_VALUE.match(text) is None or "\n" in text or "\r" in text or isinstance(value, Mapping):
            raise ValueError(f"header entry {key!r}: {value!r} cannot be one 'key = value' line")
        lines.append(text)
    labels = _COLUMN_LABELS[data.function]
    columns = [data.x, data.values] + ([data.sigma] if data.sigma is not None else [])
    lines += ["", "#### start data", "#S 1", "#L " + "  ".join(labels[:len(columns)])]
    lines += ["  ".join(_format_number(v) for v in row) for row in zip(*(c.tolist() for c in columns))]
    return atomic_write_text(path, "\n".join(lines) + "\n")

