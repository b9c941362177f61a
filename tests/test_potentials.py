"""Potential contract: LJ against ASE's calculator, autograd forces/stress against finite differences."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.stress import full_3x3_to_voigt_6_stress

from difftre_torch.potentials import HarmonicOscillators, LennardJones, evaluate


def _argon(seed=0, triclinic=True):
    atoms = bulk("Ar", "fcc", a=5.3).repeat((3, 3, 3))
    atoms.rattle(0.1, seed=seed)
    if triclinic:
        shear = np.array([[1.0, 0.05, 0.0], [0.0, 1.0, 0.03], [0.02, 0.0, 0.97]])
        atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    return atoms


def _tensors(atoms_list):
    pos = torch.tensor(np.stack([a.positions for a in atoms_list]))
    cell = torch.tensor(np.stack([a.cell.array for a in atoms_list]))
    return pos, cell, torch.tensor(atoms_list[0].numbers)


@pytest.mark.parametrize("triclinic", [False, True])
def test_lennard_jones_matches_ase(triclinic):
    frames = [_argon(seed, triclinic) for seed in range(3)]
    lj = LennardJones(sigma_A=3.4, epsilon_eV=0.0104, cutoff_A=8.0)
    out = evaluate(lj, *_tensors(frames), stress=True)
    for b, atoms in enumerate(frames):
        atoms.calc = AseLennardJones(sigma=3.4, epsilon=0.0104, rc=8.0)
        assert out.energy[b].item() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(out.forces[b].numpy(), atoms.get_forces(), atol=1e-12)
        np.testing.assert_allclose(
            full_3x3_to_voigt_6_stress(out.stress[b].numpy()), atoms.get_stress(), atol=1e-14
        )


def test_forces_and_stress_are_finite_differences_of_energy():
    atoms = _argon(5)
    pos, cell, numbers = _tensors([atoms])
    lj = LennardJones(sigma_A=3.4, epsilon_eV=0.0104, cutoff_A=7.0)
    out = evaluate(lj, pos, cell, numbers, stress=True)
    h = 1e-5
    for atom, axis in [(0, 0), (7, 2), (26, 1)]:
        plus, minus = pos.clone(), pos.clone()
        plus[0, atom, axis] += h
        minus[0, atom, axis] -= h
        fd = -(lj(plus, cell, numbers) - lj(minus, cell, numbers)) / (2 * h)
        assert out.forces[0, atom, axis].item() == pytest.approx(fd.item(), abs=1e-9)
    volume = abs(np.linalg.det(cell[0].numpy()))
    for i, j in [(0, 0), (2, 2), (0, 1)]:
        eps = torch.zeros(3, 3, dtype=torch.float64)
        eps[i, j] = eps[j, i] = h / 2 if i != j else h
        def strained(sign):
            deform = torch.eye(3, dtype=torch.float64) + sign * eps
            return lj(pos @ deform, cell @ deform, numbers)
        fd = (strained(1) - strained(-1)) / (2 * h) / volume
        assert out.stress[0, i, j].item() == pytest.approx(fd.item(), rel=1e-6)


def test_energy_only_evaluation_and_shape_errors():
    atoms = _argon(1)
    pos, cell, numbers = _tensors([atoms])
    lj = LennardJones(3.4, 0.0104, 7.0)
    out = evaluate(lj, pos, cell, numbers, forces=False)
    assert out.forces is None and out.stress is None and out.energy.shape == (1,)
    with pytest.raises(ValueError, match="positions"):
        evaluate(lj, pos[0], cell, numbers)


def test_create_graph_keeps_forces_differentiable_in_parameters():
    atoms = _argon(2)
    pos, cell, numbers = _tensors([atoms])
    lj = LennardJones(3.4, 0.0104, 7.0)
    out = evaluate(lj, pos, cell, numbers, create_graph=True)
    (g_sigma,) = torch.autograd.grad((out.forces**2).sum(), [lj.sigma])
    h = 1e-6
    def force_sq(sigma):
        with torch.no_grad():
            lj.sigma.fill_(sigma)
        return (evaluate(lj, pos, cell, numbers).forces ** 2).sum().item()
    fd = (force_sq(3.4 + h) - force_sq(3.4 - h)) / (2 * h)
    assert g_sigma.item() == pytest.approx(fd, rel=1e-6)


def test_harmonic_oscillators_energy_and_forces():
    anchors = torch.randn(5, 3, dtype=torch.float64)
    pot = HarmonicOscillators(anchors, stiffness_eV_A2=2.5)
    pos = anchors[None] + 0.1 * torch.randn(2, 5, 3, dtype=torch.float64)
    cell = 20.0 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    out = evaluate(pot, pos, cell, torch.ones(5, dtype=torch.long))
    torch.testing.assert_close(out.forces, -2.5 * (pos - anchors))
    torch.testing.assert_close(out.energy, 1.25 * ((pos - anchors) ** 2).sum(dim=(1, 2)))


def test_takes_pairs_reads_the_forward_signature():
    from difftre_torch.potentials.base import takes_pairs

    assert takes_pairs(LennardJones(sigma_A=3.4, epsilon_eV=0.01, cutoff_A=8.5))
    assert not takes_pairs(lambda positions, cell, numbers: positions.sum())
    assert takes_pairs(lambda positions, cell, numbers, pairs=None: positions.sum())
    assert not takes_pairs(object())  # no signature: treated as not taking a list
