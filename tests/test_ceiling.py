"""The pair-correction ceiling recovers a correction that lies within its form."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from difftre_torch.potentials import LennardJones, evaluate
from difftre_torch.potentials.correction import PairCorrection, PairCorrectionSpec
from difftre_torch.analysis.ceiling import pair_ceiling

SPEC = PairCorrectionSpec(species=[6, 7], cutoff_A=4.5, centers_A=[2.0, 3.0, 4.0], width_A=0.7)


def _frames(base, truth, n=6, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = Atoms(numbers=[6, 7] * 6, scaled_positions=rng.random((12, 3)), cell=np.diag([5.5, 5.8, 6.1]),
                      pbc=True)
        x, h, z = (torch.tensor(atoms.positions[None]), torch.tensor(atoms.cell.array[None]),
                   torch.tensor(atoms.numbers))
        teacher, extra = evaluate(base, x, h, z), evaluate(truth, x, h, z)
        atoms.arrays["teacher_forces"] = teacher.forces[0].numpy()
        atoms.info["teacher_energy"] = float(teacher.energy[0])
        atoms.calc = SinglePointCalculator(atoms, energy=float(teacher.energy[0] + extra.energy[0]),
                                           forces=(teacher.forces + extra.forces)[0].numpy())
        frames.append(atoms)
    return frames


def test_ceiling_recovers_a_correction_of_its_own_form():
    base = LennardJones(sigma_A=1.6, epsilon_eV=0.005, cutoff_A=4.0)
    truth = PairCorrection(SPEC, dtype=torch.float64)
    with torch.no_grad():
        truth.coefficients.copy_(torch.tensor([[-0.02, 0.01, -0.005], [0.015, -0.01, 0.002], [0.0, -0.02, 0.01]],
                                              dtype=torch.float64))
    heldout = {"small": _frames(base, truth, seed=1), "other": _frames(base, truth, seed=2)}
    out = pair_ceiling(base, PairCorrection(SPEC, dtype=torch.float64), heldout, relative_to="teacher")
    assert out["fit_frames"] == 6
    assert np.allclose(out["coefficients_eV"], truth.coefficients.detach().numpy().ravel(), atol=1e-8)
    for cell in heldout:
        assert out[cell]["frames"] == 3
        assert out[cell]["ceiling_forces_rmse_meV_per_A"] == pytest.approx(0.0, abs=1e-6)
        # the base misses exactly the correction's forces, which are the reality − teacher difference
        assert out[cell]["base_forces_rmse_meV_per_A"] == pytest.approx(out[cell]["relative_forces_rms_meV_per_A"])
        assert out[cell]["base_forces_rmse_meV_per_A"] > 1.0
        # the fitted coefficients carry the energies too: only a constant (removed) is left
        assert out[cell]["ceiling_energy_rmse_debiased_meV_per_atom"] == pytest.approx(0.0, abs=1e-6)
        assert out[cell]["base_energy_rmse_debiased_meV_per_atom"] > 0.1
        # split by direction: the two parts recombine into the total, per component
        b_in, b_out = out[cell]["base_forces_in_plane_rmse_meV_per_A"], out[cell]["base_forces_out_of_plane_rmse_meV_per_A"]
        assert np.sqrt((2 * b_in**2 + b_out**2) / 3) == pytest.approx(out[cell]["base_forces_rmse_meV_per_A"])
        assert out[cell]["ceiling_forces_in_plane_rmse_meV_per_A"] == pytest.approx(0.0, abs=1e-6)


def test_directions_split_against_the_normal():
    from difftre_torch.analysis.ceiling import directions

    residual = np.array([[3.0, 4.0, 2.0], [0.0, 0.0, -2.0]]) * 1e-3   # eV/Å; normal along z
    in_plane, out_of_plane = directions(residual.ravel(), [[0.0, 0.0, 1.0]] * 2)
    assert in_plane == pytest.approx(np.sqrt(25.0 / 4))   # (3² + 4²) over 2 atoms × 2 components
    assert out_of_plane == pytest.approx(2.0)
