"""Header lines of PDFgetX3 / PDFgetN / PDFgui files: ``key = value`` settings, parsed into the
metadata of :class:`~difftre_torch.experiment.data.ExperimentalData`.

Units: Q in Å⁻¹, r and wavelengths in Å, temperatures in K ("25 C" is converted); a unit after a
number is read past, not converted ("12.5 A^-1" → 12.5). ``mode``/``stype`` must name x-rays or
neutrons: other modes (sas, electron, …) have no weighting here and are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

from ase.data import chemical_symbols

from difftre_torch.experiment.errors import ExperimentFileError

KEY_VALUE = re.compile(r"^([A-Za-z][\w.\-]*)\s*=\s*(.*)$")
_MODES = {"x": "xray", "x-ray": "xray", "xray": "xray", "n": "neutron", "neutron": "neutron"}
_NUMERIC = "a number"
_A_TEMPERATURE = "a temperature such as '300', '300 K' or '25 C'"
_A_MODE = "a scattering mode: xray (x, x-ray) or neutron (n)"
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)\s*(\d+(?:\.\d*)?|\.\d+)?")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TEMPERATURE = re.compile(rf"^({_NUMBER})\s*(K|C|°C)?$")
_QUANTITY = re.compile(rf"^({_NUMBER})\s*[A-Za-zÅ$\\^{{}}()/\-\d]*$")  # a number, maybe a unit


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


def format_composition(composition: Mapping[str, float]) -> str:
    """"C3N4" from {"C": 3.0, "N": 4.0}; counts written exactly ("Sn0.5")."""
    return "".join(f"{s}{repr(float(c)).removesuffix('.0')}" for s, c in composition.items())


def quantity(value: str) -> float:
    """A number, optionally followed by a unit that is not converted ("12.5 A^-1" → 12.5)."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(_NUMERIC)
    return float(match.group(1))


def _mode(value: str) -> str:
    """"xray" or "neutron" from PDFgetX3's ``mode`` or PDFgui's ``stype`` (x, x-ray, n, …); any
    other mode (sas, electron, …) is refused: no weighting here describes it."""
    mode = _MODES.get(value.strip().lower())
    if mode is None:
        raise ValueError(_A_MODE)
    return mode


def _temperature_K(value: str) -> float:
    match = _TEMPERATURE.match(value.strip())
    if match is None:
        raise ValueError(_A_TEMPERATURE)
    return float(match.group(1)) + (273.15 if match.group(2) in ("C", "°C") else 0.0)


# header key (lower case) -> (metadata key, parser, what a value must look like); PDFgetX3's
# spellings and this module's (as in ExperimentalData.metadata) both work
_HEADER_SPEC: tuple[tuple[tuple[str, ...], str, Callable[[str], Any], str], ...] = (
    (("qmin", "q_min"), "q_min", quantity, _NUMERIC),
    (("qmax", "q_max"), "q_max", quantity, _NUMERIC),
    (("qmaxinst", "q_max_inst"), "q_max_inst", quantity, _NUMERIC),
    (("rpoly", "r_poly"), "r_poly", quantity, _NUMERIC),
    (("rmin", "r_min"), "r_min", quantity, _NUMERIC),
    (("rmax", "r_max"), "r_max", quantity, _NUMERIC),
    (("rstep", "r_step"), "r_step", quantity, _NUMERIC),
    (("wavelength", "wavelength_a", "lambda"), "wavelength_A", quantity, _NUMERIC),
    (("qdamp", "q_damp"), "q_damp", quantity, _NUMERIC),
    (("qbroad", "q_broad"), "q_broad", quantity, _NUMERIC),
    (("temperature", "temperature_k", "temp"), "temperature_K", _temperature_K, _A_TEMPERATURE),
    (("composition",), "composition", parse_composition, "a formula such as 'C3N4' or 'C6 N8'"),
    (("mode", "stype"), "mode", _mode, _A_MODE),
    (("rmax_transform",), "r_max_transform", quantity, _NUMERIC),  # write_gr's: g → S range, Å
)
_HEADER_KEYS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    name: (meta, parse, what) for names, meta, parse, what in _HEADER_SPEC for name in names
}


def header_entry(path: Path, lineno: int, text: str, metadata: dict[str, Any]) -> None:
    """Record a ``key = value`` header line. Comments (``#``, ``;``: a commented-out setting is
    not a setting), ``[section]`` lines and free text are skipped."""
    match = KEY_VALUE.match(text)
    if match is None:
        return
    key, value = match.group(1).lower(), match.group(2).strip()
    metadata["header"][key] = value
    metadata["header_lines"][key] = lineno
    if key not in _HEADER_KEYS or not value:
        return
    meta_key, parse, what = _HEADER_KEYS[key]
    try:
        metadata[meta_key] = parse(value)
    except ValueError as err:
        detail = "" if str(err) == what else f" ({err})"
        raise ExperimentFileError(path, lineno, f"expected {what}, got {value!r}{detail}", field=key) from None
    metadata["header_keys"][meta_key] = key
