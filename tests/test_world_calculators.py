"""The stand-in world's teacher with forces and stress from one backward pass
(recipes.world.calculators.one_backward) gives CHGNet's own numbers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("chgnet")


def test_one_backward_equals_chgnet():
    import torch
    from ase.io import read

    from recipes.world import calculators

    unit = read("data/world/structures/reality_unit.extxyz")
    unit.calc = None
    unit.positions += np.random.default_rng(3).normal(0.0, 0.05, unit.positions.shape)
    grad = torch.autograd.grad
    results = []
    for fast in (False, True):
        atoms = unit.copy()
        atoms.calc = calculators.teacher("cpu", fast=fast)
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
        atoms.positions[0] += 0.01  # a second call on the same calculator
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    assert torch.autograd.grad is grad  # restored after every call
    for (e_slow, f_slow, s_slow), (e_fast, f_fast, s_fast) in zip(results[:2], results[2:]):
        assert e_fast == pytest.approx(e_slow, abs=1e-5)
        assert np.abs(f_fast - f_slow).max() < 1e-4      # eV/Å, float32 round-off
        assert np.abs(s_fast - s_slow).max() < 1e-6      # eV/Å³
        assert np.abs(f_slow).max() > 0.1 and np.abs(s_slow).max() > 1e-4  # not trivially zero
