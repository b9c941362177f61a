"""The loss's jackknife noise and the stopping rule."""

import math

import numpy as np
import pytest
import torch

from difftre_torch.convergence import block_labels, converged, jackknife_error, jackknife_loss_error, jackknife_replicates
from difftre_torch.records import UpdateRecord
from difftre_torch.sampling.store import SnapshotStore


def store_with(replica, n_atoms=1):
    s = len(replica)
    return SnapshotStore(numbers=torch.ones(n_atoms, dtype=torch.long), positions=torch.zeros(s, n_atoms, 3),
                         cells=torch.eye(3).repeat(s, 1, 1), reference_energies=torch.zeros(s), temperature_K=300.0,
                         replica=torch.tensor(replica))


def test_blocks_are_consecutive_per_replica_and_trajectory():
    store = store_with([0] * 8 + [1] * 8 + [0] * 4)
    segments = torch.tensor([0] * 16 + [1] * 4)
    labels = block_labels(store, segments, 4)
    assert labels[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(labels[8:16].tolist())) == 4 and len(set(labels[16:].tolist())) == 4
    assert not set(labels[:8].tolist()) & set(labels[16:].tolist())  # trajectory 1's replica 0 is another group


def test_jackknife_of_a_mean_is_the_block_standard_error():
    """For ⟨O⟩ with uniform weights and equal blocks the delete-one jackknife equals
    std(block means)/√B exactly."""
    rng = np.random.default_rng(0)
    values = torch.tensor(rng.normal(size=40))
    store = store_with([0] * 20 + [1] * 20)
    labels = block_labels(store, None, 4)
    w = torch.full((40,), 1 / 40, dtype=torch.float64)
    replicates = jackknife_replicates(lambda ws: (ws[0] * values).sum(), [w], [labels])
    assert replicates.shape == (8,)
    means = values.reshape(8, 5).mean(1)
    assert float(jackknife_error(replicates)) == pytest.approx(float(means.std() / math.sqrt(8)), rel=1e-12)

    def loss_fn(weights, vals):
        mean = (weights[0] * vals[0]["o"]).sum()
        return mean, {}
    assert jackknife_loss_error(loss_fn, [w], [{"o": values}], [labels]) == pytest.approx(
        float(means.std() / math.sqrt(8)), rel=1e-12)


def record(update, target_loss, se, gain=None):
    step = {} if gain is None else {"gain": gain}
    return UpdateRecord(update=update, loss={"total": target_loss}, n_eff={}, n_eff_ratio={}, resampled=False,
                        grad_norm=0.0, lr=0.0, time={}, state={}, parameters={}, step=step,
                        noise={"target_loss": target_loss, "loss_se": se})


def test_stopping_rule():
    falling = [record(1, 1.0, 0.01), record(2, 0.5, 0.01), record(3, 0.3, 0.01)]
    assert not converged(falling, 2, 1.0)
    flat = falling + [record(4, 0.295, 0.01), record(5, 0.298, 0.01)]
    assert converged(flat, 2, 1.0)
    assert not converged(flat, 3, 1.0)   # update 3's change (0.2) was not within the noise
    assert not converged(flat, 0, 1.0)   # patience 0: never stop
    # a step the trust region shortened: the loss barely moved, but the model still promises more
    shortened = falling + [record(4, 0.295, 0.01, gain=0.1), record(5, 0.298, 0.01, gain=0.1)]
    assert not converged(shortened, 2, 1.0)
