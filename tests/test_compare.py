"""Model-vs-experiment comparison (difftre_torch/compare.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

import difftre_torch
from difftre_torch.compare import (
    BlockAccumulator,
    block_mean_sem,
    chi2_per_bin,
    compare_samples,
    compare_stream,
    r_weighted,
    sample_and_compare,
)
from difftre_torch.experiment.readers import read_experiment
from difftre_torch.experiment.target import Target
from difftre_torch.potentials import LennardJones
from difftre_torch.sampling.base import RawSamples, SamplerConfig, StatePoint
from difftre_torch.sampling.sampler import AseSampler

DEFAULT = Path(difftre_torch.__file__).resolve().parent / "data" / "lj_argon"


def test_r_weighted_identities():
    rng = np.random.default_rng(0)
    o = rng.normal(size=50)
    assert r_weighted(o, o) == 0.0
    assert r_weighted(o, np.zeros_like(o)) == pytest.approx(1.0)
    assert r_weighted(o, 0.5 * o) == pytest.approx(0.5)
    # weights: a residual only where σ is large counts little
    sigma = np.ones_like(o)
    sigma[:10] = 100.0
    c = o.copy()
    c[:10] += 1.0
    assert r_weighted(o, c, sigma) < 0.03 * r_weighted(o, c)
    # by hand
    w = 1 / sigma**2
    assert r_weighted(o, c, sigma) == pytest.approx(np.sqrt(np.sum(w * (o - c) ** 2) / np.sum(w * o**2)))


def test_chi2_per_bin():
    o, c = np.array([1.0, 2.0]), np.array([1.1, 1.7])
    assert chi2_per_bin(o, c, [0.1, 0.1]) == pytest.approx((1 + 9) / 2)
    assert chi2_per_bin(o, c, [0.1, 0.1], [0.1, 0.1]) == pytest.approx((0.5 + 4.5) / 2)
    assert chi2_per_bin(o, c) == pytest.approx((0.01 + 0.09) / 2)


def test_block_sem_known_blocks_and_white_noise():
    # two replicas, two blocks each, block means 0, 2 | 4, 6 (leading frame of replica 1 dropped)
    values = torch.tensor([0.0, 0.0, 2.0, 2.0, 9.0, 4.0, 4.0, 6.0, 6.0])[:, None]
    replica = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    mean, sem = block_mean_sem(values, replica, n_blocks=2)
    blocks = torch.tensor([0.0, 2.0, 4.0, 6.0])
    assert mean.item() == pytest.approx(values.mean().item())
    assert sem.item() == pytest.approx((blocks.std() / 2).item())
    # white noise: the block σ estimates σ/sqrt(S) (within its own ~25 % scatter at 20 blocks)
    rng = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 3, generator=rng, dtype=torch.float64)
    _, sem = block_mean_sem(x, torch.zeros(20000, dtype=torch.long), n_blocks=20)
    assert torch.all((sem / (1 / np.sqrt(20000)) - 1).abs() < 0.6)
    _, one = block_mean_sem(x[:5], torch.zeros(5, dtype=torch.long), n_blocks=1)
    assert torch.isnan(one).all()


def test_compare_samples_equals_direct_frame_mean_and_rejects_theta_observables():
    atoms = read(DEFAULT / "lj_argon_start.extxyz")
    rng = np.random.default_rng(2)
    pos = torch.as_tensor(atoms.positions[None] + rng.normal(scale=0.1, size=(6, len(atoms), 3)))
    cells = torch.as_tensor(np.repeat(atoms.cell.array[None], 6, 0))
    numbers = torch.as_tensor(atoms.numbers)
    samples = RawSamples(StatePoint("T", 100.0), pos, cells, torch.tensor([0, 0, 0, 1, 1, 1]))
    r = torch.linspace(2.0, 6.0, 21, dtype=torch.float64)
    from difftre_torch.observables.registry import static_observables

    target = Target("rdf", "rdf", torch.ones(21), x=r)
    direct = static_observables(pos, cells, numbers, [target], 6)["rdf"].mean(0)
    out = compare_samples(samples, numbers, [target], n_blocks=3)
    assert np.allclose(out.targets["rdf"].model, direct.numpy())
    assert out.targets["rdf"].r_w == pytest.approx(r_weighted(np.ones(21), direct.numpy()))
    assert out.frames == 6 and out.to_json()["targets"]["rdf"]["x"][0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="depends on θ"):
        compare_samples(samples, numbers, [Target("p", "pressure", [0.0])])


def test_streamed_frames_give_the_numbers_of_frames_in_memory():
    """compare_stream over chunks that do not divide the blocks (two replicas of 11 and 8
    frames, chunks of 3, 4 blocks) equals compare_samples on all frames at once, to rounding."""
    atoms = read(DEFAULT / "lj_argon_start.extxyz")
    rng = np.random.default_rng(5)
    frames = [11, 8]
    pos = torch.as_tensor(atoms.positions[None] + rng.normal(scale=0.15, size=(sum(frames), len(atoms), 3)))
    cells = torch.as_tensor(np.repeat(atoms.cell.array[None], sum(frames), 0))
    replica = torch.tensor([0] * frames[0] + [1] * frames[1])
    numbers = torch.as_tensor(atoms.numbers)
    target = Target("rdf", "rdf", torch.ones(21), x=torch.linspace(2.0, 6.0, 21, dtype=torch.float64))
    whole = compare_samples(RawSamples(StatePoint("T", 100.0), pos, cells, replica), numbers, [target], n_blocks=4)

    def chunks(size=3):
        for k in (0, 1):
            idx = torch.nonzero(replica == k)[:, 0]
            for a in range(0, len(idx), size):
                yield k, pos[idx[a:a + size]], cells[idx[a:a + size]]

    streamed = compare_stream(chunks(), frames, numbers, [target], "T", n_blocks=4)
    a, b = whole.targets["rdf"], streamed.targets["rdf"]
    np.testing.assert_allclose(b.model, a.model, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.sigma_model, a.sigma_model, rtol=1e-10, atol=1e-14)
    assert b.chi2_per_bin == pytest.approx(a.chi2_per_bin, rel=1e-10) and streamed.frames == 19
    acc = BlockAccumulator(5, 2)
    acc.add(torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 of the 5 frames"):
        acc.block_means()
    with pytest.raises(ValueError, match="more than the 5 frames"):
        acc.add(torch.ones(3, 2, dtype=torch.float64))


def test_lj_fluid_right_sigma_agrees_wrong_sigma_does_not():
    """The shipped LJ reference RDF (ASE's LennardJones, σ* = 3.405 Å): a short sample with σ*
    reproduces it to its noise, σ = 3.15 Å does not (R_w 2.5 times larger)."""
    atoms = read(DEFAULT / "lj_argon_start.extxyz")
    data = read_experiment(DEFAULT / "lj_argon_rdf.csv", function="rdf")
    target = data.to_target("rdf")
    keep = (target.x > 2.5) & (target.x < 8.0)
    target = Target("rdf", "rdf", target.values[keep], x=target.x[keep])
    config = SamplerConfig(timestep_fs=5.0, friction_per_fs=0.01, equilibration_steps=400,
                           snapshots_per_replica=40, stride=10, min_distance_A=1.5, seed=3)
    numbers = torch.as_tensor(atoms.numbers)
    r_w = {}
    for sigma in (3.405, 3.15):
        sampler = AseSampler(atoms, [StatePoint("T181", 181.0)], config)
        out = sample_and_compare(LennardJones(sigma, 0.0104, 8.5), sampler, numbers, [target], n_blocks=4)
        r_w[sigma] = out["T181"].targets["rdf"].r_w
    assert r_w[3.405] < 0.15  # measured 0.098 (a 300-frame-sample's noise against the reference's)
    assert r_w[3.15] > 2 * r_w[3.405]  # measured 0.249
