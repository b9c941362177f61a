"""ASE sampler: exact save/restore in NVT and NPT, blow-up detection, SamplerConfig validation."""

import dataclasses

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from difftre_torch.sampling.ase_md import (
    blow_up_reason,
    build_integrator,
    initialise_velocities,
    integrator_state,
    restore_integrator_state,
)
from difftre_torch.sampling.base import SamplerConfig, StatePoint


def _system(config, state, seed=5):
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    initialise_velocities(atoms, state.temperature_K, rng)
    return atoms, build_integrator(atoms, config, state, rng)


@pytest.mark.parametrize("pressure_GPa,hydrostatic", [(None, False), (0.0, False), (0.0, True)])
def test_restore_continues_bit_for_bit(pressure_GPa, hydrostatic):
    config = SamplerConfig(barostat_tau_fs=200, hydrostatic=hydrostatic)
    state = StatePoint("T300", 300, pressure_GPa)
    atoms, dyn = _system(config, state)
    dyn.run(15)
    saved = integrator_state(dyn)
    dyn.run(20)
    other_atoms, other = _system(config, state, seed=99)  # different noise and velocities
    other.run(3)
    restore_integrator_state(other, saved)
    other.run(20)
    assert np.array_equal(other_atoms.positions, atoms.positions)
    assert np.array_equal(other_atoms.cell.array, atoms.cell.array)
    assert np.array_equal(other_atoms.get_momenta(), atoms.get_momenta())


def test_centre_of_mass_is_fixed():
    atoms, dyn = _system(SamplerConfig(barostat_tau_fs=200), StatePoint("T500", 500, pressure_GPa=0.0))
    com = atoms.get_center_of_mass(scaled=True)
    dyn.run(30)
    np.testing.assert_allclose(atoms.get_center_of_mass(scaled=True), com, atol=1e-10)


def test_blow_up_reasons():
    config = SamplerConfig()
    atoms = bulk("Cu", cubic=True).repeat(2)
    v0 = atoms.get_volume()
    assert blow_up_reason(atoms, config, v0) is None
    close = atoms.copy()
    close.positions[5] = close.positions[2] + [0.2, 0.0, 0.0]
    assert blow_up_reason(close, config, v0) == "atoms 2 and 5 are 0.200 Å apart, closer than 0.6 Å"
    across = atoms.copy()  # minimum image: 0.1 Å from atom 0's image across the cell
    across.positions[4] = atoms.positions[0] + atoms.cell[0] - [0.1, 0.0, 0.0]
    assert blow_up_reason(across, config, v0) == "atoms 0 and 4 are 0.100 Å apart, closer than 0.6 Å"
    nan = atoms.copy()
    nan.positions[3, 1] = np.nan
    assert blow_up_reason(nan, config, v0) == "non-finite positions, momenta or cell"
    hot = atoms.copy()
    hot.set_momenta(np.full((len(atoms), 3), np.inf))
    assert blow_up_reason(hot, config, v0) == "non-finite positions, momenta or cell"
    big = atoms.copy()
    big.set_cell(big.cell * 1.5, scale_atoms=True)
    assert blow_up_reason(big, config, v0) == f"cell volume {v0 * 1.5 ** 3:.1f} Å³ is 3.38× the reference"
    assert blow_up_reason(close, SamplerConfig(min_distance_A=0.0), v0) is None  # check off


def _field_docs(cls):
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name,bad,expected", [
    ("timestep_fs", 0.0, "> 0"), ("friction_per_fs", -0.1, "> 0"), ("barostat_tau_fs", float("nan"), "> 0"),
    ("equilibration_steps", -1, ">= 0"), ("reequilibration_steps", 2.5, ">= 0"),
    ("snapshots_per_replica", 0, ">= 1"), ("stride", 0, ">= 1"), ("min_distance_A", -0.5, ">= 0"),
    ("max_volume_ratio", 1.0, "> 1"), ("check_every", 0, ">= 1"), ("seed", "1", ">= 0"),
    ("skin_A", -1.0, ">= 0"), ("noise_block_steps", 0, ">= 1"), ("max_blow_ups", -1, ">= 0"),
    ("hydrostatic", "yes", "true or false"),
])
def test_sampler_config_validation_names_the_field(name, bad, expected):
    with pytest.raises(ValueError, match=rf"SamplerConfig\.{name}: expected .*{expected}.*got"):
        SamplerConfig(**{name: bad})


def test_every_sampler_config_field_is_validated_and_documented():
    """Each field has a one-line doc with its meaning, and a wrong value is refused by name."""
    config = SamplerConfig()
    for name, text in _field_docs(SamplerConfig).items():
        assert text and "\n" not in text, name
        value = getattr(config, name)
        bad = "x" if isinstance(value, bool) else -1.0 if isinstance(value, float) else -1
        with pytest.raises(ValueError, match=f"SamplerConfig.{name}:"):
            SamplerConfig(**{name: bad})
    assert all(_field_docs(StatePoint).values())
    assert StatePoint("a", 300.0).ensemble == "nvt" and StatePoint("b", 300.0, 0.0).ensemble == "npt"


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
    config = SamplerConfig(timestep_fs=2.0, friction_per_fs=0.05, barostat_tau_fs=100.0, hydrostatic=True,
                           min_distance_A=0.0, max_volume_ratio=1e6)
    initialise_velocities(atoms, temperature_K, rng)
    dyn = build_integrator(atoms, config, StatePoint("P1", temperature_K, pressure_GPa), rng)
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
