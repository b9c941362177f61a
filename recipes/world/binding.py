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

from difftre_torch.analysis.binding import REFERENCE_SPACING_A, binding_curve, curve_minimum
from difftre_torch.environment import package_versions

SPACINGS_A = tuple(float(x) for x in np.round(np.arange(2.8, 4.55, 0.1), 2)) + (4.75, 5.0, 5.5, 6.0, 7.0)
"""Default grid of interlayer spacings (Å): 0.1 Å steps over 2.8–4.5 (both worlds' minima,
3.3–4.0 Å, and the repulsive wall), then a coarser tail to 7 Å."""
STRUCTURES = Path("data/world/structures")
COMMAND = "python -m recipes.world.binding"
_VERSIONED = ("chgnet", "dftd3", "ase", "numpy", "torch")


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
