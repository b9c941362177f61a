"""Heptazine g-C3N4: the ideal layered crystal, its carbon-vacancy variant and supercells.

Construction (units: Å; cell vectors as rows, ASE convention)
-------------------------------------------------------------
One layer of heptazine-based ("melon-condensed") g-C3N4 is a hexagonal sheet of plane group
P-6m2 with one tri-s-triazine (heptazine, C6N7) unit and one three-fold bridging nitrogen per
cell: C6N8, 14 atoms (Kroke et al., New J. Chem. 26, 508 (2002), doi:10.1039/b111062b;
Wang et al., Nat. Mater. 8, 76 (2009), doi:10.1038/nmat2317).

The heptazine core is a 13-atom fragment of a honeycomb net of bond length ``d`` (three fused
hexagons sharing one central atom, the shape of phenalene). With the unit centred on the
lattice point:

* central N (N_c, three-fold, bonded to three C) at the origin;
* inner C (C_i) at distance d, at angles 90°, 210°, 330°;
* ring N (N_r, two-fold) at distance √3·d, at angles 90° ± 30° etc.;
* outer C (C_o) at distance 2d, at angles 30°, 150°, 270°, each bonded to two N_r and
  to one bridging N;
* the bridging N (N_b, three-fold, tertiary amine) at the triangle centre (2/3, 1/3) of the
  hexagonal cell a1 = a(1, 0, 0), a2 = a(-1/2, √3/2, 0), at distance a/√3 from the origin in
  direction 30°; it links the C_o of three heptazine units. The other triangle centre
  (1/3, 2/3) is the empty pore of the sheet.

Starting values: d = 1.35 Å (mean aromatic C–N bond) and a = 7.13 Å, which puts C_o–N_b at
a/√3 − 2d ≈ 1.42 Å (experimental bridge bond ~1.45 Å). These are only a start: every
structure the world uses is relaxed (cell and positions) with the teacher or with reality.

Stacking: AB, two layers per cell, the second shifted in-plane by fractional (1/3, 2/3) and
raised by c/2; c = 2 × interlayer spacing.

Carbon vacancy: one outer carbon C_o (the C bonded to the bridging N) is removed. Outer-carbon
(often called C2 or "N=C–N2") vacancies are the sites most often proposed for carbon-deficient
g-C3N4 (e.g. Li et al., Adv. Mater. 28, 6471 (2016), doi:10.1002/adma.201601567); removing it
leaves three under-coordinated N, the defect chemistry the user's model must handle.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

BOND_LENGTH_A = 1.35
LATTICE_A = 7.13
INTERLAYER_SPACING_A = 3.3


def heptazine_layer_xy(a_A: float = LATTICE_A, bond_A: float = BOND_LENGTH_A):
    """Symbols and in-plane Cartesian positions (Å) of one C6N8 layer cell.

    Returns ``(symbols, xy)`` with ``xy`` of shape [14, 2]; the hexagonal cell is
    a1 = a(1, 0), a2 = a(-1/2, √3/2).
    """
    def polar(r: float, deg: float) -> np.ndarray:
        t = np.deg2rad(deg)
        return np.array([r * np.cos(t), r * np.sin(t)])

    symbols: list[str] = ["N"]  # central N_c
    xy: list[np.ndarray] = [np.zeros(2)]
    for ang in (90.0, 210.0, 330.0):  # inner C
        symbols.append("C")
        xy.append(polar(bond_A, ang))
    for ang in (90.0, 210.0, 330.0):  # ring N: two per inner C, at ±30°
        for off in (-30.0, 30.0):
            symbols.append("N")
            xy.append(polar(np.sqrt(3.0) * bond_A, ang + off))
    for ang in (30.0, 150.0, 270.0):  # outer C
        symbols.append("C")
        xy.append(polar(2.0 * bond_A, ang))
    symbols.append("N")  # bridging N at the (2/3, 1/3) triangle centre
    xy.append(polar(a_A / np.sqrt(3.0), 30.0))
    return symbols, np.array(xy)


_LAYER_SITES = ["N_c"] + ["C_i"] * 3 + ["N_r"] * 6 + ["C_o"] * 3 + ["N_b"]


def gc3n4_unit_cell(
    a_A: float = LATTICE_A,
    spacing_A: float = INTERLAYER_SPACING_A,
    bond_A: float = BOND_LENGTH_A,
) -> Atoms:
    """AB-stacked heptazine g-C3N4, two layers, 28 atoms (C12N16), periodic in 3D.

    Cell rows: a1 = a(1, 0, 0), a2 = a(-1/2, √3/2, 0), a3 = (0, 0, 2·spacing).
    """
    symbols, xy = heptazine_layer_xy(a_A, bond_A)
    cell = np.array(
        [[a_A, 0.0, 0.0], [-0.5 * a_A, 0.5 * np.sqrt(3.0) * a_A, 0.0], [0.0, 0.0, 2.0 * spacing_A]]
    )
    layer_a = np.column_stack([xy, np.zeros(len(xy))])
    shift = (1.0 / 3.0) * cell[0] + (2.0 / 3.0) * cell[1] + 0.5 * cell[2]
    layer_b = layer_a + shift
    atoms = Atoms(
        symbols=symbols + symbols,
        positions=np.vstack([layer_a, layer_b]),
        cell=cell,
        pbc=True,
        tags=[SITE_TAGS[k] for k in _LAYER_SITES] * 2,
    )
    atoms.wrap()
    return atoms


SITE_TAGS = {"N_c": 0, "C_i": 1, "N_r": 2, "C_o": 3, "N_b": 4}
"""ASE tags marking each atom's site in the heptazine layer (survive ``repeat`` and ``del``)."""


def outer_carbon_indices(atoms: Atoms) -> np.ndarray:
    """Indices of outer carbons C_o (tag ``SITE_TAGS["C_o"]``), shape [n]."""
    return np.where(atoms.get_tags() == SITE_TAGS["C_o"])[0]


def supercell(unit: Atoms, repeat: tuple[int, int, int], vacancies: int = 0, seed: int = 0) -> Atoms:
    """``unit`` repeated; optionally with ``vacancies`` outer carbons removed.

    Vacancies are drawn with ``seed`` among outer carbons, at most one per heptazine unit, so
    each is an isolated carbon vacancy.
    """
    atoms = unit.repeat(repeat)
    if vacancies:
        rng = np.random.default_rng(seed)
        candidates = outer_carbon_indices(atoms)
        # three C_o per heptazine unit, consecutive in construction order: one per unit
        units = candidates.reshape(-1, 3)
        if vacancies > len(units):
            raise ValueError(f"asked for {vacancies} vacancies, cell has {len(units)} heptazine units")
        picked = rng.choice(len(units), size=vacancies, replace=False)
        chosen = [int(units[u, rng.integers(3)]) for u in picked]
        del atoms[sorted(chosen, reverse=True)]
    return atoms


def gc3n4_supercell(repeat: tuple[int, int, int], vacancies: int = 0, seed: int = 0) -> Atoms:
    """Supercell of the ideal (unrelaxed) 28-atom cell; see :func:`supercell`."""
    return supercell(gc3n4_unit_cell(), repeat, vacancies, seed)


def make_cell(unit: Atoms, name: str, seed: int = 0) -> Atoms:
    """The world cell called ``name`` (a key of :data:`CELLS`) built from ``unit``."""
    if name not in CELLS:
        raise KeyError(f"unknown cell {name!r}; expected one of {sorted(CELLS)}")
    repeat, vacancies = CELLS[name]
    return supercell(unit, repeat, vacancies, seed)


def with_spacing(atoms: Atoms, spacing_A: float, in_plane_scale: float = 1.0,
                 layers: int = 2) -> Atoms:
    """Copy of ``atoms`` strained affinely so its ``layers`` layers along c are ``spacing_A`` apart.

    c becomes ``layers · spacing_A``; a and b are scaled by ``in_plane_scale``. Cell rows, Å.
    """
    out = atoms.copy()
    cell = out.cell.array.copy()
    cell[2] *= layers * spacing_A / np.linalg.norm(cell[2])
    cell[:2] *= in_plane_scale
    out.set_cell(cell, scale_atoms=True)
    return out


# Cells used by the world: name -> (repeat of the 28-atom cell, carbon vacancies)
CELLS: dict[str, tuple[tuple[int, int, int], int]] = {
    "train56": ((2, 1, 1), 0),
    "train56_vac": ((2, 1, 1), 1),
    "cell112": ((2, 2, 1), 0),
    "cell252": ((3, 3, 1), 0),
    "cell448": ((4, 4, 1), 0),
}
