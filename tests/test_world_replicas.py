"""Replicas of the stand-in world (recipes/world/replicas.py): repeats, formula, lattice."""

import pytest
import torch

from recipes.world.replicas import formula_unit, infer_repeats, lattice_per_frame, lattice_statistics


def test_infer_repeats_and_formula():
    assert infer_repeats(112, {"cell": "cell112"}) == (2, 2, 1)
    assert infer_repeats(112) == (2, 2, 1) and infer_repeats(28) == (1, 1, 1)
    with pytest.raises(ValueError, match="30-atom"):
        infer_repeats(30)
    assert formula_unit([6] * 48 + [7] * 64) == {"C": 3, "N": 4}


def test_lattice_per_frame_of_an_orthorhombic_supercell():
    cells = torch.diag(torch.tensor([14.0, 7.0, 6.6], dtype=torch.float64))[None].repeat(3, 1, 1)
    lat = lattice_per_frame(cells, (2, 1, 1))
    assert lat["a_A"].tolist() == pytest.approx([7.0] * 3)
    assert lat["c_A"].tolist() == pytest.approx([6.6] * 3)
    assert lat["spacing_A"].tolist() == pytest.approx([3.3] * 3)  # two layers per unit c


def test_lattice_statistics_takes_the_larger_of_the_two_errors():
    g = torch.Generator().manual_seed(1)
    reps = [{"a_A": 7.0 + 0.01 * torch.randn(100, generator=g, dtype=torch.float64)},
            {"a_A": 7.1 + 0.01 * torch.randn(100, generator=g, dtype=torch.float64)}]
    stats = lattice_statistics(reps, n_blocks=10)["a_A"]
    assert stats["value"] == pytest.approx(7.05, abs=0.005)
    assert stats["sem_replicas"] == pytest.approx(0.05, rel=0.2)  # |7.1 − 7.0| / 2
    assert stats["error"] == max(stats["sem_replicas"], stats["sem_blocks"]) == stats["sem_replicas"]
