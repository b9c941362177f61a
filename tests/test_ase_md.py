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


def test_npt_ideal_gas_volume_is_gamma_distributed():
    """Hydrostatic LangevinBAOAB on N = 8 free particles with the centre of mass fixed samples
    p(V) ∝ V^(N−1) exp(−PV/k_BT): a Gamma law with ⟨V⟩ = N k_BT/P and Var V = N (k_BT/P)².
    ⟨V⟩ and ⟨V²⟩ are checked within 4 standard errors from 10 block averages. (N+1 instead of N, the
    classic measure error, would put ⟨V⟩ 12 % higher.)"""
    import torch
    from ase import Atoms, units

    from difftre_torch.potentials import HarmonicOscillators
    from difftre_torch.potentials.ase_calculator import PotentialCalculator

    n, temperature_K, pressure_GPa = 8, 300.0, 1.0
    scale = units.kB * temperature_K / (pressure_GPa * units.GPa)  # k_BT/P in Å³
    rng = np.random.default_rng(0)
    length = (n * scale) ** (1 / 3)
    atoms = Atoms(f"Ar{n}", positions=rng.random((n, 3)) * length, cell=np.eye(3) * length, pbc=True)
    atoms.calc = PotentialCalculator(HarmonicOscillators(torch.zeros(n, 3, dtype=torch.float64), 0.0))
    config = MDConfig(ensemble="npt", temperature_K=temperature_K, timestep_fs=2.0, friction_per_fs=0.05,
                      pressure_GPa=pressure_GPa, barostat_tau_fs=100.0, hydrostatic=True,
                      min_distance_A=0.0, max_volume_ratio=1e6)
    initialise_velocities(atoms, temperature_K, rng)
    dyn = build_integrator(atoms, config, rng)
    dyn.run(1000)
    volumes = []
    for _ in range(1000):
        dyn.run(8)
        volumes.append(atoms.get_volume() / scale)
    blocks = np.array(volumes).reshape(10, -1)
    first, second = blocks.mean(1), (blocks ** 2).mean(1)  # block means of V and V²
    first_se, second_se = first.std(ddof=1) / np.sqrt(10), second.std(ddof=1) / np.sqrt(10)
    assert abs(first.mean() - n) < 4 * first_se, (first.mean(), first_se)
    # ⟨V²⟩ = Var V + ⟨V⟩² = N + N² (in units of (k_BT/P)²)
    assert abs(second.mean() - (n + n * n)) < 4 * second_se, (second.mean(), second_se)
