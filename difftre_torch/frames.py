"""Labelled frames from files, as ASE ``Atoms`` with a SinglePointCalculator (energy eV, forces
eV/Å, stress eV/Å³ in ASE's sign where the file has it).

* a file: anything ``ase.io`` reads (extxyz, ...); a compressed (x)yz file is decompressed in
  memory first (ase seeks inside the compressed stream once per frame, which grows with the
  square of the frames: 1631 frames of a 3 MB .extxyz.gz took 160 s, against 3 s decompressed);
(:func:`write_deepmd_npy` writes labelled frames the other way.)

* a folder: DeePMD-kit training data, ``deepmd/npy`` (``set.*/coord.npy``) or ``deepmd/raw``
  (``coord.raw``) systems, the folder itself or every system below it, read with dpdata. Types
  are named by the system's ``type_map.raw``, else by ``type_map`` (element symbols in type
  order; a DeePMD model's own type map). DeePMD's virial W (eV) becomes the stress
  σ = −W/V (ASE sign, eV/Å³).

``max_frames`` keeps a random subset (seeded, file order kept). DeePMD systems are counted
first (``coord.npy`` memory-mapped), then read one at a time and only the chosen frames become
``Atoms``, so a large set is never held whole beyond its largest system; a file is read whole
by ase.io, then subsampled.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from pathlib import Path

import numpy as np
from ase import Atoms


class FramesError(ValueError):
    """A frames file or folder that cannot be read as asked; the message names it."""


def deepmd_systems(root: Path) -> list[Path]:
    """The DeePMD system folders at or below ``root`` (those holding ``type.raw``), sorted."""
    if (root / "type.raw").exists():
        return [root]
    return sorted(p.parent for p in root.rglob("type.raw"))


def _deepmd_format(system: Path) -> str:
    if any(system.glob("set.*/coord.npy")):
        return "deepmd/npy"
    if (system / "coord.raw").exists():
        return "deepmd/raw"
    raise FramesError(f"{system}: a DeePMD system folder (type.raw) without set.*/coord.npy or coord.raw")


def _system_type_map(system: Path, type_map: list[str] | None) -> list[str]:
    types = np.loadtxt(system / "type.raw", dtype=int, ndmin=1)
    file = system / "type_map.raw"
    names = file.read_text().split() if file.exists() else type_map
    if not names:
        raise FramesError(f"{system}: no type_map.raw, and no type map given (force_matching.type_map, or a "
                          "DeePMD model's own): the types cannot be named")
    if types.size and types.max() >= len(names):
        raise FramesError(f"{system}: type.raw uses type {int(types.max())} but the type map has {len(names)} "
                          f"names ({names})")
    from ase.data import atomic_numbers

    unknown = [n for n in names if n not in atomic_numbers or atomic_numbers[n] == 0]
    if unknown:
        raise FramesError(f"{system}: type names {unknown} are not element symbols; give force_matching.type_map "
                          "(element symbols in type order)")
    return list(names)


def read_deepmd(root: Path, type_map: list[str] | None = None, max_frames: int | None = None,
                seed: int = 0) -> list[Atoms]:
    """Every frame (or ``max_frames`` of them) of the DeePMD systems at or below ``root``."""
    import dpdata
    from ase.calculators.singlepoint import SinglePointCalculator

    systems = deepmd_systems(root)
    if not systems:
        raise FramesError(f"{root}: a folder, but no DeePMD system in it (no type.raw below it)")
    sizes = []
    for system in systems:
        fmt = _deepmd_format(system)
        sizes.append((system, fmt, _frame_count(system, fmt)))
    total = sum(n for _, _, n in sizes)
    keep = _subset(total, max_frames, seed)
    frames: list[Atoms] = []
    offset = 0
    for system, fmt, n in sizes:
        picked = keep[(keep >= offset) & (keep < offset + n)] - offset
        offset += n
        if not len(picked):
            continue
        names = _system_type_map(system, type_map)
        data = dpdata.LabeledSystem(str(system), fmt=fmt, type_map=names)
        if "energies" not in data.data or "forces" not in data.data:
            raise FramesError(f"{system}: no energy/force labels (energy.npy, force.npy)")
        symbols = [data["atom_names"][t] for t in data["atom_types"]]
        for k in picked:
            cell = data["cells"][k]
            atoms = Atoms(symbols=symbols, positions=data["coords"][k], cell=cell, pbc=not data.nopbc)
            results = {"energy": float(data["energies"][k]), "forces": data["forces"][k].copy()}
            if "virials" in data.data:
                results["stress"] = -data["virials"][k] / abs(np.linalg.det(cell))
            atoms.calc = SinglePointCalculator(atoms, **results)
            atoms.info["source_file"] = f"{system} frame {int(k)}"
            frames.append(atoms)
    return frames


def _frame_count(system: Path, fmt: str) -> int:
    if fmt == "deepmd/npy":
        return sum(int(np.load(f, mmap_mode="r").shape[0]) for f in sorted(system.glob("set.*/coord.npy")))
    with open(system / "coord.raw") as f:
        return sum(1 for line in f if line.strip())


def _subset(total: int, max_frames: int | None, seed: int) -> np.ndarray:
    if max_frames is None or max_frames >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=max_frames, replace=False))


def write_deepmd_npy(frames, out: str | Path, type_map: list[str] | tuple[str, ...]) -> list[Path]:
    """Labelled ASE frames as ``deepmd/npy`` system folders under ``out`` (dpdata, one per
    formula; dpdata turns ASE's stress into DeePMD's virial W = −Vσ); returns the folders."""
    import dpdata

    systems = dpdata.MultiSystems(type_map=list(type_map))
    for atoms in frames:
        systems.append(dpdata.LabeledSystem(atoms, fmt="ase/structure", type_map=list(type_map)))
    systems.to_deepmd_npy(str(out))
    return sorted(p for p in Path(out).iterdir() if p.is_dir())


def read_frames_file(path: Path, *, type_map: list[str] | None = None, max_frames: int | None = None,
                     seed: int = 0) -> list[Atoms]:
    """The frames of ``path`` (a file ase.io reads, or DeePMD system folders), see the module."""
    path = Path(path)
    if path.is_dir():
        return read_deepmd(path, type_map, max_frames, seed)
    from ase.io import read
    from ase.io.formats import filetype

    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    frames = None
    if path.suffix in openers:
        fmt = filetype(str(path), read=False)
        if fmt in ("extxyz", "xyz"):
            with openers[path.suffix](path, "rt", encoding="utf-8") as f:
                frames = read(io.StringIO(f.read()), index=":", format=fmt)
    if frames is None:
        frames = read(path, index=":")
    return [frames[k] for k in _subset(len(frames), max_frames, seed)]
