"""MD health checks of both samplers (:mod:`difftre_torch.sampling.blowups`): each reason on
hand-made tensors, the settings' validation, and the samplers on a 32-atom LJ argon fluid: a bad
start structure, a 500 fs time step, an injected runaway that is rolled back, the same reason in
both samplers, and healthy trajectories that do not depend on the checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk

from difftre_torch.potentials import LennardJones
from difftre_torch.sampling.base import SamplerConfig, StatePoint
from difftre_torch.sampling.batched import BatchedSampler
from difftre_torch.sampling.blowups import MDBlowUpError, blow_up_reasons
from difftre_torch.sampling.sampler import AseSampler


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- blow_up_reasons

L, MASS = 10.0, 40.0
GRID = torch.tensor([[1.0, 1.0, 1.0], [6.0, 1.0, 1.0], [1.0, 6.0, 1.0], [6.0, 6.0, 6.0]], dtype=torch.float64)


def _momenta_at(temperature_K: float) -> torch.Tensor:
    """[4, 3] momenta (amu·Å/t_ASE) with zero total and kinetic temperature exactly
    ``temperature_K`` with 3N − 3 = 9 degrees of freedom."""
    pattern = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]], dtype=torch.float64)
    kinetic = (pattern ** 2).sum() / MASS  # Σ|p|²/m for unit amplitude
    return pattern * (9 * units.kB * temperature_K / kinetic) ** 0.5


def _check(positions=None, momenta=None, cells=None, **kwargs):
    """blow_up_reasons of a batch built from one 4-atom state (R = 2 where a test stacks two)."""
    x = GRID[None] if positions is None else positions
    R = x.shape[0]
    p = _momenta_at(300.0)[None].expand(R, 4, 3) if momenta is None else momenta
    h = (torch.eye(3, dtype=torch.float64) * L)[None].expand(R, 3, 3) if cells is None else cells
    settings = dict(min_distance_A=1.0, max_volume_ratio=2.0, reference_cell=torch.eye(3, dtype=torch.float64) * L,
                    max_cell_length_ratio=2.0, masses=torch.full((4,), MASS, dtype=torch.float64),
                    temperature_K=torch.full((R,), 300.0, dtype=torch.float64), max_temperature_ratio=5.0,
                    previous_positions=GRID[None].expand(R, 4, 3), previous_cells=h, steps_since=torch.ones(R),
                    max_step_displacement_A=0.5)
    return blow_up_reasons(x, p, h, L ** 3, **{**settings, **kwargs})


def test_healthy_state_has_no_reason():
    assert _check() == [None]


def test_kinetic_temperature_per_replica_target():
    """T = Σ|p|²/m/((3N − 3)k_B) against each replica's own T₀: 1800 K is 6× a 300 K target, but
    only 3× a 600 K one."""
    p = _momenta_at(1800.0)[None].expand(2, 4, 3)
    reasons = _check(GRID[None].expand(2, 4, 3), p, temperature_K=torch.tensor([300.0, 600.0], dtype=torch.float64))
    assert reasons == ["kinetic temperature 1800 K is 6× the target 300 K", None]
    assert _check(momenta=p[:1], max_temperature_ratio=0.0) == [None]  # check off
    assert _check(momenta=p[:1], masses=None) == [None]  # no masses: not checked
    one = blow_up_reasons(GRID[None, :1], torch.full((1, 1, 3), 1e6, dtype=torch.float64),
                          torch.eye(3, dtype=torch.float64)[None] * L, L ** 3, min_distance_A=1.0,
                          max_volume_ratio=2.0, masses=torch.tensor([MASS], dtype=torch.float64),
                          temperature_K=torch.tensor([300.0]), max_temperature_ratio=5.0)
    assert one == [None]  # one atom with its centre of mass fixed has no kinetic degree of freedom


def test_displacement_per_step_scales_with_the_steps_since_the_last_check():
    moved = GRID.clone()
    moved[2, 0] += 3.0
    assert _check(moved[None], steps_since=torch.tensor([5])) == [
        "atom 2 moved 3 Å in 5 step(s), more than 0.5 Å per step"]
    assert _check(moved[None], steps_since=torch.tensor([6])) == [None]  # 3 Å in 6 steps is allowed
    assert _check(moved[None], steps_since=torch.tensor([5]), max_step_displacement_A=0.0) == [None]
    # unwrapped positions: an atom that left the cell by 0.2 Å moved 0.2 Å, not a cell length
    out = GRID.clone()
    out[3, 0] = L + 0.2
    previous = GRID.clone()
    previous[3, 0] = L - 0.1
    assert _check(out[None], previous_positions=previous[None]) == [None]


def test_displacement_follows_the_cell():
    """An NPT cell change moves atoms with it: positions scaled with the cell (same fractional
    coordinates) are no displacement, even where x changes by 0.6 Å in one step."""
    scale = 1.1
    before = (torch.eye(3, dtype=torch.float64) * L)[None]
    cells = before * scale
    assert (GRID * scale - GRID).norm(dim=-1).max() > 0.5
    assert _check(GRID[None] * scale, cells=cells, previous_cells=before) == [None]
    # the same cell change with the atoms left behind is a displacement
    assert _check(GRID[None], cells=cells, previous_cells=before)[0].startswith("atom 3 moved")


def test_cell_vector_lengths_catch_a_collapse_at_constant_volume():
    flat = torch.diag(torch.tensor([2.5 * L, 0.4 * L, L], dtype=torch.float64))[None]
    assert _check(GRID[None] @ torch.diag(torch.tensor([2.5, 0.4, 1.0], dtype=torch.float64)), cells=flat,
                  previous_cells=flat) == ["cell vector a is 2.50× its start length"]
    thin = torch.diag(torch.tensor([L, 0.4 * L, 2.5 * L], dtype=torch.float64))[None]
    assert _check(cells=thin, previous_cells=thin, max_step_displacement_A=0.0) == [
        "cell vector b is 0.40× its start length"]
    # a sheared cell (c tilted by 1.8 L, volume unchanged): |c| = 2.06 L
    sheared = (torch.eye(3, dtype=torch.float64) * L)[None].clone()
    sheared[0, 2, 0] = 1.8 * L
    assert _check(cells=sheared, previous_cells=sheared) == ["cell vector c is 2.06× its start length"]
    assert _check(cells=sheared, previous_cells=sheared, max_cell_length_ratio=0.0) == [None]
    assert _check(cells=sheared, previous_cells=sheared, reference_cell=None) == [None]


def test_the_first_failing_check_is_the_reason():
    """Order: non-finite, volume, cell vector length, kinetic temperature, close pair,
    displacement. An atom put 0.2 Å from another has also moved far: the pair is the reason;
    with a runaway temperature as well, the temperature is (its positions mean nothing)."""
    close = GRID.clone()
    close[3] = close[0] + torch.tensor([0.2, 0.0, 0.0], dtype=torch.float64)
    assert _check(close[None]) == ["atoms 0 and 3 are 0.200 Å apart, closer than 1.0 Å"]
    hot = _momenta_at(1e30)[None]
    assert _check(close[None], hot)[0].startswith("kinetic temperature 1e+30 K is 3.33e+27×")
    big = torch.eye(3, dtype=torch.float64)[None] * L * 1.5
    assert _check(close[None], hot, big)[0].startswith("cell volume")
    nan = close.clone()
    nan[1, 1] = float("nan")
    assert _check(nan[None], hot, big) == ["non-finite positions, momenta or cell"]


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("name,bad,expected", [
    ("max_temperature_ratio", 1.0, "> 1, or 0"), ("max_temperature_ratio", float("nan"), "> 1, or 0"),
    ("max_step_displacement_A", -0.1, ">= 0"), ("max_cell_length_ratio", 0.5, "> 1, or 0"),
])
def test_new_settings_are_validated(name, bad, expected):
    with pytest.raises(ValueError, match=rf"SamplerConfig\.{name}: expected .*{expected}.*got"):
        SamplerConfig(**{name: bad})
    SamplerConfig(**{name: 0.0})  # 0 turns the check off


# ----------------------------------------------------------------------------- the samplers


def _lj_fluid() -> Atoms:
    """32 argon atoms at ρ* ≈ 0.8 (fcc start; melts at T* = 1.5 ≈ 181 K), as in test_batched."""
    a = (4 * 3.405 ** 3 / 0.8) ** (1 / 3)
    return bulk("Ar", "fcc", a=a, cubic=True).repeat(2)


def _lj() -> LennardJones:
    return LennardJones(3.405, 0.0104, 8.5)


LJ = dict(timestep_fs=5.0, friction_per_fs=0.02, equilibration_steps=30, reequilibration_steps=10,
          snapshots_per_replica=5, stride=4, min_distance_A=1.5, progress=False)
SAMPLERS = {"ase": AseSampler, "batched": BatchedSampler}
OFF = dict(max_temperature_ratio=0.0, max_step_displacement_A=0.0, max_cell_length_ratio=0.0)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_overlapping_atoms_at_the_start_raise_before_the_first_step(kind):
    atoms = _lj_fluid()
    atoms.positions[7] = atoms.positions[3] + [0.1, 0.0, 0.0]
    sampler = SAMPLERS[kind](atoms, [StatePoint("T181", 181.0, replicas=2)], SamplerConfig(**LJ))
    steps = []
    with pytest.raises(MDBlowUpError, match=r"'T181', replica 0: the start structure .*atoms 3 and 7 are "
                                            r"0\.100 Å apart") as caught:
        sampler.sample(_lj(), on_step=lambda *args: steps.append(1))
    assert (caught.value.state_point, caught.value.replica, caught.value.step) == ("T181", 0, None)
    assert caught.value.reason == "atoms 3 and 7 are 0.100 Å apart, closer than 1.5 Å"
    assert steps == [] and sampler.rounds == 0 and sampler.blow_ups == []


@pytest.mark.parametrize("kind", SAMPLERS)
def test_a_500_fs_step_is_caught_at_the_first_check_and_stops_the_run(kind):
    """Measured without the new checks (and min_distance_A 0): one atom 10¹⁶–10¹⁸ Å away and
    T ~ 10³⁵ K, written as a normal result. Now every attempt fails at the first check (step
    10) on the kinetic temperature, and after max_blow_ups the run stops with no result."""
    config = SamplerConfig(**{**LJ, "timestep_fs": 500.0, "min_distance_A": 0.0, "max_blow_ups": 2})
    sampler = SAMPLERS[kind](_lj_fluid(), [StatePoint("T181", 181.0)], config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(MDBlowUpError, match=r"'T181', replica 0 blew up 3 times in its equilibration segment, "
                                                r"more than SamplerConfig.max_blow_ups = 2.*timestep_fs \(now 500 fs\)"
                           ) as caught:
            sampler.sample(_lj())
    error = caught.value
    assert (error.state_point, error.replica, error.step) == ("T181", 0, 10)
    assert error.reason.startswith("kinetic temperature"), error.reason
    assert len(sampler.blow_ups) == 3 and sampler.rounds == 0
    assert all(b.startswith("T181/replica 0: step 10: kinetic temperature") for b in sampler.blow_ups), sampler.blow_ups


def _runaway_ase(at_step, scale, replica=1):
    done = []  # once: a rolled-back integrator passes the same step number again

    def hook(p, r, dyn):
        if r == replica and dyn.nsteps == at_step and not done:
            done.append(1)
            dyn.atoms.set_momenta(dyn.atoms.get_momenta() * scale, apply_constraint=False)
    return hook


def _runaway_batched(at_step, scale, replica=1):
    def hook(sampler):
        if sampler.step == at_step:
            sampler.state.momenta[replica] *= scale
    return hook


@pytest.mark.parametrize("kind", SAMPLERS)
def test_a_runaway_replica_is_rolled_back_and_no_frame_of_it_is_returned(kind):
    """Momenta of replica 1 × 30 (T ≈ 900 × 181 K) at step 35 (production step 5 of 20, stride
    4): caught at the check at step 40, its frames since the last check (production steps 4 and
    8) are dropped, it re-runs from step 30 with new noise and every replica ends with its 5 frames. The frames
    recorded while it ran away (the hook copies its positions at steps 35–40) are not in the
    result."""
    atoms, point = _lj_fluid(), StatePoint("T181", 181.0, replicas=2)
    config = SamplerConfig(**LJ)
    at_step = LJ["equilibration_steps"] + 5
    seen = []
    if kind == "ase":
        inject = _runaway_ase(at_step, 30.0)

        def hook(p, r, dyn):
            inject(p, r, dyn)
            if r == 1 and at_step <= dyn.nsteps <= at_step + 5 and len(seen) < 6:  # not the re-run
                seen.append(torch.as_tensor(dyn.atoms.positions.copy()))
    else:
        inject = _runaway_batched(at_step, 30.0)

        def hook(sampler):
            inject(sampler)
            if at_step <= sampler.step <= at_step + 5:
                seen.append(sampler.state.positions[1].clone())
    sampler = SAMPLERS[kind](atoms, [point], config)
    with pytest.warns(RuntimeWarning, match="blow-up"):
        raw = sampler.sample(_lj(), on_step=hook)[0]
    assert len(sampler.blow_ups) == 1 and len(seen) == 6, (sampler.blow_ups, len(seen))
    assert sampler.blow_ups[0].startswith("T181/replica 1: step ")
    assert "kinetic temperature" in sampler.blow_ups[0] or "moved" in sampler.blow_ups[0], sampler.blow_ups
    assert [int((raw.replica == r).sum()) for r in range(2)] == [5, 5]
    assert raw.stats["discarded_frames"] == 2
    assert raw.stats["kinetic_temperature_K"] < 2 * 181.0
    frames = raw.positions[raw.replica == 1].to(torch.float64)
    for bad in seen:
        assert not any(torch.equal(bad, frame) for frame in frames)


def test_both_samplers_give_the_same_temperature_reason():
    """The same momenta put into both samplers at check step 10 give the same message."""
    atoms, point = _lj_fluid(), StatePoint("T181", 181.0)
    config = SamplerConfig(**{**LJ, "equilibration_steps": 10, "snapshots_per_replica": 1})
    rng = np.random.default_rng(3)
    momenta = rng.normal(size=(len(atoms), 3))
    momenta -= momenta.mean(0)
    kinetic = (momenta ** 2).sum() / atoms.get_masses()[0]
    momenta *= (93 * units.kB * 1810.0 / kinetic) ** 0.5  # T = 1810 K = 10 × 181 K
    done = set()

    def ase_hook(p, r, dyn):
        if dyn.nsteps == 10 and "ase" not in done:
            done.add("ase")
            dyn.atoms.set_momenta(momenta, apply_constraint=False)

    def batched_hook(sampler):
        if sampler.step == 10 and "batched" not in done:
            done.add("batched")
            sampler.state.momenta[0] = torch.as_tensor(momenta)

    ase, batched = AseSampler(atoms, [point], config), BatchedSampler(atoms, [point], config)
    with pytest.warns(RuntimeWarning, match="blow-up"):
        ase.sample(_lj(), on_step=ase_hook)
    with pytest.warns(RuntimeWarning, match="blow-up"):
        batched.sample(_lj(), on_step=batched_hook)
    expected = ["T181/replica 0: step 10: kinetic temperature 1810 K is 10× the target 181 K"]
    assert ase.blow_ups == batched.blow_ups == expected, (ase.blow_ups, batched.blow_ups)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_healthy_trajectories_do_not_depend_on_the_checks(kind):
    """The checks only read the state: with the new ones on (defaults) or off, two rounds give the
    same frames bit for bit, and none triggers in NVT or NPT."""
    atoms = _lj_fluid()
    points = [StatePoint("T181", 181.0, replicas=2), StatePoint("P", 181.0, pressure_GPa=0.05)]
    runs = []
    for extra in ({}, OFF):
        sampler = SAMPLERS[kind](atoms, points, SamplerConfig(**LJ, barostat_tau_fs=200.0, **extra))
        runs.append([sampler.sample(_lj()) for _ in range(2)])
        assert sampler.blow_ups == []
    for first, second in zip(*runs):
        for a, b in zip(first, second):
            assert torch.equal(a.positions, b.positions) and torch.equal(a.cells, b.cells)
