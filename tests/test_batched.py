"""Batched replica sampler: ensembles (harmonic ⟨x²⟩ and T, ideal-gas NPT Gamma law), a second
implementation (ASE's LangevinBAOAB step for step; the ASE sampler's LJ RDF in NVT and, slow,
⟨V⟩, Var V and RDF in NPT), exact restore, per-replica blow-up recovery, batch independence,
Verlet lists, and a trainer run. The statistical tests run the eager step and, marked slow, the
compiled one with the flags read at the checks only (``compile_step``, ``deferred_checks``); fast
tests hold each to the eager trajectory.

Statistical tolerances are z-scores against error bars computed in the test (the standard error
of the mean from 20 block means); each test states its bound.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk

from difftre_torch.neighbors import refresh_verlet_list, verlet_displacement, verlet_list
from difftre_torch.observables.rdf import partial_rdfs
from difftre_torch.potentials import HarmonicOscillators, LennardJones, evaluate
from difftre_torch.sampling.base import Sampler, SamplerConfig, StatePoint
from difftre_torch.sampling.batched import BatchedSampler
from difftre_torch.sampling.integrators import kinetic_temperature_K
from difftre_torch.sampling.sampler import AseSampler

BLOCKS = 20


@pytest.fixture(autouse=True)
def one_torch_thread():
    """MD on small batches is a stream of tiny kernels: with two intra-op threads on busy cores
    every threaded kernel waits for a time slice (measured: 5× the CPU time). One thread here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def block_means(series: np.ndarray, blocks: int = BLOCKS) -> np.ndarray:
    """Means of ``blocks`` consecutive blocks along axis 0 (the tail that does not fill a block
    is dropped)."""
    n = len(series) // blocks * blocks
    return series[:n].reshape(blocks, -1, *series.shape[1:]).mean(axis=1)


def mean_and_error(series: np.ndarray, blocks: int = BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Mean along axis 0 and its standard error from block means."""
    means = block_means(series, blocks)
    return means.mean(axis=0), means.std(axis=0, ddof=1) / math.sqrt(blocks)


def _lj_fluid() -> Atoms:
    """32 argon atoms at ρ* ≈ 0.8 (fcc start; melts at T* = 1.5 ≈ 181 K), as in test_trainer."""
    a = (4 * 3.405 ** 3 / 0.8) ** (1 / 3)
    return bulk("Ar", "fcc", a=a, cubic=True).repeat(2)


def _lj() -> LennardJones:
    return LennardJones(3.405, 0.0104, 8.5)


LJ = dict(timestep_fs=5.0, friction_per_fs=0.02, equilibration_steps=400, reequilibration_steps=100,
          snapshots_per_replica=40, stride=10, min_distance_A=1.5)

STEPS = [pytest.param(False, id="eager"), pytest.param(True, id="compiled", marks=pytest.mark.slow)]
"""The statistical tests' step: eager, flags read every step; or the GPU path, ``compile_step``
and ``deferred_checks`` (marked slow: the compiled step's runs compile, tens of seconds)."""


def step_settings(compiled: bool) -> dict:
    """SamplerConfig fields of one of STEPS."""
    return {"compile_step": compiled, "deferred_checks": compiled}


@contextlib.contextmanager
def compiled_graphs_made(compile_step: bool):
    """With ``compile_step``: empties torch.compile's caches, then asserts that the block made
    compiled graphs, so a silent fall-back to the eager step fails the test."""
    if not compile_step:
        yield
        return
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    yield
    assert counters["stats"]["unique_graphs"] > before, "the compiled step made no graph"


# ----------------------------------------------------------------------------- ensembles


@pytest.mark.parametrize("compile_step", STEPS)
def test_harmonic_x2_and_kinetic_temperature_per_replica(compile_step):
    """8 oscillators (k = 1 eV/Å², m = 12 amu), three temperatures × two replicas in one batch.
    Canonical with the centre of mass fixed: ⟨(x − a)²⟩ = (1 − 1/N) k_BT/k per component, and
    the kinetic temperature 2E_kin/((3N − 3)k_B) averages to T. Each within 4 standard errors."""
    n, k = 8, 1.0
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) * 4.0 + 2.0
    atoms = Atoms(f"C{n}", positions=grid, cell=np.eye(3) * 8.0, pbc=True)
    temperatures = [100.0, 300.0, 900.0]
    config = SamplerConfig(timestep_fs=2.0, friction_per_fs=0.05, equilibration_steps=500,
                           snapshots_per_replica=2000, stride=5, min_distance_A=0.1, **step_settings(compile_step))
    sampler = BatchedSampler(atoms, [StatePoint(f"T{t:.0f}", t, replicas=2) for t in temperatures], config)
    masses = torch.tensor(atoms.get_masses())
    kinetic = []  # [R] every stride-th production step, from the hook
    steps = [0]

    def record_temperature(s):
        steps[0] += 1
        if steps[0] > config.equilibration_steps and steps[0] % config.stride == 0:
            kinetic.append(kinetic_temperature_K(s.state.momenta, masses).numpy())

    with compiled_graphs_made(compile_step):
        out = sampler.sample(HarmonicOscillators(torch.tensor(grid), k), on_step=record_temperature)
    kinetic = np.array(kinetic)  # [frames, R]; replicas 2p, 2p+1 belong to state point p
    for p, (raw, temperature) in enumerate(zip(out, temperatures)):
        d = (raw.positions - torch.tensor(grid)).numpy()
        x2 = (d * d).mean(axis=(1, 2)) / ((1 - 1 / n) * units.kB * temperature / k)
        mean, error = mean_and_error(x2)  # frames are replica 0 then replica 1: blocks never mix
        assert abs(mean - 1) < 4 * error, (temperature, mean, error)
        t_ratio = np.concatenate([kinetic[:, 2 * p], kinetic[:, 2 * p + 1]]) / temperature
        t_mean, t_error = mean_and_error(t_ratio)
        assert abs(t_mean - 1) < 4 * t_error, (temperature, t_mean, t_error)
        assert raw.stats["kinetic_temperature_K"] == pytest.approx(temperature, rel=8 * t_error)


@pytest.mark.parametrize("compile_step", STEPS)
def test_npt_ideal_gas_volume_is_gamma_distributed(compile_step):
    """Hydrostatic NPT of N = 8 free particles, centre of mass fixed: p(V) ∝ V^(N−1) e^(−PV/k_BT),
    so ⟨V⟩ = N k_BT/P and ⟨V²⟩ = (N + N²)(k_BT/P)² (the ASE sampler's test of the same law).
    Two state points (300 K at 1 GPa, 600 K at 2 GPa), four replicas each, in one batch;
    both moments within 4 standard errors."""
    n = 8
    rng = np.random.default_rng(0)
    length = (n * units.kB * 300 / units.GPa) ** (1 / 3)
    atoms = Atoms(f"Ar{n}", positions=rng.random((n, 3)) * length, cell=np.eye(3) * length, pbc=True)
    points = [StatePoint("T300_P1", 300.0, pressure_GPa=1.0, replicas=4),
              StatePoint("T600_P2", 600.0, pressure_GPa=2.0, replicas=4)]
    config = SamplerConfig(timestep_fs=2.0, friction_per_fs=0.05, barostat_tau_fs=100.0,
                           hydrostatic=True, equilibration_steps=1000, snapshots_per_replica=700,
                           stride=8, min_distance_A=0.0, max_volume_ratio=1e6, **step_settings(compile_step))
    sampler = BatchedSampler(atoms, points, config)
    with compiled_graphs_made(compile_step):
        out = sampler.sample(HarmonicOscillators(torch.zeros(n, 3, dtype=torch.float64), 0.0))
    for raw in out:
        point = raw.state_point
        scale = units.kB * point.temperature_K / (point.pressure_GPa * units.GPa)  # k_BT/P, Å³
        volume = torch.linalg.det(raw.cells).numpy() / scale
        first, first_error = mean_and_error(volume)
        second, second_error = mean_and_error(volume ** 2)
        assert abs(first - n) < 4 * first_error, (point.name, first, first_error)
        assert abs(second - (n + n * n)) < 4 * second_error, (point.name, second, second_error)


def test_npt_keeps_the_scaled_centre_of_mass():
    atoms = _lj_fluid()
    sampler = BatchedSampler(atoms, [StatePoint("P", 181.0, pressure_GPa=0.05, replicas=2)],
                             SamplerConfig(**{**LJ, "equilibration_steps": 50, "snapshots_per_replica": 3,
                                              "barostat_tau_fs": 200.0}))
    raw = sampler.sample(_lj())[0]
    com = atoms.get_center_of_mass(scaled=True)
    masses = torch.tensor(atoms.get_masses())
    for x, h in zip(raw.positions, raw.cells):
        scaled = (masses[:, None] * x).sum(0) / masses.sum() @ torch.linalg.inv(h)
        np.testing.assert_allclose(scaled.numpy(), com, atol=1e-10)
    assert not torch.allclose(raw.cells[0], torch.tensor(atoms.cell.array))  # the cell did move


# ----------------------------------------------------------------------------- against ASE


def _rdf(raw, r_max=7.5, n_bins=30):
    numbers = torch.full((raw.positions.shape[1],), 18)
    r, partials = partial_rdfs(raw.positions, raw.cells, numbers, r_max, n_bins, r_min=2.5)
    return r, partials[(18, 18)].numpy()


def _compare(a: np.ndarray, b: np.ndarray, blocks: int = BLOCKS) -> np.ndarray:
    """z-scores of the difference of two samples' means (per column), block errors combined."""
    mean_a, error_a = mean_and_error(a, blocks)
    mean_b, error_b = mean_and_error(b, blocks)
    error = np.sqrt(error_a ** 2 + error_b ** 2)
    informative = error > 0
    z = (mean_a - mean_b)[informative] / error[informative]
    return z


@functools.lru_cache(maxsize=None)
def _ase_lj_nvt():
    """AseSampler's NVT LJ fluid at 181 K (2 replicas × 200 snapshots), once per test session."""
    point = StatePoint("T181", 181.0, replicas=2)
    return AseSampler(_lj_fluid(), [point], SamplerConfig(**{**LJ, "snapshots_per_replica": 200, "seed": 1})).sample(_lj())[0]


@pytest.mark.parametrize("compile_step", STEPS)
def test_lj_rdf_matches_ase_sampler_nvt(compile_step):
    """NVT LJ fluid at 181 K: the RDF from the batched sampler (4 replicas) and from AseSampler
    (ASE Langevin, 2 replicas) agree bin by bin: mean z² ≤ 2 and every |z| < 4.5 over the
    informative bins (z from each sample's block errors)."""
    ase_raw = _ase_lj_nvt()
    batched = BatchedSampler(_lj_fluid(), [StatePoint("T181", 181.0, replicas=4)],
                             SamplerConfig(**{**LJ, "snapshots_per_replica": 200, "seed": 2,
                                              **step_settings(compile_step)}))
    with compiled_graphs_made(compile_step):
        raw = batched.sample(_lj())[0]
    _, g_ase = _rdf(ase_raw)
    _, g_batched = _rdf(raw)
    z = _compare(g_batched, g_ase)
    assert len(z) > 20
    assert (z ** 2).mean() <= 2.0 and np.abs(z).max() < 4.5, z.round(2)
    assert raw.stats["kinetic_temperature_K"] == pytest.approx(181.0, rel=0.03)


class _RecordedNormals:
    """Stands in for LangevinBAOAB's NumPy generator and keeps every number it hands out."""

    def __init__(self, seed: int):
        self.rng, self.drawn = np.random.default_rng(seed), []

    def normal(self, size=None):
        value = self.rng.normal(size=size)
        self.drawn.append(np.atleast_1d(value).ravel())
        return value


@pytest.mark.parametrize("ensemble", ["nvt", "npt_hydrostatic", "npt_full_cell"])
def test_step_equals_ase_langevin_baoab_given_the_same_noise(ensemble, monkeypatch):
    """Second implementation: fed the random numbers ASE's LangevinBAOAB (with FixCom) draws, the
    batched step reproduces its positions, momenta, cell and cell momentum for 60 steps to 1e-10.
    NVT is LangevinBAOAB without a barostat. Full cell: ASE 3.29 forms the barostat drag on the
    velocities as p_ε + tr(p_ε)/N_dof added to every element (a NumPy broadcast); Quigley–Probert's
    drag has tr(p_ε)/N_dof on the diagonal only, which is what the batched step uses, so ASE's term
    is corrected for this comparison (the ASE sampler itself is left as ASE ships it)."""
    from ase.md.langevinbaoab import LangevinBAOAB

    from difftre_torch.neighbors import det3
    from difftre_torch.potentials.ase_calculator import PotentialCalculator
    from difftre_torch.sampling.ase_md import build_integrator, initialise_velocities
    from difftre_torch.sampling.integrators import barostat_mass, forces_and_stress
    from difftre_torch.sampling.integrators import (
        LangevinParameters, LangevinState, baoab_drift, baoab_kick, cell_force)

    if ensemble == "npt_full_cell":
        monkeypatch.setattr(LangevinBAOAB, "_barostat_BAOAB_OU_gamma_mod", lambda self: (
            self.p_eps + np.trace(self.p_eps) / self.Ndof * np.identity(3)) / self.barostat_mass)
    npt, hydrostatic = ensemble != "nvt", ensemble == "npt_hydrostatic"
    atoms = bulk("Ar", "fcc", a=5.30, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    lj = _lj()
    atoms.calc = PotentialCalculator(lj)
    initialise_velocities(atoms, 40.0, np.random.default_rng(0))
    config = SamplerConfig(timestep_fs=5.0, friction_per_fs=0.02, barostat_tau_fs=300.0, hydrostatic=hydrostatic)
    if npt:
        dyn = build_integrator(atoms, config, StatePoint("P", 40.0, pressure_GPa=0.1), np.random.default_rng(1))
    else:
        from ase.constraints import FixCom

        atoms.set_constraint(FixCom())
        dyn = LangevinBAOAB(atoms, config.timestep_fs * units.fs, temperature_K=40.0,
                            T_tau=units.fs / config.friction_per_fs, rng=1)
    dyn.rng = recorded = _RecordedNormals(5)
    n = len(atoms)
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)
    params = LangevinParameters(
        timestep=config.timestep_fs * units.fs, friction=config.friction_per_fs / units.fs,
        kT=as_tensor([units.kB * 40.0]), masses=as_tensor(atoms.get_masses()),
        pressure=as_tensor([0.1 * units.GPa]), barostat=torch.tensor([npt]),
        barostat_mass=as_tensor([barostat_mass(300.0, n)]), cell_friction=1 / (300.0 * units.fs),
        hydrostatic=hydrostatic)
    x, h = as_tensor(atoms.positions)[None], as_tensor(atoms.cell.array)[None]
    forces, stress = forces_and_stress(lj, x, h, None, stress=True)
    state = LangevinState(x, as_tensor(atoms.get_momenta())[None], h, torch.zeros(1, 3, 3, dtype=torch.float64),
                          forces, cell_force(as_tensor(atoms.get_momenta())[None], stress, det3(h).abs(), params))
    if npt:
        assert dyn.barostat_mass == pytest.approx(params.barostat_mass.item(), rel=1e-14)
    for _ in range(60):
        recorded.drawn = []
        dyn.run(1)
        noise = torch.zeros(1, 3 * n + 9, dtype=torch.float64)
        drawn = np.concatenate(recorded.drawn)
        noise[0, : len(drawn)] = as_tensor(drawn)
        state = baoab_drift(state, params, noise)
        forces, stress = forces_and_stress(lj, state.positions, state.cells, None, stress=npt)
        state = baoab_kick(state, params, forces, stress)
    np.testing.assert_allclose(state.positions[0].numpy(), atoms.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(state.momenta[0].numpy(), atoms.get_momenta(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(state.cells[0].numpy(), atoms.cell.array, rtol=0, atol=1e-10)
    if npt:
        p_eps = np.asarray(dyn.p_eps) * (np.identity(3) if hydrostatic else 1.0)
        np.testing.assert_allclose(state.cell_momenta[0].numpy(), p_eps, rtol=0, atol=1e-9)
        assert not np.allclose(atoms.cell.array, bulk("Ar", "fcc", a=5.30, cubic=True).repeat(2).cell.array)


NPT_SETTINGS = dict(timestep_fs=5.0, friction_per_fs=0.02, barostat_tau_fs=300.0, equilibration_steps=300,
                    snapshots_per_replica=1200, stride=5, min_distance_A=1.5)
NPT_POINT = StatePoint("P", 40.0, pressure_GPa=0.1, replicas=4)


@functools.lru_cache(maxsize=None)
def _ase_lj_npt(hydrostatic: bool):
    """AseSampler's NPT fcc LJ crystal (LangevinBAOAB), once per test session and cell kind."""
    atoms = bulk("Ar", "fcc", a=5.30, cubic=True).repeat(2)
    return AseSampler(atoms, [NPT_POINT], SamplerConfig(**NPT_SETTINGS, hydrostatic=hydrostatic, seed=3)).sample(_lj())[0]


@pytest.mark.slow
@pytest.mark.parametrize("compile_step", [pytest.param(False, id="eager"), pytest.param(True, id="compiled")])
@pytest.mark.parametrize("hydrostatic", [False, True])
def test_lj_npt_volume_fluctuations_and_rdf_match_ase_sampler(hydrostatic, compile_step):
    """NPT fcc LJ crystal at 40 K and 0.1 GPa (full cell, or hydrostatic), same settings, four
    replicas each: ⟨V⟩ and ⟨(V − ⟨V⟩)²⟩ of the batched sampler and of AseSampler (LangevinBAOAB)
    within 4 combined standard errors, and the RDF bin by bin |z| < 4.5 with mean z² ≤ 3 (the
    bins of a crystal's RDF move together with the volume, so mean z² scatters more than a
    χ²/ν of independent bins). ~1 min hydrostatic, ~11 min full cell (ASE calls scipy expm three
    times a step), measured on a shared 2-core machine."""
    atoms = bulk("Ar", "fcc", a=5.30, cubic=True).repeat(2)
    ase_raw = _ase_lj_npt(hydrostatic)
    config = SamplerConfig(**NPT_SETTINGS, hydrostatic=hydrostatic, seed=4, **step_settings(compile_step))
    with compiled_graphs_made(compile_step):
        raw = BatchedSampler(atoms, [NPT_POINT], config).sample(_lj())[0]
    v_ase = torch.linalg.det(ase_raw.cells).numpy()
    v_batched = torch.linalg.det(raw.cells).numpy()
    z_mean = _compare(v_batched, v_ase)
    z_var = _compare((v_batched - v_batched.mean()) ** 2, (v_ase - v_ase.mean()) ** 2)
    assert abs(z_mean[0]) < 4 and abs(z_var[0]) < 4, (z_mean, z_var, v_batched.var(), v_ase.var())
    z = _compare(_rdf(raw, 7.0, 25)[1], _rdf(ase_raw, 7.0, 25)[1])
    assert (z ** 2).mean() <= 3.0 and np.abs(z).max() < 4.5, z.round(2)
    if hydrostatic:  # the shape is kept
        ratio = raw.cells / raw.cells[:, :1, :1]
        torch.testing.assert_close(ratio, torch.eye(3, dtype=ratio.dtype).expand_as(ratio))


def test_compiled_step_follows_the_eager_trajectory():
    """LJ fluid, NVT and full-cell NPT replicas in one batch, 120 steps: the compiled step
    (``compile_step``) and the eager one, given the same noise, give the same positions, momenta
    and cells to 1e-9 (the arithmetic is the same; fused kernels round differently), and the
    compiled run did make graphs."""
    atoms = _lj_fluid()
    points = [StatePoint("T181", 181.0, replicas=2), StatePoint("T150_P", 150.0, pressure_GPa=0.05, replicas=2)]
    config = dict(**{**LJ, "equilibration_steps": 60, "snapshots_per_replica": 6, "barostat_tau_fs": 200.0},
                  progress=False)
    runs = {}
    for compile_step in (False, True):
        sampler = BatchedSampler(atoms, points, SamplerConfig(**config, compile_step=compile_step))
        with compiled_graphs_made(compile_step):
            raw = sampler.sample(_lj())
        runs[compile_step] = (raw, sampler.state)
    (eager, eager_state), (compiled, compiled_state) = runs[False], runs[True]
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(b.positions.numpy(), a.positions.numpy(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(b.cells.numpy(), a.cells.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(compiled_state.momenta.numpy(), eager_state.momenta.numpy(), rtol=0, atol=1e-9)
    assert not torch.allclose(eager[1].cells[0], torch.tensor(atoms.cell.array))  # NPT moved the cell


# ----------------------------------------------------------------------------- state and blow-ups


def test_state_dict_round_trip_continues_bit_for_bit():
    """NVT and anisotropic NPT replicas in one batch: round 2 of a sampler restored from the
    state after round 1 (through torch.save/torch.load) equals round 2 of the original exactly."""
    atoms = _lj_fluid()
    points = [StatePoint("T181", 181.0, replicas=2), StatePoint("T150_P", 150.0, pressure_GPa=0.05, replicas=1)]
    config = SamplerConfig(**{**LJ, "equilibration_steps": 60, "reequilibration_steps": 20,
                              "snapshots_per_replica": 5, "stride": 7, "noise_block_steps": 16})
    original = BatchedSampler(atoms, points, config)
    original.sample(_lj())
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    second = original.sample(_lj())
    restored = BatchedSampler(atoms, points, config)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    again = restored.sample(_lj())
    for a, b in zip(second, again):
        assert torch.equal(a.positions, b.positions) and torch.equal(a.cells, b.cells)
        assert torch.equal(a.replica, b.replica)
    for name, value in original.state_dict()["state"].items():
        assert torch.equal(value, restored.state_dict()["state"][name]), name


def test_replica_does_not_depend_on_its_batch():
    """A replica's trajectory is its own: (state point 0, replica 0) run alone gives the frames it
    gives inside a batch of five replicas at two state points (to float round-off)."""
    atoms = _lj_fluid()
    config = SamplerConfig(**{**LJ, "equilibration_steps": 100, "snapshots_per_replica": 5})
    alone = BatchedSampler(atoms, [StatePoint("T181", 181.0, replicas=1)], config).sample(_lj())[0]
    batch = BatchedSampler(atoms, [StatePoint("T181", 181.0, replicas=3), StatePoint("T250", 250.0, replicas=2)],
                           config).sample(_lj())[0]
    torch.testing.assert_close(batch.positions[batch.replica == 0], alone.positions, rtol=0, atol=1e-9)
    assert not torch.allclose(batch.positions[batch.replica == 1], alone.positions)


class _NanInReplica(torch.nn.Module):
    """LJ (taking precomputed pairs) whose ``fail_at``-th call gives replica ``bad`` a NaN energy."""

    def __init__(self, fail_at: int, bad: int):
        super().__init__()
        self.lj = _lj()
        self.cutoff_A = self.lj.cutoff_A
        self.calls, self.fail_at, self.bad = 0, fail_at, bad

    def forward(self, positions, cell, numbers, pairs=None):
        self.calls += 1
        energy = self.lj(positions, cell, numbers, pairs=pairs)
        if self.calls == self.fail_at:
            poison = torch.ones_like(energy)
            poison[self.bad] = float("nan")
            energy = energy * poison
        return energy


@pytest.mark.parametrize("skin", [0.3, 1.0])
def test_deferred_checks_follow_the_per_step_trajectory(skin):
    """``deferred_checks``: the same trajectories as reading the flags every step, to round-off
    (a list rebuilt at another step sums its pairs in another order), for NVT and full-cell NPT
    replicas in one batch. With a 0.3 Å skin the lists go stale inside windows, which run again;
    with 1 Å they are rebuilt ahead at the checks."""
    atoms = _lj_fluid()
    points = [StatePoint("T181", 181.0, replicas=2), StatePoint("T150_P", 150.0, pressure_GPa=0.05, replicas=2)]
    config = dict(**{**LJ, "equilibration_steps": 100, "snapshots_per_replica": 20, "barostat_tau_fs": 200.0},
                  skin_A=skin, progress=False)
    runs = {}
    for deferred in (False, True):
        sampler = BatchedSampler(atoms, points, SamplerConfig(**config, deferred_checks=deferred))
        runs[deferred] = sampler.sample(_lj())
    for a, b in zip(runs[False], runs[True]):
        np.testing.assert_allclose(b.positions.numpy(), a.positions.numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.cells.numpy(), a.cells.numpy(), rtol=0, atol=1e-10)
    assert runs[False][0].stats["window_reruns"] == 0
    assert runs[True][0].stats["neighbour_list_rebuilds"] > 0
    if skin == 0.3:
        assert runs[True][0].stats["window_reruns"] > 0


def test_deferred_checks_run_a_window_again_after_a_passing_glitch():
    """A NaN energy that the rerun does not repeat (the potential's 68th call): under
    ``deferred_checks`` its window runs again from the last check with the same noise, so every
    replica's frames equal those of a run without the glitch, bit for bit, and nothing is
    counted as a blow-up."""
    atoms = _lj_fluid()
    config = SamplerConfig(**{**LJ, "equilibration_steps": 50, "snapshots_per_replica": 10, "stride": 3},
                           deferred_checks=True)
    points = [StatePoint("T181", 181.0, replicas=3)]
    clean_sampler = BatchedSampler(atoms, points, config)
    clean = clean_sampler.sample(_NanInReplica(fail_at=-1, bad=1))[0]
    faulty = BatchedSampler(atoms, points, config)
    raw = faulty.sample(_NanInReplica(fail_at=68, bad=1))[0]
    assert faulty.blow_ups == []
    assert raw.stats["window_reruns"] == clean.stats["window_reruns"] + 1
    assert torch.equal(raw.positions, clean.positions) and torch.equal(raw.cells, clean.cells)


def test_blow_up_in_one_replica_is_survived_and_leaves_the_others_alone():
    """A NaN in replica 1 during production: a warning, one ``blow_ups`` entry naming it, its
    frames since the last check dropped and re-run, every replica ends with all its frames, all
    finite, and the other replicas' frames are exactly those of a run without the fault."""
    atoms = _lj_fluid()
    config = SamplerConfig(**{**LJ, "equilibration_steps": 50, "snapshots_per_replica": 10, "stride": 3})
    points = [StatePoint("T181", 181.0, replicas=3)]
    clean = BatchedSampler(atoms, points, config).sample(_NanInReplica(fail_at=-1, bad=1))[0]
    faulty = BatchedSampler(atoms, points, config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = faulty.sample(_NanInReplica(fail_at=68, bad=1))[0]
    assert any("blow-up" in str(w.message) for w in caught)
    assert len(faulty.blow_ups) == 1 and "T181/replica 1" in faulty.blow_ups[0], faulty.blow_ups
    assert raw.stats["discarded_frames"] >= 1
    assert torch.isfinite(raw.positions).all()
    assert [int((raw.replica == r).sum()) for r in range(3)] == [10, 10, 10]
    for r in (0, 2):
        assert torch.equal(raw.positions[raw.replica == r], clean.positions[clean.replica == r])
    assert not torch.equal(raw.positions[raw.replica == 1], clean.positions[clean.replica == 1])


def test_potential_exception_restarts_the_moved_replicas():
    class Raises(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lj, self.calls = _lj(), 0

        def forward(self, positions, cell, numbers):
            self.calls += 1
            if self.calls == 30:
                raise RuntimeError("injected")
            return self.lj(positions, cell, numbers)

    sampler = BatchedSampler(_lj_fluid(), [StatePoint("T", 181.0, replicas=2)],
                             SamplerConfig(**{**LJ, "equilibration_steps": 40, "snapshots_per_replica": 2}))
    with pytest.warns(RuntimeWarning, match="blow-up"):
        raw = sampler.sample(Raises())[0]
    assert len(sampler.blow_ups) == 2 and all("injected" in b for b in sampler.blow_ups)
    assert len(raw.positions) == 4


def _bad_state(kind: str, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Positions and cell of a broken state: two atoms 0.2 Å apart, the cell 1.5× larger, or a NaN."""
    positions, cell = atoms.positions.copy(), atoms.cell.array.copy()
    if kind == "close":
        positions[7] = positions[3] + [0.2, 0.0, 0.0]
    elif kind == "volume":
        positions, cell = positions * 1.5, cell * 1.5
    else:
        positions[2, 1] = np.nan
    return positions, cell


@pytest.mark.parametrize("kind,reason", [
    ("close", "atoms 3 and 7 are 0.200 Å apart, closer than 1.5 Å"),
    ("volume", "is 3.38× the reference"),
    ("nan", "non-finite positions, momenta or cell"),
])
def test_both_samplers_give_the_same_reason_for_the_same_bad_state(kind, reason):
    """One check for both samplers (:mod:`difftre_torch.sampling.blowups`): the same broken state,
    put in at step 10 (a check step), gives the same blow-up message in the ASE sampler (vesin
    search) and the batched one (its Verlet list), and both samplers carry on to full samples."""
    atoms = _lj_fluid()
    point = StatePoint("T181", 181.0)
    config = SamplerConfig(**{**LJ, "equilibration_steps": 20, "snapshots_per_replica": 2, "stride": 5})
    positions, cell = _bad_state(kind, atoms)

    broken = set()  # each sampler is broken once

    def break_ase(p, r, dyn):
        if dyn.nsteps == 10 and "ase" not in broken:
            broken.add("ase")
            dyn.atoms.set_cell(cell, scale_atoms=False)
            dyn.atoms.set_positions(positions, apply_constraint=False)

    def break_batched(sampler):
        if sampler.step == 10 and "batched" not in broken:
            broken.add("batched")
            sampler.state.positions[0] = torch.as_tensor(positions)
            sampler.state.cells[0] = torch.as_tensor(cell)

    ase = AseSampler(atoms, [point], config)
    batched = BatchedSampler(atoms, [point], config)
    assert isinstance(ase, Sampler) and isinstance(batched, Sampler)
    with pytest.warns(RuntimeWarning, match="blow-up"):
        ase_raw = ase.sample(_lj(), on_step=break_ase)[0]
    with pytest.warns(RuntimeWarning, match="blow-up"):
        batched_raw = batched.sample(_lj(), on_step=break_batched)[0]
    assert len(ase.blow_ups) == len(batched.blow_ups) == 1
    assert ase.blow_ups == batched.blow_ups, (ase.blow_ups, batched.blow_ups)
    assert ase.blow_ups[0].startswith("T181/replica 0: step 10: ") and ase.blow_ups[0].endswith(reason)
    for raw in (ase_raw, batched_raw):
        assert raw.positions.shape[0] == 2 and torch.isfinite(raw.positions).all()


# ----------------------------------------------------------------------------- neighbour lists


def test_verlet_list_covers_the_cutoff_until_it_reports_stale():
    """After random displacements (σ 0.2 Å) and a cell strain that bring pairs into the cut-off,
    a list built with a 2 Å skin still gives the fresh-search energy, forces and stress while its
    displacement bound is below the skin; the bound is exact for one displaced atom (2·|u|), and
    only that snapshot is searched again."""
    atoms = _lj_fluid()
    lj = _lj()
    x0 = torch.tensor(atoms.positions)[None].repeat(3, 1, 1)
    h0 = torch.tensor(atoms.cell.array)[None].repeat(3, 1, 1)
    vl = verlet_list(x0, h0, lj.cutoff_A, 2.0)
    generator = torch.Generator().manual_seed(0)
    x = x0 + 0.2 * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    strain = torch.eye(3, dtype=torch.float64) + torch.tensor([[-0.01, 0.004, 0], [0.004, -0.01, 0], [0, 0, -0.005]])
    h = h0 @ strain
    x = x @ strain
    bound = verlet_displacement(vl, x, h)
    assert (bound < vl.skin_A).all(), bound
    old_pairs = verlet_list(x0, h0, lj.cutoff_A, 0.0).pairs
    new_pairs = verlet_list(x, h, lj.cutoff_A, 0.0).pairs
    assert len(new_pairs) != len(old_pairs)  # pairs did cross the cut-off
    fresh = evaluate(lj, x, h, None, stress=True)
    listed = evaluate(lambda a, b, c: lj(a, b, c, pairs=vl.pairs), x, h, None, stress=True)
    torch.testing.assert_close(listed.energy, fresh.energy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(listed.forces, fresh.forces, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(listed.stress, fresh.stress, rtol=1e-10, atol=1e-14)
    shifted = x0.clone()
    shifted[1, 5] += torch.tensor([0.75, 1.0, 0.0], dtype=torch.float64)  # |u| = 1.25 Å: 2|u| > skin
    torch.testing.assert_close(verlet_displacement(vl, shifted, h0), torch.tensor([0.0, 2.5, 0.0], dtype=torch.float64))
    refresh_verlet_list(vl, shifted, h0)
    assert vl.builds.tolist() == [1, 2, 1]


def test_nequip_energy_with_a_verlet_list_equals_its_own_search(tiny_nequip_checkpoint):
    pytest.importorskip("nequip")
    from difftre_torch.potentials.nequip_files import load_nequip
    from difftre_torch.testing import tiny_cn_frames

    frames = tiny_cn_frames(n_frames=3, seed=4)
    potential = load_nequip(tiny_nequip_checkpoint, dtype=torch.float64)
    x = torch.tensor(np.stack([a.positions for a in frames]))
    h = torch.tensor(np.stack([a.cell.array for a in frames]))
    numbers = torch.tensor(frames[0].numbers)
    vl = verlet_list(x, h, potential.r_max_A, 1.0, full=True)
    fresh = evaluate(potential, x, h, numbers, stress=True)
    listed = evaluate(lambda a, b, c: potential(a, b, c, pairs=vl.pairs), x, h, numbers, stress=True)
    torch.testing.assert_close(listed.energy, fresh.energy, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(listed.forces, fresh.forces, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(listed.stress, fresh.stress, rtol=1e-8, atol=1e-12)
    half = verlet_list(x, h, potential.r_max_A, 1.0, full=False)
    with pytest.raises(ValueError, match="full"):
        potential(x, h, numbers, pairs=half.pairs)


# ----------------------------------------------------------------------------- the trainer


def test_trainer_runs_with_the_batched_sampler_and_stores_the_same_format(tmp_path):
    """Two DiffTRe updates with BatchedSampler; its snapshot store has the keys, shapes, dtypes
    and replica labels of the one AseSampler gives, and the checkpoint resumes."""
    from difftre_torch.experiment.target import Target
    from difftre_torch.trainer import DiffTReTrainer, TrainerConfig

    atoms = _lj_fluid()
    point = StatePoint("T181", 181.0, replicas=2)
    target = Target("rdf", "rdf", np.ones(20), x=np.arange(20) * 0.25 + 2.6)
    sampler_settings = {**LJ, "equilibration_steps": 100, "reequilibration_steps": 20, "snapshots_per_replica": 10}
    stores = {}
    for name, sampler in [("batched", BatchedSampler(atoms, [point], SamplerConfig(**sampler_settings))),
                          ("ase", None)]:
        potential = _lj()
        potential.epsilon.requires_grad_(False)  # θ = σ: Adam's first step moves each parameter by ~lr
        trainer = DiffTReTrainer(potential, atoms, [point], [target], sampler=sampler,
                                 sampler_config=SamplerConfig(**sampler_settings),
                                 config=TrainerConfig(updates=2, learning_rate=0.02, resample_ratio=1.0,
                                                      progress=False, tensorboard=False, final_sample=False),
                                 out_dir=tmp_path / name)
        summary = trainer.fit()
        assert summary.updates == 2 and trainer.resamples >= 1
        stores[name] = trainer.stores[0].state_dict()
    batched, ase = stores["batched"], stores["ase"]
    assert batched.keys() == ase.keys()
    for key, value in ase.items():
        if isinstance(value, torch.Tensor):
            assert batched[key].shape == value.shape and batched[key].dtype == value.dtype, key
    assert batched["observables"].keys() == ase["observables"].keys()
    assert torch.equal(batched["replica"], ase["replica"])
    potential = _lj()
    potential.epsilon.requires_grad_(False)
    resumed = DiffTReTrainer(potential, atoms, [point], [target],
                             sampler=BatchedSampler(atoms, [point], SamplerConfig(**sampler_settings)),
                             config=TrainerConfig(updates=3, learning_rate=0.02, progress=False,
                                                  tensorboard=False, final_sample=False),
                             out_dir=tmp_path / "batched")
    assert resumed.fit(resume=True).updates == 3


def test_trainer_resumed_mid_run_retraces_the_uninterrupted_run(tmp_path):
    """Six updates in one go against three, a new process's resume, three more: every loss and
    the final σ equal bit for bit. The checkpoint after update 3 falls on a noise-block boundary
    (step 320 = 10 blocks of 32), where a restore once replayed the last block of noise."""
    from difftre_torch.experiment.target import Target
    from difftre_torch.trainer import DiffTReTrainer, TrainerConfig

    atoms = _lj_fluid()
    point = StatePoint("T181", 181.0, replicas=2)
    target = Target("rdf", "rdf", np.ones(20), x=np.arange(20) * 0.25 + 2.6)
    settings = {**LJ, "equilibration_steps": 100, "reequilibration_steps": 20, "snapshots_per_replica": 10}

    def trainer(out, updates):
        potential = _lj()
        potential.epsilon.requires_grad_(False)
        return potential, DiffTReTrainer(
            potential, atoms, [point], [target], sampler=BatchedSampler(atoms, [point], SamplerConfig(**settings)),
            config=TrainerConfig(updates=updates, learning_rate=0.02, resample_ratio=0.9, progress=False,
                                 tensorboard=False, final_sample=False),
            out_dir=out)

    straight_lj, straight = trainer(tmp_path / "straight", 6)
    straight.fit()
    _, first = trainer(tmp_path / "resumed", 3)
    first.fit()
    assert first.sampler.step % SamplerConfig().noise_block_steps == 0  # the boundary case
    resumed_lj, resumed = trainer(tmp_path / "resumed", 6)
    resumed.fit(resume=True)
    assert sum(r.resampled for r in straight.history[3:]) >= 1  # sampling after the resume
    assert [r.loss["total"] for r in resumed.history] == [r.loss["total"] for r in straight.history]
    assert torch.equal(resumed_lj.sigma.detach(), straight_lj.sigma.detach())
