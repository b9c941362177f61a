"""Pair lists searched once per store: the cache against a fresh search, the update with and
without it (same loss and gradient), the number of searches per update, and the size cap."""

import numpy as np
import pytest
import torch
from ase import Atoms

from difftre_torch.gradient import difftre_gradient, reweight
from difftre_torch.loss import observable_loss
from difftre_torch.neighbors import PAIR_BYTES, PairCache, neighbor_pairs
from difftre_torch.objective import fill_store
from difftre_torch.observables.thermo import pressure
from difftre_torch.pair_reuse import cache_pairs, store_pairs
from difftre_torch.potentials import LennardJones
from difftre_torch.potentials.base import WithPairs, evaluate
from difftre_torch.potentials.correction import CorrectedPotential, PairCorrection, PairCorrectionSpec
from difftre_torch.reweighting import reweighted_mean

SPEC = PairCorrectionSpec(species=[6, 7], cutoff_A=4.5, centers_A=[1.5, 2.5, 3.5], width_A=0.6)
T_K = 300.0


def _snapshots(n: int = 7, seed: int = 0):
    """n snapshots of 12 C/N atoms in triclinic cells that differ per snapshot (as in NPT)."""
    rng = np.random.default_rng(seed)
    base = np.array([[5.6, 0.0, 0.0], [1.1, 5.3, 0.0], [0.4, -0.3, 5.8]])
    pos, cells = [], []
    for k in range(n):
        cell = base * (1.0 + 0.02 * rng.standard_normal())
        atoms = Atoms(numbers=[6, 7] * 6, scaled_positions=rng.random((12, 3)), cell=cell, pbc=True)
        pos.append(atoms.positions)
        cells.append(atoms.cell.array)
    return (torch.tensor(np.stack(pos)), torch.tensor(np.stack(cells)),
            torch.tensor([6, 7] * 6, dtype=torch.long))


def _potential(seed: int = 1):
    corr = PairCorrection(SPEC, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        corr.coefficients.copy_(0.05 * torch.randn(corr.coefficients.shape, generator=g, dtype=torch.float64))
    return CorrectedPotential(LennardJones(sigma_A=1.2, epsilon_eV=0.01, cutoff_A=3.0), corr)


def _sorted(pairs, n_atoms):
    key = ((pairs.batch * n_atoms + pairs.i) * n_atoms + pairs.j) * 10 ** 6 \
        + ((pairs.shifts.round().long() + 50) * torch.tensor([10 ** 4, 10 ** 2, 1])).sum(1)
    return torch.sort(key).values


@pytest.mark.parametrize("full", [True, False])
def test_cache_gives_the_pairs_of_a_fresh_search(full):
    pos, cells, _ = _snapshots()
    cache = PairCache.build(pos, cells, 4.5, full)
    assert len(cache) == pos.shape[0]
    assert cache.i.dtype == torch.int32 and cache.shifts.dtype == torch.int16
    assert cache.nbytes == PAIR_BYTES * int(cache.offsets[-1])
    for sl in (slice(0, 3), slice(3, 7), slice(2, 5), slice(6, 7)):
        got = cache.pairs(sl, pos.dtype)
        want = neighbor_pairs(pos[sl], cells[sl], 4.5, full=full)
        assert got.full == full and got.shifts.dtype == pos.dtype
        assert len(got) == len(want) > 0
        assert torch.equal(_sorted(got, 12), _sorted(want, 12))
    with pytest.raises(ValueError, match="contiguous"):
        cache.pairs(slice(0, 6, 2), pos.dtype)


def test_merged_cache_equals_one_search_of_the_merged_snapshots():
    pos, cells, _ = _snapshots(7)
    parts = [PairCache.build(pos[:3], cells[:3], 4.5, True), PairCache.build(pos[3:], cells[3:], 4.5, True)]
    merged, whole = PairCache.concatenate(parts), PairCache.build(pos, cells, 4.5, True)
    for name in ("offsets", "i", "j", "shifts"):
        assert torch.equal(getattr(merged, name), getattr(whole, name))
    assert PairCache.concatenate([parts[0], None]) is None
    assert PairCache.concatenate([parts[0], PairCache.build(pos[3:], cells[3:], 4.0, True)]) is None


def test_bound_potential_gives_the_same_energy_forces_and_stress():
    pos, cells, z = _snapshots()
    pot = _potential()
    bound = WithPairs(pot, PairCache.build(pos, cells, pot.r_max_A, True).pairs(slice(0, 7), pos.dtype))
    assert bound.r_max_A == pot.r_max_A  # attributes are the potential's
    a = evaluate(pot, pos, cells, z, forces=True, stress=True)
    b = evaluate(bound, pos, cells, z, forces=True, stress=True)
    for x, y in ((a.energy, b.energy), (a.forces, b.forces), (a.stress, b.stress)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def _loss(store):
    target = torch.tensor(0.05, dtype=torch.float64)

    def loss_fn(weights, values):
        loss = observable_loss(reweighted_mean(weights[0], values[0]["pressure"]), target)
        return loss, {"pressure": loss}
    return loss_fn


def _chunk_fn(potential, positions, cells, numbers, store, create_graph):
    p = pressure(potential, positions, cells, numbers, store.temperature_K, create_graph=create_graph)
    return {"energy": potential(positions, cells, numbers), "pressure": p}


class _Searches:
    """Counts vesin searches (each snapshot's ``compute`` call)."""

    def __init__(self, monkeypatch):
        from vesin.torch import NeighborList

        self.calls = 0
        original = NeighborList.compute

        def counted(search, *args, **kwargs):
            self.calls += 1
            return original(search, *args, **kwargs)
        monkeypatch.setattr(NeighborList, "compute", counted)


def test_update_searches_each_store_once_and_matches_the_uncached_update(monkeypatch):
    pos, cells, z = _snapshots(9)
    searches = _Searches(monkeypatch)
    pot = _potential()
    store = fill_store("s", pos, cells, z, pot, [], temperature_K=T_K, pressure_GPa=None, chunk_size=4)
    assert searches.calls == 1 + 9  # the size estimate (first snapshot), then every snapshot once
    assert store.pair_cache is not None
    with torch.no_grad():
        pot.correction.coefficients.mul_(1.3)  # away from θ̃, so the weights are not uniform
    params = [p for p in pot.parameters() if p.requires_grad]
    cached = [difftre_gradient(pot, [store], _loss(store), params, chunk_fn=_chunk_fn, chunk_size=4)
              for _ in range(2)]
    reweight(pot, [store], chunk_fn=_chunk_fn, chunk_size=4)
    assert searches.calls == 10  # two updates and a reweighting: no search
    fresh = difftre_gradient(pot, [store], _loss(store), params, chunk_fn=_chunk_fn, chunk_size=4,
                             pair_cache_mb=0)
    # without the cache both passes search every snapshot twice (the pressure's and the energy's call)
    assert searches.calls == 10 + 2 * 2 * 9
    for result in cached:
        torch.testing.assert_close(result.loss, fresh.loss, rtol=1e-12, atol=0)
        assert float(fresh.loss) > 0
        for g, h in zip(result.grads, fresh.grads):
            torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-14)
        assert max(float(g.abs().max()) for g in result.grads) > 0


def test_weights_are_uniform_at_the_reference_parameters():
    pos, cells, z = _snapshots(9)
    pot = _potential()
    store = fill_store("s", pos, cells, z, pot, [], temperature_K=T_K, pressure_GPa=None, chunk_size=4)
    rw = reweight(pot, [store], chunk_size=4)
    assert torch.equal(rw.weights[0], torch.full((9,), 1 / 9, dtype=rw.weights[0].dtype))


def test_cap_refuses_a_cache_too_large_and_is_remembered(monkeypatch):
    pos, cells, z = _snapshots(5)
    pot = _potential()
    per_snapshot = len(PairCache.build(pos[:1], cells[:1], pot.r_max_A, True).i)
    just_below = (per_snapshot * PAIR_BYTES * 5 - 1) / 2 ** 20
    assert cache_pairs(pot, pos, cells, just_below) is None
    assert cache_pairs(pot, pos, cells, 2 * just_below) is not None
    assert cache_pairs(pot, pos, cells, 0) is None
    store = fill_store("s", pos, cells, z, pot, [], temperature_K=T_K, pressure_GPa=None,
                       pair_cache_mb=just_below)
    assert store.pair_cache is None
    searches = _Searches(monkeypatch)
    assert store_pairs(pot, store, just_below) is None
    assert searches.calls == 1  # the estimate, once
    assert store_pairs(pot, store, just_below) is None
    assert searches.calls == 1


def test_potential_without_a_list_gets_no_cache():
    pos, cells, _ = _snapshots(3)

    class Plain(torch.nn.Module):
        cutoff_A = 4.0

        def forward(self, positions, cell, numbers):
            return positions.sum((1, 2))
    assert cache_pairs(Plain(), pos, cells) is None
