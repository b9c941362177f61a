"""Pressure and stress from the virial; cell observables."""

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones

from difftre_torch.observables.thermo import (
    interlayer_spacing,
    lattice_angles,
    lattice_lengths,
    mass_density,
    pressure,
    stress_tensor,
)
from difftre_torch.potentials import LennardJones


def test_virial_pressure_of_lj_crystal_matches_ase_stress():
    atoms = bulk("Ar", "fcc", a=5.1).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=3)
    atoms.calc = AseLennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)
    pos = torch.tensor(atoms.positions)[None]
    cell = torch.tensor(atoms.cell.array)[None]
    numbers = torch.tensor(atoms.numbers)
    lj = LennardJones(3.4, 0.0104, 8.5)
    T = 80.0
    p = pressure(lj, pos, cell, numbers, T)
    ase_stress = atoms.get_stress(voigt=False)
    kinetic = (3 * len(atoms) - 3) * units.kB * T / (3 * atoms.get_volume())
    assert p.item() == pytest.approx(kinetic - np.trace(ase_stress) / 3, rel=1e-10)
    sigma = stress_tensor(lj, pos, cell, numbers, T, degrees_of_freedom=0)
    np.testing.assert_allclose(sigma[0].numpy(), ase_stress, atol=1e-14)


def test_pressure_gradient_in_parameters_matches_finite_difference():
    atoms = bulk("Ar", "fcc", a=5.2).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=4)
    pos = torch.tensor(atoms.positions)[None]
    cell = torch.tensor(atoms.cell.array)[None]
    numbers = torch.tensor(atoms.numbers)
    lj = LennardJones(3.4, 0.0104, 7.0)
    p = pressure(lj, pos, cell, numbers, 100.0, create_graph=True)
    (g,) = torch.autograd.grad(p.sum(), [lj.epsilon])
    # P_conf is linear in ε: dP/dε = P_conf / ε
    p0 = pressure(lj, pos, cell, numbers, 0.0)
    assert g.item() == pytest.approx(p0.item() / 0.0104, rel=1e-10)


def test_cell_observables():
    atoms = bulk("C", "hcp", a=2.46, c=6.7)
    cell = torch.tensor(atoms.cell.array)[None]
    np.testing.assert_allclose(lattice_lengths(cell)[0].numpy(), [2.46, 2.46, 6.7], rtol=1e-12)
    np.testing.assert_allclose(lattice_angles(cell)[0].numpy(), [90, 90, 120], atol=1e-10)
    assert interlayer_spacing(cell, layers_per_cell=2).item() == pytest.approx(3.35)
    masses = torch.tensor(atoms.get_masses())
    expected = atoms.get_masses().sum() / atoms.get_volume() * 1.66053906660
    assert mass_density(cell, masses).item() == pytest.approx(expected, rel=1e-12)
