"""Streaming reader of MD trajectories a user already has, for structural comparison against
experiment: one :class:`TrajectoryFrame` at a time, never the whole file in memory.

* LAMMPS text dumps (``dump custom`` / ``dump atom``, optionally ``.gz``): our own streaming
  parser, atoms sorted by id each frame;
* a LAMMPS data file: one frame, read by ``ase.io.read(format="lammps-data")``;
* anything else ``ase.io.iread`` reads (extxyz, XDATCAR, ...).

Conventions: lengths in Å (LAMMPS ``units metal`` or ``real``; ``lj`` lengths are not converted);
a cell is a 3x3 array whose ROWS are the cell vectors a, b, c; positions are Cartesian, in Å,
relative to the box origin of a LAMMPS box (xlo, ylo, zlo), so fractional coordinates s satisfy
``positions = s @ cell``. Only differences of positions matter for periodic observables.

LAMMPS restricted triclinic box (LAMMPS manual, Howto_triclinic). A dump's header
``ITEM: BOX BOUNDS xy xz yz pp pp pp`` is followed by three lines ``lo_bound hi_bound tilt``
giving the bounding box of the tilted cell and the tilts xy, xz, yz; the box itself is::

    xlo = xlo_bound - min(0, xy, xz, xy + xz)    xhi = xhi_bound - max(0, xy, xz, xy + xz)
    ylo = ylo_bound - min(0, yz)                 yhi = yhi_bound - max(0, yz)
    zlo = zlo_bound                              zhi = zhi_bound

with cell rows a = (xhi - xlo, 0, 0), b = (xy, yhi - ylo, 0), c = (xz, yz, zhi - zlo). An orthogonal
box (``ITEM: BOX BOUNDS pp pp pp``, lines ``lo hi``) is the case xy = xz = yz = 0. A general
triclinic box (``dump_modify triclinic/general yes``: ``ITEM: BOX BOUNDS abc origin``, lines
``ax ay az originx`` / ``bx by bz originy`` / ``cx cy cz originz``) gives the rows and the origin
directly; its atom coordinates are in the same (general) frame.

Coordinates, in order of preference: unwrapped ``xu yu zu``, wrapped ``x y z``, scaled unwrapped
``xsu ysu zsu``, scaled ``xs ys zs`` (r = origin + s @ cell). Boundary flags (pp, ff, ...) are not
used: the cell is taken as periodic.
"""

from __future__ import annotations

import gzip
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count, islice
from pathlib import Path

import numpy as np

from difftre_torch.frames import FramesError

DUMP_FORMAT = "lammps-dump-text"
DATA_FORMAT = "lammps-data"
MASS_TOLERANCE_AMU = 0.1
# (columns, scaled) in order of preference
COORDINATE_COLUMNS = ((("xu", "yu", "zu"), False), (("x", "y", "z"), False),
                      (("xsu", "ysu", "zsu"), True), (("xs", "ys", "zs"), True))
_TYPES_HINT = "give the element of each type (--types C N ..., element symbols in type order) or a data file"


class TrajectoryError(FramesError):
    """A trajectory (or a source of a type map) that cannot be read as asked. The message names the
    file and, for a LAMMPS dump, the frame (0-based index and timestep), the field or line, and what
    was expected."""


class TrajectoryWarning(UserWarning):
    """A trajectory read with a loss the caller should know of (a truncated last frame, skipped)."""


@dataclass
class TrajectoryFrame:
    """One frame of a trajectory.

    positions: [N, 3] float64, Å, Cartesian, relative to the box origin; for LAMMPS dumps the atoms
        are ordered by LAMMPS id, ascending.
    cell: [3, 3] float64, Å, rows are the cell vectors a, b, c.
    numbers: [N] int64 atomic numbers.
    index: 0-based index of the frame in its file (counting every complete frame, also those
        dropped by ``skip``/``every``).
    timestep: the LAMMPS timestep (``ITEM: TIMESTEP``), or ``atoms.info["timestep"]`` of a frame
        read by ASE; None where the file has none.
    """

    positions: np.ndarray
    cell: np.ndarray
    numbers: np.ndarray
    index: int
    timestep: int | None = None


# ---------------------------------------------------------------- type maps

def parse_type_map(types: Sequence[str] | str | None = None,
                   data_file: str | Path | None = None) -> dict[int, int] | None:
    """LAMMPS atom type (1-based) -> atomic number.

    ``types``: element symbols in type order (type 1 first), e.g. ``["C", "N"]`` -> {1: 6, 2: 7};
    a single string is split on whitespace. ``data_file``: a LAMMPS data file whose ``Masses``
    section gives each type's mass (amu); a comment naming an element after it, as LAMMPS and ASE
    write (``1 12.011 # C``), wins; otherwise the element whose standard mass
    (``ase.data.atomic_masses``) lies within 0.1 amu of it. A mass within 0.1 amu of no element, or
    of two (e.g. Ar 39.948 and Ca 40.078 for 40.01), is an error; name such a type with a comment
    or with ``types``. Both given: they must agree. Neither: None.
    """
    from_types = _map_from_symbols(types) if types is not None else None
    from_data = _map_from_masses(Path(data_file)) if data_file is not None else None
    if from_types is not None and from_data is not None and from_types != from_data:
        raise TrajectoryError(f"{data_file}: the types given ({_describe(from_types)}) disagree with its "
                              f"Masses section ({_describe(from_data)})")
    return from_types if from_types is not None else from_data


def _describe(type_map: dict[int, int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(f"{t}={chemical_symbols[z]}" for t, z in sorted(type_map.items()))


def _map_from_symbols(types: Sequence[str] | str) -> dict[int, int]:
    from ase.data import atomic_numbers

    symbols = types.split() if isinstance(types, str) else list(types)
    if not symbols:
        raise TrajectoryError("no element symbols given for the LAMMPS types")
    unknown = [s for s in symbols if atomic_numbers.get(s, 0) == 0]
    if unknown:
        raise TrajectoryError(f"types {symbols}: {unknown} are not element symbols (give them in type order, "
                              "type 1 first, e.g. C N)")
    return {t: atomic_numbers[s] for t, s in enumerate(symbols, start=1)}


_SECTION = re.compile(r"^(Atoms|Velocities|Masses|Ellipsoids|Lines|Triangles|Bodies|Bonds|Angles|Dihedrals|"
                      r"Impropers|.*Coeffs|.*Labels)$")


@dataclass
class _DataHeader:
    n_types: int | None
    origin: np.ndarray             # [3] Å: (xlo, ylo, zlo) or the general triclinic "abc origin"
    masses: list[tuple[int, str, str]]  # (line number, "type mass", comment after '#')


def _read_data_header(path: Path) -> _DataHeader:
    """The header and the ``Masses`` section of a LAMMPS data file, reading no further."""
    n_types, masses, section = None, [], None
    origin = np.zeros(3)
    with _open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            body, _, comment = raw.partition("#")
            text = " ".join(body.split())
            if not text or lineno == 1:   # the first line is a title
                continue
            if _SECTION.match(text):
                if section == "Masses":
                    break
                section = text
                continue
            if section is None:
                if m := re.match(r"^(\d+) atom types$", text):
                    n_types = int(m.group(1))
                elif m := re.match(r"^(\S+) \S+ ([xyz])lo \2hi$", text):
                    origin["xyz".index(m.group(2))] = _float(m.group(1), f"{path}: line {lineno}")
                elif m := re.match(r"^(\S+) (\S+) (\S+) abc origin$", text):
                    origin = np.array([_float(v, f"{path}: line {lineno}") for v in m.groups()])
            elif section == "Masses":
                masses.append((lineno, text, comment.strip()))
                if n_types is not None and len(masses) == n_types:
                    break
    return _DataHeader(n_types, origin, masses)


def _float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TrajectoryError(f"{where}: {text!r} is not a number") from None


def _map_from_masses(path: Path) -> dict[int, int]:
    from ase.data import atomic_masses, atomic_numbers, chemical_symbols

    header = _read_data_header(path)
    if not header.masses:
        raise TrajectoryError(f"{path}: no Masses section to take the elements from; {_TYPES_HINT}")
    if header.n_types is not None and len(header.masses) < header.n_types:
        raise TrajectoryError(f"{path}: the Masses section lists {len(header.masses)} of the "
                              f"{header.n_types} atom types")
    type_map = {}
    for lineno, text, comment in header.masses:
        fields = text.split()
        where = f"{path}: line {lineno}, Masses section"
        if len(fields) < 2 or not fields[0].isdigit():
            raise TrajectoryError(f"{where}: expected 'type mass' with a numeric type, found {text!r}")
        atom_type, mass = int(fields[0]), _float(fields[1], f"{where}, type {fields[0]}")
        named = comment.split()[0] if comment.split() else ""
        if atomic_numbers.get(named, 0) > 0:
            type_map[atom_type] = atomic_numbers[named]
            continue
        distance = np.abs(atomic_masses[1:] - mass)
        near = np.flatnonzero(distance <= MASS_TOLERANCE_AMU) + 1
        if len(near) != 1:
            if len(near) == 0:
                nearest = int(np.argmin(distance)) + 1
                why = (f"is within {MASS_TOLERANCE_AMU} amu of no element (nearest: "
                       f"{chemical_symbols[nearest]}, {atomic_masses[nearest]:.3f} amu)")
            else:
                why = (f"is within {MASS_TOLERANCE_AMU} amu of several elements ("
                       + ", ".join(f"{chemical_symbols[z]} {atomic_masses[z]:.3f}" for z in near) + " amu)")
            raise TrajectoryError(f"{where}, type {atom_type}: mass {mass} amu {why}; name its element in a "
                                  f"comment ('{atom_type} {fields[1]} # Symbol') or {_TYPES_HINT}")
        type_map[atom_type] = int(near[0])
    return type_map


# ---------------------------------------------------------------- files and formats

def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _resolve_format(path: Path, fmt: str | None) -> str | None:
    """DUMP_FORMAT, DATA_FORMAT, or the format to hand to ASE (None: ASE guesses)."""
    if not path.is_file():
        raise TrajectoryError(f"{path}: no such file")
    if fmt is not None:
        lowered = fmt.lower()
        if lowered in (DUMP_FORMAT, "lammps-dump", "lammpstrj"):
            return DUMP_FORMAT
        return DATA_FORMAT if lowered == DATA_FORMAT else fmt
    try:
        with _open_text(path) as fh:
            first = next((line.strip() for line in islice(iter(lambda: fh.readline(4096), ""), 64)
                          if line.strip()), "")
    except OSError as err:   # e.g. a .gz that is not gzip
        raise TrajectoryError(f"{path}: cannot be opened ({err})") from err
    # LAMMPS writes ITEM: UNITS / ITEM: TIME before the first ITEM: TIMESTEP with dump_modify units/time yes
    if first.startswith("ITEM:"):
        return DUMP_FORMAT
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    if Path(name).suffix in (".data", ".lmp") or name.startswith("data."):
        return DATA_FORMAT
    return None


def _check_stride(skip: int, every: int) -> None:
    if skip < 0 or every < 1:
        raise ValueError(f"skip must be >= 0 and every >= 1 (got skip={skip}, every={every})")


def iter_frames(path: str | Path, *, type_map: dict[int, int] | None = None, fmt: str | None = None,
                skip: int = 0, every: int = 1) -> Iterator[TrajectoryFrame]:
    """The frames of one trajectory file in time order, one at a time (memory: one frame).

    ``fmt`` None guesses: a file whose first non-empty line starts with ``ITEM:`` is a LAMMPS text
    dump (``.gz`` is decompressed on the fly); a name ending ``.data``/``.lmp`` or starting
    ``data.`` is a LAMMPS data file (one frame); anything else goes to ``ase.io.iread``.
    ``type_map`` (LAMMPS type -> atomic number, see :func:`parse_type_map`) names the ``type``
    column of a dump (an ``element`` column wins over it) and the types of a data file (default:
    its ``Masses``); ASE formats carry their own species. ``skip`` leading frames are dropped
    (equilibration), then every ``every``-th frame is kept; a dropped dump frame has its header
    checked but its atom lines only counted.

    Raises :class:`TrajectoryError` for a file that cannot be read as asked; a LAMMPS dump whose
    last frame is cut off (a run still writing, or killed) warns :class:`TrajectoryWarning` and
    ends before it.
    """
    path = Path(path)
    _check_stride(skip, every)
    kind = _resolve_format(path, fmt)
    if kind == DUMP_FORMAT:
        with _open_text(path) as fh:
            for record in _scan_dump(fh, path, keep=lambda i: i >= skip and (i - skip) % every == 0):
                if record.lines is not None:
                    yield _build_frame(path, record, type_map)
    elif kind == DATA_FORMAT:
        if skip == 0:
            yield _read_data_frame(path, type_map)
    else:
        yield from _iter_ase(path, kind, skip, every)


def count_frames(path: str | Path, fmt: str | None = None) -> int:
    """Number of frames :func:`iter_frames` yields with ``skip=0, every=1``, without building them.

    A LAMMPS dump: the ``ITEM: TIMESTEP`` lines, counted on raw bytes, less a truncated last frame
    (only the last frame is parsed, and only for completeness); a data file: 1; other formats:
    ``ase.io.iread``, which builds each frame.
    """
    path = Path(path)
    kind = _resolve_format(path, fmt)
    if kind == DUMP_FORMAT:
        return _count_dump(path)
    if kind == DATA_FORMAT:
        return 1
    return sum(1 for _ in _iter_ase(path, kind, 0, 1))


# ---------------------------------------------------------------- LAMMPS text dumps

@dataclass
class _DumpRecord:
    index: int
    timestep: int
    n_atoms: int
    cell: np.ndarray
    origin: np.ndarray
    columns: list[str]
    lines: list[str] | None    # the atom lines, None for a frame not kept
    first_line: int            # line number of the first atom line


class _Lines:
    """A text file's lines with 1-based line numbers."""

    def __init__(self, fh, lineno: int = 0):
        self.fh, self.lineno = fh, lineno

    def next(self) -> str | None:
        line = self.fh.readline()
        if not line:
            return None
        self.lineno += 1
        return line

    def take(self, n: int) -> list[str]:
        lines = list(islice(self.fh, n))
        self.lineno += len(lines)
        return lines


def _where(path: Path, index: int, timestep: int | None) -> str:
    return f"{path}: frame {index} (timestep {timestep})"


def _scan_dump(fh, path: Path, keep, *, warn: bool = True, start_index: int = 0,
               start_line: int = 0) -> Iterator[_DumpRecord]:
    """The complete frames of a dump, with the atom lines of those ``keep(index)`` wants."""
    lines = _Lines(fh, start_line)
    index, n_first, last_timestep, skipping = start_index, None, None, False
    frame: dict | None = None   # header fields of the frame being read

    def truncated(detail: str) -> None:
        if warn:
            n = frame.get("n_atoms")
            atoms = f"{detail} of its {n} atom lines" if n is not None else "none of its atom lines"
            warnings.warn(f"{_where(path, frame['index'], frame.get('timestep'))}: the file ends after {atoms}; "
                          "this truncated last frame was skipped", TrajectoryWarning, stacklevel=4)

    def value_line(field: str) -> str | None:
        line = lines.next()
        if line is not None and line.startswith("ITEM:"):
            raise TrajectoryError(f"{_where(path, index, frame.get('timestep'))}: line {lines.lineno}: the "
                                  f"{field} value is missing ('ITEM:' came early); the frame is cut off")
        return line

    while (line := lines.next()) is not None:
        text = line.strip()
        if not text.startswith("ITEM:"):
            if skipping or not text:
                continue
            found = f"line {lines.lineno}: expected an 'ITEM:' line, found {text[:60]!r}"
            if frame is not None:
                raise TrajectoryError(f"{_where(path, index, frame.get('timestep'))}: {found}")
            if index > start_index:
                raise TrajectoryError(f"{_where(path, index - 1, last_timestep)}: {found}: more atom lines than its "
                                      f"NUMBER OF ATOMS ({n_first})?")
            raise TrajectoryError(f"{path}: frame {index}: {found} (not a LAMMPS text dump?)")
        skipping = False
        item = " ".join(text[5:].split())
        if item.startswith("TIMESTEP"):
            if frame is not None:
                raise TrajectoryError(f"{_where(path, index, frame.get('timestep'))}: line {lines.lineno}: a new "
                                      "ITEM: TIMESTEP before this frame's ITEM: ATOMS block; the frame is cut off")
            frame = {"index": index}
            value = value_line("TIMESTEP")
            if value is None:
                truncated("none")
                return
            frame["timestep"] = _header_int(value, path, index, None, lines.lineno, "TIMESTEP")
        elif frame is None:
            if item.startswith(("NUMBER OF ATOMS", "BOX BOUNDS", "ATOMS")):
                raise TrajectoryError(f"{path}: frame {index}: line {lines.lineno}: 'ITEM: {item}' without an "
                                      "ITEM: TIMESTEP before it")
            skipping = True     # ITEM: UNITS, ITEM: TIME, ... between frames
        elif item.startswith("NUMBER OF ATOMS"):
            value = value_line("NUMBER OF ATOMS")
            if value is None:
                truncated("none")
                return
            n = _header_int(value, path, index, frame["timestep"], lines.lineno, "NUMBER OF ATOMS")
            if n_first is not None and n != n_first:
                raise TrajectoryError(f"{_where(path, index, frame['timestep'])}: line {lines.lineno}: NUMBER OF "
                                      f"ATOMS is {n}, frame {start_index} had {n_first}; the atom count must not "
                                      "change within a trajectory")
            n_first = frame["n_atoms"] = n
        elif item.startswith("BOX BOUNDS"):
            first = lines.lineno + 1
            box_lines = lines.take(3)
            if any(b.startswith("ITEM:") for b in box_lines):
                raise TrajectoryError(f"{_where(path, index, frame['timestep'])}: line {first}: BOX BOUNDS has "
                                      "fewer than 3 lines ('ITEM:' came early); the frame is cut off")
            if len(box_lines) < 3:
                truncated("none")
                return
            frame["cell"], frame["origin"] = _parse_box(item, box_lines, _where(path, index, frame["timestep"]),
                                                        first)
        elif item.startswith("ATOMS"):
            where = _where(path, index, frame["timestep"])
            missing = [label for label, key in (("NUMBER OF ATOMS", "n_atoms"), ("BOX BOUNDS", "cell"))
                       if key not in frame]
            if missing:
                raise TrajectoryError(f"{where}: line {lines.lineno}: ITEM: ATOMS before ITEM: {missing[0]}")
            n, columns, first = frame["n_atoms"], item.split()[1:], lines.lineno + 1
            atom_lines = lines.take(n)
            k = next((i for i, a in enumerate(atom_lines) if a.startswith("ITEM:")), None) \
                if "ITEM:" in "".join(atom_lines) else None
            if k is not None:
                raise TrajectoryError(f"{where}: line {first + k}: 'ITEM:' after {k} of its {n} atom lines "
                                      "(NUMBER OF ATOMS); the frame is cut off")
            if len(atom_lines) < n:
                truncated(str(len(atom_lines)))
                return
            if atom_lines and not atom_lines[-1].endswith("\n") and len(atom_lines[-1].split()) != len(columns):
                truncated(f"{n - 1} (and part of one)")   # the file ends inside the last line
                return
            yield _DumpRecord(index, frame["timestep"], n, frame["cell"], frame["origin"], columns,
                              atom_lines if keep(index) else None, first)
            index, last_timestep, frame = index + 1, frame["timestep"], None
        else:
            skipping = True     # an ITEM this reader does not need
    if frame is not None:
        truncated("none")


def _header_int(line: str, path: Path, index: int, timestep: int | None, lineno: int, field: str) -> int:
    try:
        return int(line.split()[0])
    except (ValueError, IndexError):
        raise TrajectoryError(f"{_where(path, index, timestep)}: line {lineno}: {field} must be an integer, "
                              f"found {line.strip()[:60]!r}") from None


def _parse_box(item: str, box_lines: list[str], where: str, first: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell [3, 3] rows a, b, c in Å, origin [3] Å) from an ``ITEM: BOX BOUNDS`` block."""
    flags = item.split()[2:]
    try:
        rows = [[float(v) for v in b.split()] for b in box_lines]
    except ValueError:
        raise TrajectoryError(f"{where}: lines {first}-{first + 2}: BOX BOUNDS must be numbers, found "
                              f"{[b.strip() for b in box_lines]}") from None
    widths = {len(r) for r in rows}
    if flags[:1] == ["abc"]:
        if widths != {4}:
            raise TrajectoryError(f"{where}: lines {first}-{first + 2}: BOX BOUNDS abc origin needs 4 numbers per "
                                  "line (ax ay az originx, ...)")
        table = np.array(rows)
        cell, origin = table[:, :3].copy(), table[:, 3].copy()
    else:
        if widths not in ({2}, {3}):
            raise TrajectoryError(f"{where}: lines {first}-{first + 2}: BOX BOUNDS needs 2 numbers per line "
                                  "(lo hi), or 3 for a triclinic box (lo_bound hi_bound tilt)")
        table = np.array(rows)
        tilt = {"xy": 0.0, "xz": 0.0, "yz": 0.0}
        if table.shape[1] == 3:
            labels = [f for f in flags if f in tilt]
            tilt.update(zip(labels if len(labels) == 3 else ["xy", "xz", "yz"], table[:, 2]))
        xy, xz, yz = tilt["xy"], tilt["xz"], tilt["yz"]
        xlo = table[0, 0] - min(0.0, xy, xz, xy + xz)
        xhi = table[0, 1] - max(0.0, xy, xz, xy + xz)
        ylo = table[1, 0] - min(0.0, yz)
        yhi = table[1, 1] - max(0.0, yz)
        zlo, zhi = table[2, 0], table[2, 1]
        cell = np.array([[xhi - xlo, 0.0, 0.0], [xy, yhi - ylo, 0.0], [xz, yz, zhi - zlo]])
        origin = np.array([xlo, ylo, zlo])
    if not np.linalg.det(cell) > 0:
        raise TrajectoryError(f"{where}: lines {first}-{first + 2}: BOX BOUNDS give a cell of zero or negative "
                              f"volume (rows {cell.tolist()})")
    return cell, origin


def _build_frame(path: Path, record: _DumpRecord, type_map: dict[int, int] | None) -> TrajectoryFrame:
    where = _where(path, record.index, record.timestep)
    columns, n = record.columns, record.n_atoms
    col = {name: j for j, name in enumerate(columns)}
    triple = next(((c, scaled) for c, scaled in COORDINATE_COLUMNS if all(k in col for k in c)), None)
    species = "element" if "element" in col else "type" if "type" in col else None
    if "id" not in col or species is None or triple is None:
        raise TrajectoryError(f"{where}: line {record.first_line - 1}: ITEM: ATOMS has columns {columns}; needed: "
                              "'id', 'type' or 'element', and one complete coordinate triple of xu yu zu / x y z / "
                              "xsu ysu zsu / xs ys zs")
    if species == "type" and type_map is None:
        raise TrajectoryError(f"{where}: the ITEM: ATOMS 'type' column has no elements and there is no "
                              f"'element' column; {_TYPES_HINT}")
    ncol = len(columns)
    tokens = "".join(record.lines).split()
    if len(tokens) != n * ncol:
        k, line = next((k, a) for k, a in enumerate(record.lines) if len(a.split()) != ncol)
        raise TrajectoryError(f"{where}: line {record.first_line + k}: {len(line.split())} values in an atom line, "
                              f"expected {ncol} for the ITEM: ATOMS columns '{' '.join(columns)}'")
    try:
        table = np.array(tokens, dtype=np.float64).reshape(n, ncol)   # an all-numeric dump: fast path
    except ValueError:
        table = None    # a string column (element, a label): convert the needed columns one by one

    def numeric(name: str) -> np.ndarray:
        if table is not None:
            return table[:, col[name]]
        values = tokens[col[name]::ncol]
        try:
            return np.array(values, dtype=np.float64)
        except ValueError:
            k = next(k for k, v in enumerate(values) if not _is_float(v))
            raise TrajectoryError(f"{where}: line {record.first_line + k}: column '{name}' is {values[k]!r}, "
                                  "not a number") from None

    ids = _integers(numeric("id"), "id", where, record.first_line)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    duplicated = np.unique(sorted_ids[1:][np.diff(sorted_ids) == 0])
    if duplicated.size:
        raise TrajectoryError(f"{where}: column 'id': duplicate atom ids {duplicated[:5].tolist()}")
    if species == "element":
        numbers = _element_numbers(np.array(tokens[col["element"]::ncol], dtype=str), where)
    else:
        numbers = _type_numbers(_integers(numeric("type"), "type", where, record.first_line), type_map, where)
    names, scaled = triple
    coordinates = np.column_stack([numeric(c) for c in names])
    bad = np.flatnonzero(~np.isfinite(coordinates).all(axis=1))
    if bad.size:
        raise TrajectoryError(f"{where}: line {record.first_line + bad[0]}: coordinates {' '.join(names)} are "
                              "not finite")
    positions = coordinates @ record.cell if scaled else coordinates - record.origin
    return TrajectoryFrame(positions=np.ascontiguousarray(positions[order]), cell=record.cell,
                           numbers=numbers[order], index=record.index, timestep=record.timestep)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _integers(values: np.ndarray, name: str, where: str, first_line: int) -> np.ndarray:
    integers = values.astype(np.int64)
    bad = np.flatnonzero(integers != values)
    if bad.size:
        raise TrajectoryError(f"{where}: line {first_line + bad[0]}: column '{name}' is {values[bad[0]]}, "
                              "not an integer")
    return integers


def _type_numbers(types: np.ndarray, type_map: dict[int, int], where: str) -> np.ndarray:
    present = np.unique(types)
    missing = [int(t) for t in present if int(t) not in type_map]
    if missing:
        raise TrajectoryError(f"{where}: column 'type': types {missing} are not in the type map "
                              f"({_describe(type_map)}); {_TYPES_HINT}")
    lookup = np.zeros(int(present.max()) + 1, dtype=np.int64)
    for t in present:
        lookup[t] = type_map[int(t)]
    return lookup[types]


def _element_numbers(symbols: np.ndarray, where: str) -> np.ndarray:
    from ase.data import atomic_numbers

    unique, inverse = np.unique(symbols, return_inverse=True)
    unknown = [str(s) for s in unique if atomic_numbers.get(str(s), 0) == 0]
    if unknown:
        raise TrajectoryError(f"{where}: column 'element': {unknown} are not element symbols")
    return np.array([atomic_numbers[str(s)] for s in unique], dtype=np.int64)[inverse.reshape(-1)]


def _count_dump(path: Path, chunk_bytes: int = 1 << 24) -> int:
    """``ITEM: TIMESTEP`` lines counted on raw bytes; the last frame is parsed for completeness."""
    pattern = b"\nITEM: TIMESTEP"
    n_timesteps, tail, tail_line = 0, None, 0
    newlines, previous = 0, b"\n"      # a newline before the file, so a first line can match
    with _open_binary(path) as fh:
        while chunk := fh.read(chunk_bytes):
            data = previous + chunk     # ``previous`` is shorter than the pattern: no match is counted twice
            before = newlines - previous.count(b"\n")   # newlines in the file before ``data``
            found = data.count(pattern)
            if found:
                n_timesteps += found
                at = data.rfind(pattern) + 1
                tail, tail_line = data[at:], before + data[:at].count(b"\n")
            elif tail is not None:
                tail += chunk
            newlines += chunk.count(b"\n")
            previous = data[-(len(pattern) - 1):]
    if not n_timesteps:
        return 0
    last = _scan_dump(io.StringIO(tail.decode("utf-8", errors="replace")), path, keep=lambda i: False,
                      warn=False, start_index=n_timesteps - 1, start_line=tail_line)
    return n_timesteps - 1 + sum(1 for _ in last)


# ---------------------------------------------------------------- LAMMPS data files and ASE formats

def _read_data_frame(path: Path, type_map: dict[int, int] | None) -> TrajectoryFrame:
    import ase.io

    header = _read_data_header(path)
    if type_map is None:
        type_map = _map_from_masses(path)
    try:
        atoms = ase.io.read(str(path), format="lammps-data", Z_of_type=type_map, units="metal")
    except KeyError as err:
        raise TrajectoryError(f"{path}: atom type {err.args[0]} is not in the type map ({_describe(type_map)}); "
                              f"{_TYPES_HINT}") from err
    except Exception as err:
        raise TrajectoryError(f"{path}: ase.io could not read it as a LAMMPS data file "
                              f"({type(err).__name__}: {err})") from err
    return TrajectoryFrame(positions=atoms.positions - header.origin, cell=np.array(atoms.cell.array, dtype=float),
                           numbers=atoms.numbers.astype(np.int64), index=0, timestep=None)


def _iter_ase(path: Path, fmt: str | None, skip: int, every: int) -> Iterator[TrajectoryFrame]:
    import ase.io

    def failed(err: Exception) -> TrajectoryError:
        return TrajectoryError(f"{path}: ase.io could not read it{f' as {fmt}' if fmt else ''} "
                               f"({type(err).__name__}: {err})")

    try:
        frames = ase.io.iread(str(path), index=slice(skip, None, every), format=fmt)
    except Exception as err:
        raise failed(err) from err
    for k in count():
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:
            raise failed(err) from err
        index = skip + k * every
        if atoms.cell.rank < 3:
            raise TrajectoryError(f"{path}: frame {index}: no periodic cell (cell {atoms.cell.tolist()}); periodic "
                                  "observables need one (extxyz: Lattice=\"...\")")
        timestep = atoms.info.get("timestep")
        yield TrajectoryFrame(positions=atoms.positions - atoms.get_celldisp().reshape(3),
                              cell=np.array(atoms.cell.array, dtype=float), numbers=atoms.numbers.astype(np.int64),
                              index=index, timestep=int(timestep) if isinstance(timestep, (int, np.integer)) else None)
