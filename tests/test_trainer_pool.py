"""The trainer with a snapshot pool and Levenberg–Marquardt steps: capacity 1 is today's loop bit
for bit, pools and steps are reported, a SIGKILLed run with a pool resumes bit for bit, and bad
settings are refused before any MD."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from difftre_torch.callbacks import Callback, CheckpointCallback
from difftre_torch.experiment.target import Target
from difftre_torch.gradient import difftre_gradient
from difftre_torch.objective import assign_targets, fill_store, make_chunk_fn, make_loss_fn
from difftre_torch.potentials import LennardJones
from difftre_torch.sampling.base import SamplerConfig, StatePoint
from difftre_torch.sampling.sampler import AseSampler
from difftre_torch.trainer import DiffTReTrainer, TrainerConfig

SAMPLER = dict(timestep_fs=5.0, friction_per_fs=0.02, equilibration_steps=20, reequilibration_steps=20,
               snapshots_per_replica=8, stride=5, min_distance_A=1.5)
RDF_TARGET = Target("rdf", "rdf", np.linspace(0.0, 1.6, 20) ** 0.5, x=np.arange(20) * 0.25 + 2.6)


def fluid():
    a = (4 * 3.405 ** 3 / 0.8) ** (1 / 3)
    return bulk("Ar", "fcc", a=a, cubic=True).repeat(2)  # 32 atoms


def potential(sigma: float = 3.3):
    lj = LennardJones(sigma, 0.0104, 8.5)
    lj.epsilon.requires_grad_(False)
    return lj


def trainer(out, updates=5, callbacks=None, sigma=3.3, **config) -> DiffTReTrainer:
    settings = dict(updates=updates, learning_rate=0.02, progress=False, tensorboard=False, final_sample=False,
                    resample_ratio=0.95)
    settings.update(config)
    return DiffTReTrainer(potential(sigma), fluid(), [StatePoint("T181", 181.0)], [RDF_TARGET],
                          sampler_config=SamplerConfig(**SAMPLER), config=TrainerConfig(**settings),
                          out_dir=out, callbacks=callbacks if callbacks is not None else [])


def test_pool_of_one_is_todays_loop_bit_for_bit(tmp_path):
    """The trainer (pool_size 1) against the loop written out here as single-trajectory DiffTRe
    does it: sample, cache U_θ̃, reweighted gradient, resample when stale, Adam."""
    t = trainer(tmp_path / "trainer", updates=6)
    t.fit()
    lj = potential()
    sampler = AseSampler(fluid(), [StatePoint("T181", 181.0)], SamplerConfig(**SAMPLER))
    grouped = assign_targets([RDF_TARGET], ["T181"])
    loss_fn, chunk_fn = make_loss_fn(grouped, ["T181"]), make_chunk_fn(grouped)
    optimizer = torch.optim.Adam([lj.sigma], lr=0.02, betas=(0.9, 0.999))
    numbers = torch.as_tensor(fluid().numbers)

    def sample():
        raw = sampler.sample(lj)[0]
        return fill_store("T181", raw.positions.double(), raw.cells.double(), numbers, lj, grouped["T181"],
                          temperature_K=181.0, pressure_GPa=None, replica=raw.replica, chunk_size=64)

    store, resamples = sample(), 0
    for _ in range(6):
        result = difftre_gradient(lj, [store], loss_fn, [lj.sigma], chunk_fn=chunk_fn, chunk_size=64)
        if result.n_eff[0] / len(store) < 0.95:
            store, resamples = sample(), resamples + 1
            result = difftre_gradient(lj, [store], loss_fn, [lj.sigma], chunk_fn=chunk_fn, chunk_size=64)
        lj.sigma.grad = result.grads[0]
        optimizer.step()
        optimizer.zero_grad()
    assert resamples == t.resamples >= 2
    assert float(t.potential.sigma.detach()) == float(lj.sigma.detach())  # bit for bit


def test_pool_and_levenberg_marquardt_are_reported(tmp_path):
    t = trainer(tmp_path / "lm", updates=5, sigma=3.1, optimizer="levenberg_marquardt", pool_size=3,
                lm_min_n_eff_ratio=0.3)
    summary = t.fit()
    last = t.history[-1]
    assert {"damping", "tries", "predicted", "realised", "gain", "norm"} <= set(last.step)
    assert last.noise["loss_se"] > 0 and "target_loss" in last.noise
    assert max(r.pool["T181"]["trajectories"] for r in t.history) >= 2
    pooled = [r.pool["T181"] for r in t.history if r.pool["T181"]["trajectories"] > 1]
    for info in pooled:  # the trajectories' parts of N_eff add up to N_eff
        parts = sum(v for k, v in info.items() if k.startswith("n_eff_"))
        assert parts == pytest.approx(t.history[[r.pool["T181"] for r in t.history].index(info)].n_eff["T181"])
    accepted = [r for r in t.history if r.step["accepted"]]
    assert accepted and all(r.step["n_eff_ratio_after"] >= 0.3 for r in accepted)
    assert all(r.step["realised"] <= 0.25 * r.step["predicted"] for r in accepted)
    assert set(summary.parameter_errors) == {"sigma"} and summary.parameter_errors["sigma"] > 0


def test_levenberg_marquardt_refuses_a_large_model(tmp_path):
    lj = LennardJones(3.3, 0.0104, 8.5)  # σ and ε trainable: 2 entries
    with pytest.raises(ValueError, match="at most lm_max_parameters = 1 trainable entries, the potential has 2"):
        DiffTReTrainer(lj, fluid(), [StatePoint("T181", 181.0)], [RDF_TARGET], out_dir=tmp_path, callbacks=[],
                       config=TrainerConfig(optimizer="levenberg_marquardt", lm_max_parameters=1))
    with pytest.raises(ValueError, match="TrainerConfig.optimizer"):
        TrainerConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="TrainerConfig.pool_retention"):
        TrainerConfig(pool_retention="oldest")
    with pytest.raises(ValueError, match="TrainerConfig.noise_blocks"):
        TrainerConfig(noise_blocks=1)


class Die(Callback):
    """SIGKILLs its own process after update ``at`` (after the checkpoint callback before it)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_update_end(self, trainer, record):
        if record.update == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


POOLED = dict(sigma=3.1, optimizer="levenberg_marquardt", pool_size=3, pool_retention="share", lm_min_n_eff_ratio=0.3)


def run_and_die(out: str) -> None:
    """The subprocess's work: a pooled run that is killed after update 3's checkpoint."""
    trainer(out, updates=6, callbacks=[CheckpointCallback(), Die(3)], **POOLED).fit()


def test_sigkilled_run_with_a_pool_resumes_bit_for_bit(tmp_path):
    straight = trainer(tmp_path / "straight", updates=6, **POOLED)
    straight.fit()
    out = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_trainer_pool as t; t.run_and_die({str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = trainer(out, updates=6, callbacks=[CheckpointCallback()], **POOLED)
    resumed.fit(resume=True)
    assert len(resumed.history) == 6
    assert resumed.history == straight.history          # every number of every update
    assert float(resumed.potential.sigma.detach()) == float(straight.potential.sigma.detach())
    assert [len(p) for p in resumed.pools] == [len(p) for p in straight.pools]
    assert torch.equal(resumed.stores[0].reference_energies, straight.stores[0].reference_energies)


def test_line_search_takes_the_best_scale_of_the_adam_step(tmp_path):
    t = trainer(tmp_path / "ls", updates=3, sigma=3.1, line_search=True, learning_rate=0.005)
    for _ in range(3):
        record = t.step()
        scale = record.step["scale"]
        assert scale in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
        before = record.parameters["sigma"]
        chosen = float(t.potential.sigma.detach())
        if scale == 0.0:
            assert chosen == before
            continue
        plain = before + (chosen - before) / scale   # where Adam's own step ended
        losses = {}
        for name, value in (("chosen", chosen), ("plain", plain)):
            with torch.no_grad():
                t.potential.sigma.fill_(value)
            losses[name] = t.evaluate_targets()[1]["total"]
        with torch.no_grad():
            t.potential.sigma.fill_(chosen)
        assert losses["chosen"] <= losses["plain"] + 1e-15, (scale, losses)
    assert any(r.step["scale"] > 1 for r in t.history)  # small Adam steps far from the optimum grow
