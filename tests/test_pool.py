"""The snapshot pool: the incremental energy matrix against a direct evaluation, retention rules,
the DiffTRe gradient with pooled weights against finite differences, capacity 1 as plain DiffTRe,
and the checkpoint round trip."""

import math

import numpy as np
import pytest
import torch
from ase import units

from difftre_torch.gradient import difftre_gradient
from difftre_torch.multistate import free_energies
from difftre_torch.potentials.analytic import HarmonicOscillators
from difftre_torch.potentials.base import parameters_at
from difftre_torch.reweighting import boltzmann_weights, reweighted_mean
from difftre_torch.sampling.pool import SnapshotPool
from difftre_torch.sampling.store import SnapshotStore

T = 300.0
KT = float(units.kB * T)
N_ATOMS = 2


def make_potential(k: float) -> HarmonicOscillators:
    return HarmonicOscillators(torch.zeros(N_ATOMS, 3, dtype=torch.float64), k)


def trajectory(potential, n: int, seed: int) -> SnapshotStore:
    """Exact Boltzmann samples at the potential's current stiffness, U_θ as reference energies,
    the observable r² per snapshot (Å²)."""
    k = float(potential.stiffness.detach())
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(0.0, math.sqrt(KT / k), size=(n, N_ATOMS, 3)))
    cells = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1) * 20.0
    numbers = torch.ones(N_ATOMS, dtype=torch.long)
    with torch.no_grad():
        u = potential(x, cells, numbers)
    return SnapshotStore(numbers=numbers, positions=x, cells=cells, reference_energies=u, temperature_K=T,
                         observables={"r2": (x * x).sum(dim=(-1, -2))}, replica=torch.zeros(n, dtype=torch.long))


def energy_fn_of(potential):
    params = [potential.stiffness]

    def energy_fn(store, theta):
        with parameters_at(params, theta), torch.no_grad():
            return potential(store.positions, store.cells, store.numbers)
    return energy_fn


def fill(pool: SnapshotPool, potential, springs, n: int = 200):
    """Sample at each stiffness in turn (the potential moved there), adding each trajectory."""
    for r, k in enumerate(springs):
        with torch.no_grad():
            potential.stiffness.fill_(k)
        pool.add(trajectory(potential, n, seed=r), [potential.stiffness], energy_fn_of(potential), r)


def test_matrix_and_reference_match_a_direct_evaluation():
    potential = make_potential(1.0)
    pool = SnapshotPool(capacity=4)
    fill(pool, potential, [1.0, 1.5, 2.5])
    assert float(potential.stiffness.detach()) == 2.5  # evaluating at old θ restored the current one
    merged = pool.merged
    r2 = merged.positions.pow(2).sum(dim=(-1, -2))
    direct = torch.stack([0.5 * k * r2 for k in (1.0, 1.5, 2.5)])
    torch.testing.assert_close(pool.energies, direct, rtol=1e-14, atol=1e-14)
    f = free_energies(direct / KT, [200, 200, 200])
    np.testing.assert_allclose(pool.f, f, atol=1e-12)
    # the merged store's weights at θ are MBAR's: ∝ exp(−βU_θ) / Σ_k N_k exp(f_k − βU_k)
    u_theta = 0.5 * 2.0 * r2
    log_w = -u_theta / KT - torch.logsumexp(torch.log(torch.tensor(200.0)) + torch.tensor(f)[:, None]
                                             - direct / KT, dim=0)
    torch.testing.assert_close(boltzmann_weights(u_theta, merged.reference_energies, KT),
                               torch.softmax(log_w, 0), rtol=1e-10, atol=1e-14)
    assert pool.segments.tolist() == [0] * 200 + [1] * 200 + [2] * 200
    assert pool.size == 600
    # the merged snapshots' energies at the newest θ (what the first update after a sample uses)
    torch.testing.assert_close(pool.newest_energies(), 0.5 * 2.5 * r2, rtol=1e-14, atol=1e-14)
    assert pool.newest_energies().dtype == merged.reference_energies.dtype


def test_capacity_one_is_todays_store():
    potential = make_potential(1.0)
    pool = SnapshotPool(capacity=1)
    first = trajectory(potential, 50, 0)
    pool.add(first, [potential.stiffness], energy_fn_of(potential), 0)
    assert pool.merged is first
    assert pool.newest_energies() is first.reference_energies
    second = trajectory(potential, 50, 1)
    assert pool.add(second, [potential.stiffness], energy_fn_of(potential), 1) == [0]
    assert pool.merged is second and len(pool) == 1


def test_recent_keeps_the_last_k():
    potential = make_potential(1.0)
    pool = SnapshotPool(capacity=2, retention="recent")
    fill(pool, potential, [1.0, 1.2, 1.4, 1.6], n=50)
    assert pool.rounds == [2, 3] and len(pool.merged) == 100
    r2 = pool.merged.positions.pow(2).sum(dim=(-1, -2))
    torch.testing.assert_close(pool.energies, torch.stack([0.7 * r2, 0.8 * r2]), rtol=1e-14, atol=1e-14)


def test_share_drops_a_trajectory_far_from_the_current_parameters():
    potential = make_potential(1.0)
    pool = SnapshotPool(capacity=5, retention="share", min_share=0.05)
    fill(pool, potential, [20.0, 1.0, 1.05], n=200)  # the stiff one covers k = 1.05 hardly at all
    assert pool.rounds == [1, 2]
    shares = pool.shares(boltzmann_weights(pool.energies[-1], pool.merged.reference_energies, KT))
    assert min(shares) >= 0.05 and sum(shares) == pytest.approx(1.0)


def test_pooled_gradient_matches_finite_differences():
    potential = make_potential(1.0)
    pool = SnapshotPool(capacity=3)
    fill(pool, potential, [1.0, 1.3, 1.7], n=300)
    store = pool.merged
    target = torch.tensor(2.5 * KT / 1.2)  # ⟨r²⟩ = 3 N kT / k; any target gives a non-zero gradient

    def loss_fn(weights, values):
        mean = reweighted_mean(weights[0], values[0]["r2"])
        loss = ((mean - target) / target) ** 2
        return loss, {"r2": loss}

    with torch.no_grad():
        potential.stiffness.fill_(1.45)
    result = difftre_gradient(potential, [store], loss_fn, [potential.stiffness], chunk_size=64)

    def loss_at(k: float) -> float:
        with torch.no_grad():
            u = 0.5 * k * store.positions.pow(2).sum(dim=(-1, -2))
            w = boltzmann_weights(u, store.reference_energies, KT)
            return float(loss_fn([w], [store.observables])[0])

    h = 1e-5
    fd = (loss_at(1.45 + h) - loss_at(1.45 - h)) / (2 * h)
    assert float(result.grads[0]) == pytest.approx(fd, rel=1e-6)
    assert float(result.loss) == pytest.approx(loss_at(1.45), rel=1e-12)


def test_checkpoint_round_trip():
    potential = make_potential(1.0)
    pool = SnapshotPool(capacity=3)
    fill(pool, potential, [1.0, 1.3], n=40)
    state = pool.state_dict()
    again = SnapshotPool(capacity=3)
    again.load_state_dict(state, SnapshotStore.from_state_dict)
    assert torch.equal(again.merged.reference_energies, pool.merged.reference_energies)
    assert torch.equal(again.energies, pool.energies) and again.rounds == pool.rounds
    with torch.no_grad():
        potential.stiffness.fill_(1.6)
    new = trajectory(potential, 40, 9)
    pool.add(new, [potential.stiffness], energy_fn_of(potential), 2)
    again.add(new, [potential.stiffness], energy_fn_of(potential), 2)
    assert torch.equal(again.merged.reference_energies, pool.merged.reference_energies)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="capacity"):
        SnapshotPool(capacity=0)
    with pytest.raises(ValueError, match="retention"):
        SnapshotPool(retention="oldest")
    with pytest.raises(ValueError, match="parameters_at"):
        with parameters_at([torch.nn.Parameter(torch.zeros(2))], [torch.zeros(3)]):
            pass


def test_trajectories_that_do_not_overlap_are_dropped():
    """Springs 1 and 200 eV/Å² share no configurations: MBAR has no solution to its tolerance, so
    the pool keeps the newest trajectory (whose weight at its own θ is everything anyway)."""
    potential = HarmonicOscillators(torch.zeros(64, 3, dtype=torch.float64), 1.0)

    def sample(k, seed):
        with torch.no_grad():
            potential.stiffness.fill_(k)
        rng = np.random.default_rng(seed)
        x = torch.tensor(rng.normal(0.0, math.sqrt(KT / k), size=(40, 64, 3)))
        cells = torch.eye(3, dtype=torch.float64).repeat(40, 1, 1) * 20.0
        with torch.no_grad():
            u = potential(x, cells, torch.ones(64, dtype=torch.long))
        return SnapshotStore(numbers=torch.ones(64, dtype=torch.long), positions=x, cells=cells,
                             reference_energies=u, temperature_K=T, replica=torch.zeros(40, dtype=torch.long))

    pool = SnapshotPool(capacity=3)
    pool.add(sample(1.0, 0), [potential.stiffness], energy_fn_of(potential), 0)
    dropped = pool.add(sample(200.0, 1), [potential.stiffness], energy_fn_of(potential), 1)
    assert dropped == [0] and pool.rounds == [1] and len(pool.merged) == 40
