"""Interlayer binding curve of a layered cell: energy per atom against interlayer spacing.

``python -m recipes.world.binding [--out data/world/binding_curve.json] [--spacings ...]``

Definition (units: Å, meV/atom)
-------------------------------
For a cell of ``layers`` layers stacked along its third cell vector (cell vectors as rows), the
layers are moved rigidly apart along c at a fixed in-plane cell (a₁, a₂ unchanged): the cell
becomes c' = layers · d along the direction of a₃ (:func:`recipes.world.structures.with_spacing`
with ``in_plane_scale = 1``), each layer's centre goes to fractional height k/layers of the new
cell and every atom keeps its Cartesian offset from its layer's centre, so the layers themselves
(buckling included) are not strained. The curve is

    ΔE(d) = [E(d) − E(d_ref)] / N · 1000        (meV/atom)

with N the number of atoms and d_ref = ``reference_spacing_A`` (8 Å: the layers are then ~5 Å
further apart than at contact and the short-ranged teacher sees isolated sheets; D3's r⁻⁶ tail
still binds ≈ 1 meV/atom there, so reality's depth is relative to 8 Å, not to infinity). The
binding energy per atom is −min ΔE; its position is the interlayer spacing at the minimum.

Minimum: a cubic fitted by least squares to the (up to) five grid points around the grid
minimum, its stationary point with positive curvature inside those points; a parabola when fewer
points are available (see :func:`curve_minimum`).

The CLI computes the teacher's and reality's curves (:mod:`recipes.world.calculators`) on
reality's relaxed 28-atom unit (``data/world/structures/reality_unit.extxyz``) and on the
teacher's, and writes one JSON file. The g-C3N4 recipe calls :func:`binding_curve` with NequIP
models to compare their curves with these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.io import read

from difftre_torch.environment import package_versions
from recipes.world.structures import with_spacing

SPACINGS_A = tuple(float(x) for x in np.round(np.arange(2.8, 4.55, 0.1), 2)) + (4.75, 5.0, 5.5, 6.0, 7.0)
"""Default grid of interlayer spacings (Å): 0.1 Å steps over 2.8–4.5 (both worlds' minima,
3.3–4.0 Å, and the repulsive wall), then a coarser tail to 7 Å."""
REFERENCE_SPACING_A = 8.0
STRUCTURES = Path("data/world/structures")
COMMAND = "python -m recipes.world.binding"
_VERSIONED = ("chgnet", "dftd3", "ase", "numpy", "torch")


def _layer_planes(atoms: Atoms, layers: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, offset) per atom: fractional height z = n/layers + offset along a₃, n the nearest
    layer plane counted without wrapping (an atom at z = 0.99 of layer 0 has n = layers) and
    offset in (−1/(2·layers), 1/(2·layers)]."""
    frac_z = atoms.cell.scaled_positions(atoms.positions)[:, 2]
    n = np.rint(frac_z * layers).astype(int)
    return n, frac_z - n / layers


def layer_index(atoms: Atoms, layers: int = 2) -> np.ndarray:
    """Layer of each atom, shape [N] ints in 0..layers−1: the nearest of the fractional heights
    k/layers along a₃, periodically (so an atom at fractional z = 1.0 belongs to layer 0)."""
    return _layer_planes(atoms, layers)[0] % layers


def rigid_spacing(atoms: Atoms, spacing_A: float, layers: int = 2) -> Atoms:
    """Copy of ``atoms`` with its ``layers`` layers ``spacing_A`` apart, moved rigidly at fixed a₁, a₂.

    The cell is that of ``with_spacing(atoms, spacing_A, 1.0, layers)`` (c = layers · spacing_A
    along a₃'s direction). Each atom keeps its in-plane position and its Cartesian offset from
    its layer's plane (fractional height n/layers), and the plane moves with the cell: an atom
    at r = p + (n/layers + δ)·a₃ goes to p + (n/layers)·a₃' + δ·a₃, i.e. r + (n/layers)(a₃' − a₃).
    """
    n, _ = _layer_planes(atoms, layers)
    out = with_spacing(atoms, spacing_A, in_plane_scale=1.0, layers=layers)
    delta_c = out.cell.array[2] - atoms.cell.array[2]
    out.positions = atoms.positions + np.outer(n / layers, delta_c)
    return out


def energy_eV(calc, atoms: Atoms) -> float:
    """``calc``'s potential energy of a copy of ``atoms`` (eV); ``atoms`` keeps its own calculator."""
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def binding_curve(calc, unit: Atoms, spacings_A: Sequence[float],
                  reference_spacing_A: float = REFERENCE_SPACING_A) -> np.ndarray:
    """ΔE(d) in meV/atom at each spacing of ``spacings_A`` (Å), relative to ``reference_spacing_A``.

    ``calc``: any ASE calculator (energies in eV); ``unit``: a two-layer cell stacked along a₃
    (cell rows), moved rigidly by :func:`rigid_spacing`. Returns shape [len(spacings_A)], float64.
    """
    n_atoms = len(unit)
    reference = energy_eV(calc, rigid_spacing(unit, reference_spacing_A))
    energies = [energy_eV(calc, rigid_spacing(unit, float(d))) for d in spacings_A]
    return (np.asarray(energies, dtype=np.float64) - reference) / n_atoms * 1e3


def curve_minimum(spacings_A: Sequence[float], energies_meV: Sequence[float], window: int = 2) -> dict:
    """Position (Å) and depth (meV/atom, positive = bound) of the minimum of a sampled curve.

    A cubic (≥ 5 points) or parabola (3–4 points) is fitted to the grid minimum and up to
    ``window`` points on each side; its stationary point with positive curvature inside the
    fitted points is the minimum. Falls back to the grid minimum (``"fit": "grid"``) when the
    grid minimum sits at the end of the grid or no such point exists.
    """
    d = np.asarray(spacings_A, dtype=float)
    e = np.asarray(energies_meV, dtype=float)
    order = np.argsort(d)
    d, e = d[order], e[order]
    k = int(np.argmin(e))
    grid = {"spacing_A": float(d[k]), "depth_meV_per_atom": float(-e[k]), "fit": "grid",
            "grid_spacing_A": float(d[k]), "grid_depth_meV_per_atom": float(-e[k])}
    lo, hi = max(0, k - window), min(len(d), k + window + 1)
    if k in (0, len(d) - 1) or hi - lo < 3:
        return grid
    degree = 3 if hi - lo >= 5 else 2
    poly = np.polynomial.Polynomial.fit(d[lo:hi], e[lo:hi], degree)
    candidates = [float(r.real) for r in poly.deriv().roots() if abs(r.imag) < 1e-12]
    candidates = [x for x in candidates if d[lo] <= x <= d[hi - 1] and poly.deriv(2)(x) > 0]
    if not candidates:
        return grid
    x = min(candidates, key=lambda c: poly(c))
    return {**grid, "spacing_A": x, "depth_meV_per_atom": float(-poly(x)),
            "fit": f"{'cubic' if degree == 3 else 'parabola'} through {hi - lo} points "
                   f"{d[lo]:.2f}-{d[hi - 1]:.2f} A"}


def versions() -> dict[str, str]:
    """Installed versions of the packages that determine the curves."""
    return package_versions(_VERSIONED)


def _unit(path: Path) -> Atoms:
    atoms = read(path)
    atoms.calc = None
    return atoms


def compute(structures: Path, spacings_A: Sequence[float], reference_spacing_A: float,
            device: str | None = None) -> dict:
    """Teacher and reality curves on reality's and the teacher's relaxed units (the JSON dict)."""
    from recipes.world import calculators

    t0 = time.perf_counter()
    calcs = {"teacher": calculators.teacher(device), "reality": calculators.reality(device)}
    spacings = [float(x) for x in spacings_A]
    result: dict = {"spacing_A": spacings}
    minima: dict = {}
    for unit_name in ("reality", "teacher"):  # reality's unit first: the headline curves
        path = structures / f"{unit_name}_unit.extxyz"
        unit = _unit(path)
        curves = {name: binding_curve(calc, unit, spacings, reference_spacing_A)
                  for name, calc in calcs.items()}
        block = {f"{name}_meV_per_atom": [round(float(x), 4) for x in curve]
                 for name, curve in curves.items()}
        mins = {name: curve_minimum(spacings, curve) for name, curve in curves.items()}
        cell = unit.cell.cellpar()
        structure = {"file": str(path), "atoms": len(unit), "formula": unit.get_chemical_formula(),
                     "a_A": float(np.mean(cell[:2])), "relaxed_spacing_A": float(cell[2] / 2.0)}
        if unit_name == "reality":
            result.update(block)
            minima = mins
            result["structure"] = structure
        else:
            result["on_teacher_unit"] = {**block, "minimum": mins, "structure": structure}
    result["minimum"] = minima
    result["reference_spacing_A"] = reference_spacing_A
    result["method"] = (
        "two AB-stacked layers moved rigidly along c at the unit's fixed in-plane cell "
        "(recipes.world.binding.rigid_spacing); single-point energies, no relaxation; "
        "dE = (E(d) - E(d_ref))/N in meV/atom; teacher = CHGNet 0.3.0, reality = CHGNet + "
        "DFT-D3(BJ, PBE); minimum from a cubic fit to the 5 grid points around the grid minimum; "
        "depth = -dE at the minimum (positive = bound)")
    result["command"] = COMMAND
    result["versions"] = versions()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/world/binding_curve.json")
    parser.add_argument("--structures", default=str(STRUCTURES))
    parser.add_argument("--spacings", type=float, nargs="*", default=list(SPACINGS_A),
                        help="interlayer spacings, Å")
    parser.add_argument("--reference", type=float, default=REFERENCE_SPACING_A,
                        help="reference spacing, Å")
    args = parser.parse_args(argv)
    from difftre_torch.checkpoint import atomic_write_json
    from recipes.world import calculators

    calculators.set_threads()
    result = compute(Path(args.structures), args.spacings, args.reference)
    given = sys.argv[1:] if argv is None else list(argv)
    result["command"] = " ".join([COMMAND, *given])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(json.dumps({"minimum": result["minimum"], "wall_s": result["wall_s"]}, indent=1), flush=True)
    return result


if __name__ == "__main__":
    main()
