"""The stand-in world's binding-curve grid (recipes/world/binding.py)."""

import numpy as np

from recipes.world import binding


def test_default_grid_brackets_both_minima():
    grid = np.array(binding.SPACINGS_A)
    assert (np.diff(grid) > 0).all() and grid[0] <= 3.0 and grid[-1] >= 5.0
    fine = grid[(grid >= 3.2) & (grid <= 4.1)]
    assert np.allclose(np.diff(fine), 0.1)
