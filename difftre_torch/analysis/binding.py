"""Interlayer binding curve of a layered cell: energy per atom against interlayer spacing.

For a cell of ``layers`` layers stacked along its third cell vector (cell vectors as rows), the
layers are moved rigidly apart along c at a fixed in-plane cell (a₁, a₂ unchanged): a₃ becomes
layers · d long in its own direction, each layer's centre goes to fractional height k/layers of
the new cell and every atom keeps its Cartesian offset from its layer's centre, so the layers
themselves (buckling included) are not strained. The curve is

    ΔE(d) = [E(d) − E(d_ref)] / N · 1000        (meV/atom)

with N the number of atoms and d_ref the reference spacing. The binding energy per atom is
−min ΔE; its position is the interlayer spacing at the minimum (:func:`curve_minimum`: a cubic
fitted by least squares to the five grid points around the grid minimum).

Units: Å, eV in, meV/atom out. Works with any ASE calculator
(:class:`~difftre_torch.potentials.ase_calculator.PotentialCalculator` for a model).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

REFERENCE_SPACING_A = 8.0


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

    The cell's a₃ is scaled to length layers · spacing_A (a₁, a₂ unchanged). Each atom keeps its in-plane position and its Cartesian offset from
    its layer's plane (fractional height n/layers), and the plane moves with the cell: an atom
    at r = p + (n/layers + δ)·a₃ goes to p + (n/layers)·a₃' + δ·a₃, i.e. r + (n/layers)(a₃' − a₃).
    """
    n, _ = _layer_planes(atoms, layers)
    out = atoms.copy()
    cell = out.cell.array.copy()
    cell[2] *= layers * spacing_A / np.linalg.norm(cell[2])
    out.set_cell(cell, scale_atoms=True)
    delta_c = out.cell.array[2] - atoms.cell.array[2]
    out.positions = atoms.positions + np.outer(n / layers, delta_c)
    return out


def energy_eV(calc, atoms: Atoms) -> float:
    """``calc``'s potential energy of a copy of ``atoms`` (eV); ``atoms`` keeps its own calculator."""
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def binding_curve(calc, unit: Atoms, spacings_A: Sequence[float],
                  reference_spacing_A: float = REFERENCE_SPACING_A, layers: int = 2) -> np.ndarray:
    """ΔE(d) in meV/atom at each spacing of ``spacings_A`` (Å), relative to ``reference_spacing_A``.

    ``calc``: any ASE calculator (energies in eV); ``unit``: a cell of ``layers`` layers stacked along a₃
    (cell rows), moved rigidly by :func:`rigid_spacing`. Returns shape [len(spacings_A)], float64.
    """
    n_atoms = len(unit)
    reference = energy_eV(calc, rigid_spacing(unit, reference_spacing_A, layers))
    energies = [energy_eV(calc, rigid_spacing(unit, float(d), layers)) for d in spacings_A]
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
