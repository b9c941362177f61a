"""The interlayer binding curve's pieces without CHGNet: rigid layer moves (invariants), the
minimum fit against a known cubic, the reference identity with ASE's EMT, the default grid.
The real-calculator run of ``python -m recipes.world.binding`` is in test_world_generators.py."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from difftre_torch.analysis import binding


def test_binding_curve_is_zero_at_the_reference():
    from ase.calculators.emt import EMT

    unit = _layered_cell()
    curve = binding.binding_curve(EMT(), unit, [3.0, 8.0], reference_spacing_A=8.0)
    assert curve[1] == pytest.approx(0.0, abs=1e-12)
    assert curve.shape == (2,) and curve.dtype == np.float64


def _layered_cell(spacing_A: float = 3.4) -> Atoms:
    """Two buckled 4-atom layers at fractional heights 0 and 1/2 of a slanted cell."""
    rng = np.random.default_rng(0)
    cell = np.array([[4.0, 0.0, 0.0], [-2.0, 3.5, 0.0], [0.3, -0.2, 2 * spacing_A]])
    frac = rng.uniform(0, 1, size=(8, 3))
    frac[:4, 2] = rng.uniform(-0.03, 0.03, 4) % 1.0  # layer 0, some across the boundary
    frac[4:, 2] = 0.5 + rng.uniform(-0.03, 0.03, 4)
    return Atoms("C4N4", scaled_positions=frac, cell=cell, pbc=True)


def test_rigid_spacing_keeps_layers_and_in_plane_cell():
    atoms = _layered_cell()
    moved = binding.rigid_spacing(atoms, 5.0)
    np.testing.assert_allclose(moved.cell[:2], atoms.cell[:2])
    assert np.linalg.norm(moved.cell[2]) == pytest.approx(10.0)
    index = binding.layer_index(atoms)
    np.testing.assert_array_equal(index, [0] * 4 + [1] * 4)
    np.testing.assert_array_equal(binding.layer_index(moved), index)
    old, new = atoms.get_scaled_positions(), moved.get_scaled_positions()
    # in-plane fractional coordinates unchanged
    np.testing.assert_allclose(new[:, :2], old[:, :2], atol=1e-12)
    # each atom's height above its layer's plane k/2 is kept in Å (the buckling is not strained)
    wrap = lambda z: z - np.rint(z)
    c_old, c_new = (np.linalg.norm(a.cell[2]) for a in (atoms, moved))
    np.testing.assert_allclose(wrap(new[:, 2] - index / 2) * c_new, wrap(old[:, 2] - index / 2) * c_old,
                               atol=1e-12)
    # so distances within each layer (minimum image) are unchanged
    for layer in (slice(0, 4), slice(4, 8)):
        np.testing.assert_allclose(moved[layer].get_all_distances(mic=True),
                                   atoms[layer].get_all_distances(mic=True), atol=1e-10)


def test_curve_minimum_recovers_a_known_cubic():
    d = np.round(np.arange(3.0, 4.51, 0.1), 2)
    energy = 2.0 * (d - 3.63) ** 2 * (1.0 + 0.3 * (d - 3.63)) * 100.0 - 40.0
    m = binding.curve_minimum(d, energy)
    assert m["spacing_A"] == pytest.approx(3.63, abs=1e-9)
    assert m["depth_meV_per_atom"] == pytest.approx(40.0, abs=1e-9)
    assert m["fit"].startswith("cubic") and m["grid_spacing_A"] == pytest.approx(3.6)
    edge = binding.curve_minimum(d, -d)  # minimum at the end of the grid: not extrapolated
    assert edge["fit"] == "grid" and edge["spacing_A"] == pytest.approx(4.5)
