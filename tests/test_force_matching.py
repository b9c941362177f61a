"""Force matching: reading labelled frames, grouping systems, and dL_FM/dθ against finite differences."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from difftre_torch.force_matching import ReferenceFrames, force_matching_gradient, sample_minibatch
from difftre_torch.potentials import LennardJones


def _frames(repeats=((2, 2, 2), (3, 2, 2)), per_system=3):
    """Rattled argon in two cell sizes, labelled by ASE's LJ with σ = 3.4 Å."""
    frames = []
    for k, rep in enumerate(repeats):
        for m in range(per_system):
            atoms = bulk("Ar", "fcc", a=5.4, cubic=True).repeat(rep)
            atoms.rattle(0.1, seed=10 * k + m)
            atoms.calc = AseLennardJones(sigma=3.4, epsilon=0.0104, rc=7.0, smooth=False)
            atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                               forces=atoms.get_forces())
            frames.append(atoms)
    return frames


def test_read_groups_systems(tmp_path):
    path = tmp_path / "frames.extxyz"
    write(path, _frames())
    frames = ReferenceFrames.read(path)
    assert len(frames) == 6 and len(frames.groups) == 2
    assert {int(g[0].numel()) for g in frames.groups} == {32, 48}
    batch = sample_minibatch(frames, 4, np.random.default_rng(0))
    assert sum(len(i) for _, i in batch) == 4


def test_unlabelled_frames_are_a_clear_error(tmp_path):
    path = tmp_path / "bare.extxyz"
    write(path, bulk("Ar", "fcc", a=5.4, cubic=True))
    with pytest.raises(ValueError, match="bare.extxyz: frame 0 has no energy/forces"):
        ReferenceFrames.read(path)


def test_labels_of_the_true_model_give_zero_loss_and_gradient():
    frames = ReferenceFrames.from_atoms(_frames())
    batch = sample_minibatch(frames, 6, np.random.default_rng(1))
    lj = LennardJones(3.4, 0.0104, 7.0)
    result = force_matching_gradient(lj, frames, batch, [lj.sigma, lj.epsilon])
    assert float(result.loss) < 1e-20
    assert all(float(g.abs()) < 1e-9 for g in result.grads)


def test_gradient_matches_central_finite_differences():
    frames = ReferenceFrames.from_atoms(_frames())
    batch = sample_minibatch(frames, 5, np.random.default_rng(2))
    lj = LennardJones(3.3, 0.011, 7.0)
    params = [lj.sigma, lj.epsilon]
    result = force_matching_gradient(lj, frames, batch, params, energy_weight=0.5, force_weight=2.0)
    for p, g in zip(params, result.grads):
        h = 1e-6 * float(p.detach())
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                p.add_(sign * h)
            values.append(float(force_matching_gradient(lj, frames, batch, params, energy_weight=0.5,
                                                        force_weight=2.0).loss))
            with torch.no_grad():
                p.sub_(sign * h)
        fd = (values[0] - values[1]) / (2 * h)
        assert abs(float(g) - fd) <= 1e-6 * abs(fd), (float(g), fd)
