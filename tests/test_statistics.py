"""Block statistics (difftre_torch/statistics.py) against numpy and analytic results."""

import math

import numpy as np
import pytest
import torch

from difftre_torch.statistics import block_means, chi2_per_bin, mean_sem


def test_block_means_drop_the_leading_frames():
    values = torch.arange(23.0, dtype=torch.float64)[:, None] ** 2
    blocks = block_means(values, 4)  # 23 = 3 + 4 × 5: the first 3 frames are dropped
    np.testing.assert_allclose(blocks[:, 0].numpy(), (np.arange(3, 23.0) ** 2).reshape(4, 5).mean(1))
    with pytest.raises(ValueError, match="n_blocks"):
        block_means(values, 24)


def test_mean_sem_equal_and_weighted():
    blocks = torch.tensor([[1.0], [2.0], [4.0], [7.0]], dtype=torch.float64)
    mean, sem = mean_sem(blocks)
    assert float(mean) == pytest.approx(3.5)
    assert float(sem) == pytest.approx(np.std([1, 2, 4, 7], ddof=1) / 2)
    weighted_mean, _ = mean_sem(torch.tensor([[1.0], [4.0]]), torch.tensor([3.0, 1.0]))
    assert float(weighted_mean) == pytest.approx(1.75)
    with pytest.raises(ValueError, match="two blocks"):
        mean_sem(blocks[:1])


def test_sem_of_white_noise_is_sigma_over_sqrt_n():
    """Uncorrelated frames: the block error of the mean is σ/√N whatever the block count."""
    x = torch.randn(40000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for m in (10, 40):
        _, sem = mean_sem(block_means(x, m))
        assert float(sem) == pytest.approx(1 / math.sqrt(40000), rel=0.5)


def test_chi2_per_bin_skips_bins_without_error():
    chi2, n = chi2_per_bin(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]),
                           torch.tensor([3.0, 2.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert (chi2, n) == (1.0, 2)  # ((2² / 2) + 0) / 2
    chi2, n = chi2_per_bin(torch.ones(3), torch.ones(3), torch.zeros(3), torch.ones(3),
                           mask=torch.tensor([True, False, False]))
    assert (chi2, n) == (0.5, 1)
    chi2, n = chi2_per_bin(torch.ones(2), torch.zeros(2), torch.zeros(2), torch.zeros(2))
    assert math.isnan(chi2) and n == 0
