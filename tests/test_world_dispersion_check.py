"""recipes/world/dispersion_check.py: the ΔU-vs-reference comparison on frames."""

import numpy as np
import pytest
import torch
from ase import Atoms

from difftre_torch.potentials.ase_calculator import PotentialCalculator
from difftre_torch.potentials.correction import PairCorrection, PairCorrectionSpec
from recipes.world.dispersion_check import compare, energies_per_atom_meV, reference_per_atom_meV

SPEC = PairCorrectionSpec(species=[6, 7], cutoff_A=4.5, centers_A=[2.0, 3.0, 4.0], width_A=0.7)


def _correction(seed):
    corr = PairCorrection(SPEC, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        corr.coefficients.copy_(0.05 * torch.randn(corr.coefficients.shape, generator=g, dtype=torch.float64))
    return corr


def _frames(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [Atoms(numbers=[6, 7] * 6, scaled_positions=rng.random((12, 3)), cell=np.diag([5.5, 5.8, 6.1]) * s,
                  pbc=True) for s in np.linspace(0.95, 1.1, n)]


def test_a_correction_against_itself_and_against_another():
    frames = _frames()
    corr = _correction(1)
    mine = energies_per_atom_meV(corr, frames)
    same = compare(mine, reference_per_atom_meV(PotentialCalculator(corr), frames))
    assert same["difference_rms_meV_per_atom"] == pytest.approx(0.0, abs=1e-6)
    assert same["pearson_r"] == pytest.approx(1.0)
    assert same["correction_rms_meV_per_atom"] == pytest.approx(np.std(mine)) and same["frames"] == 6
    other = compare(mine, energies_per_atom_meV(_correction(2), frames))
    assert other["difference_rms_meV_per_atom"] > 0.1 * other["correction_rms_meV_per_atom"]
    shifted = compare(mine, mine + 50.0)  # a constant per atom is removed
    assert shifted["difference_rms_meV_per_atom"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="same length >= 2"):
        compare(mine, mine[:3])
