"""ASE sampler: exact save/restore in NVT and NPT, blow-up detection, config validation."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from difftre_torch.sampling.ase_md import (
    MDConfig,
    blow_up_reason,
    build_integrator,
    initialise_velocities,
    integrator_state,
    restore_integrator_state,
)


def _system(config, seed=5):
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    initialise_velocities(atoms, config.temperature_K, rng)
    return atoms, build_integrator(atoms, config, rng)


@pytest.mark.parametrize("ensemble,hydrostatic", [("nvt", False), ("npt", False), ("npt", True)])
def test_restore_continues_bit_for_bit(ensemble, hydrostatic):
    config = MDConfig(ensemble=ensemble, temperature_K=300, barostat_tau_fs=200, hydrostatic=hydrostatic)
    atoms, dyn = _system(config)
    dyn.run(15)
    state = integrator_state(dyn)
    dyn.run(20)
    other_atoms, other = _system(config, seed=99)  # different noise and velocities
    other.run(3)
    restore_integrator_state(other, state)
    other.run(20)
    assert np.array_equal(other_atoms.positions, atoms.positions)
    assert np.array_equal(other_atoms.cell.array, atoms.cell.array)
    assert np.array_equal(other_atoms.get_momenta(), atoms.get_momenta())


def test_centre_of_mass_is_fixed():
    atoms, dyn = _system(MDConfig(ensemble="npt", temperature_K=500, barostat_tau_fs=200))
    com = atoms.get_center_of_mass(scaled=True)
    dyn.run(30)
    np.testing.assert_allclose(atoms.get_center_of_mass(scaled=True), com, atol=1e-10)


def test_blow_up_reasons():
    config = MDConfig()
    atoms = bulk("Cu", cubic=True).repeat(2)
    v0 = atoms.get_volume()
    assert blow_up_reason(atoms, config, v0) is None
    close = atoms.copy()
    close.positions[1] = close.positions[0] + [0.2, 0.0, 0.0]
    assert "closer" in blow_up_reason(close, config, v0)
    nan = atoms.copy()
    nan.positions[3, 1] = np.nan
    assert "non-finite" in blow_up_reason(nan, config, v0)
    big = atoms.copy()
    big.set_cell(big.cell * 1.5, scale_atoms=True)
    assert "volume" in blow_up_reason(big, config, v0)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="ensemble"):
        MDConfig(ensemble="nph")
    with pytest.raises(ValueError, match="timestep_fs"):
        MDConfig(timestep_fs=0.0)
