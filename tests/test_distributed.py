"""Several ranks (torch.distributed, gloo on CPU) against one process holding the same replicas.

* the loss, N_eff, the DiffTRe gradient and the force-matching gradient of two ranks equal one
  process's (float64, relative 1e-12) for an RDF target (NVT), a lattice and a pressure target
  (NPT) and force matching on two systems (tests/distributed_worker.py);
* a 3-update refinement of the shipped LJ example on 2 ranks (torchrun) ends at the parameters of
  the 1-process run (relative 1e-12; the reductions' order is the only difference);
* SIGKILL of one rank: the other stops with a clear message within the timeout, and the resumed
  2-rank run ends where an uninterrupted one does; a rank that hangs is noticed after the timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from difftre_torch import distributed
from difftre_torch.distributed import SINGLE, replica_share
from difftre_torch.force_matching import rank_minibatch
from difftre_torch.reweighting import boltzmann_weights, effective_sample_size, reweighted_mean

WORKER = Path(__file__).with_name("distributed_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
LJ_SETTINGS = ["--set", "state_points.0.replicas=2", "--set", "sampler.kind=batched",
               "--set", "sampler.equilibration_steps=100", "--set", "sampler.reequilibration_steps=40",
               "--set", "sampler.snapshots_per_replica=20", "--set", "sampler.stride=10",
               "--set", "trainer.updates=3", "--lambda", "0"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _relative(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ----------------------------------------------------------------------------- one process


def test_one_process_is_todays_path():
    """Without a launcher the helpers are the plain formulas (softmax, Σ w ln w, Σ w O)."""
    assert not SINGLE.active and SINGLE.is_main
    energies = torch.tensor([1.0, 1.2, 0.9], dtype=torch.float64)
    w = boltzmann_weights(energies, torch.zeros(3, dtype=torch.float64), 0.1, SINGLE)
    assert torch.equal(w, torch.softmax(-energies / 0.1, 0))
    assert torch.equal(effective_sample_size(w, SINGLE), effective_sample_size(w))
    values = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    assert torch.equal(reweighted_mean(w, values, SINGLE), w @ values)
    alone = distributed.start(timeout_s=5.0)  # pytest runs without a launcher
    assert not distributed.launched() and not alone.active and alone.backend is None and alone.timeout_s == 5.0


def test_replica_share_blocks_and_refuses_too_few_replicas():
    assert [replica_share([5, 2], r, 2) for r in range(2)] == [[[0, 1, 2], [0]], [[3, 4], [1]]]
    assert sorted(sum((replica_share([7], r, 3)[0] for r in range(3)), [])) == list(range(7))
    with pytest.raises(ValueError, match=r"'npt' has 2 replica\(s\) for 4 ranks.*state_points\[1\]"):
        replica_share([4, 2], 0, 4, ["nvt", "npt"])


def test_rank_minibatch_splits_the_same_minibatch_into_blocks():
    batch = [(0, np.array([1, 4, 6])), (1, np.array([0, 2]))]
    parts = [rank_minibatch(batch, r, 2) for r in range(2)]
    assert [(g, i.tolist()) for g, i in parts[0]] == [(0, [1, 4, 6])]
    assert [(g, i.tolist()) for g, i in parts[1]] == [(1, [0, 2])]
    assert rank_minibatch([(0, np.array([3]))], 1, 2) == []


def test_samplers_take_only_their_share():
    from ase.build import bulk

    from difftre_torch.sampling.base import SamplerConfig, StatePoint
    from difftre_torch.sampling.batched import BatchedSampler
    from difftre_torch.sampling.sampler import AseSampler

    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    points = [StatePoint("a", 90.0, replicas=3), StatePoint("b", 90.0, 0.0, replicas=2)]
    assert BatchedSampler(atoms, points, SamplerConfig(), owned=[[2], [0, 1]]).replicas == [(0, 2), (1, 0), (1, 1)]
    assert AseSampler(atoms, points, SamplerConfig(), owned=[[0, 1], [1]]).owned == [[0, 1], [1]]
    with pytest.raises(ValueError, match="owned replicas of 'a'"):
        AseSampler(atoms, points, SamplerConfig(), owned=[[3], [0]])


# ----------------------------------------------------------------------------- two ranks


def test_two_ranks_give_the_loss_n_eff_and_gradient_of_one_process(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(WORKER), str(one)], check=True, env=_env(), cwd=tmp_path,
                   capture_output=True, timeout=300)
    run = subprocess.run([*TORCHRUN, str(WORKER), str(two)], env=_env(), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    single = torch.load(one, weights_only=False)[0]
    ranks = torch.load(two, weights_only=False)
    assert single["local_snapshots"] == [24, 24]
    assert [r["local_snapshots"] for r in ranks] == [[12, 12], [12, 12]]  # each rank 2 of 4 replicas
    for record in ranks:  # every rank holds the same global numbers
        assert record["snapshots"] == [24, 24]
        assert _relative(record["loss"], single["loss"]) < 1e-12
        assert _relative(record["n_eff"], single["n_eff"]) < 1e-12
        for name, value in single["parts"].items():
            assert _relative(record["parts"][name], value) < 1e-12, name
        for got, want in zip(record["grads"], single["grads"]):
            assert _relative(got, want) < 1e-12, (got, want)
        assert _relative(record["fm_loss"], single["fm_loss"]) < 1e-12
        for got, want in zip(record["fm_grads"], single["fm_grads"]):
            assert _relative(got, want) < 1e-12, (got, want)
        for point, stats in single["stats"].items():
            assert stats["snapshots"] == record["stats"][point]["snapshots"]
            assert abs(stats["pressure_GPa"] - record["stats"][point]["pressure_GPa"]) < 1e-12
        # the pool of three trajectories (MBAR), the Gauss-Newton pieces and the noise
        assert record["pool_sizes"] == single["pool_sizes"] == [72, 72]
        for got, want in zip(record["pool_f"], single["pool_f"]):
            assert np.abs(got - want).max() < 1e-8 and np.abs(want).max() > 0, (got, want)
        assert _relative(record["pool_loss"], single["pool_loss"]) < 1e-7  # pymbar solves to 1e-10
        assert _relative(record["pool_n_eff"], single["pool_n_eff"]) < 1e-7
        for got, want in zip(record["pool_grads"], single["pool_grads"]):
            assert _relative(got, want) < 1e-7, (got, want)
        assert _relative(record["r"], single["r"]) < 1e-7 and _relative(record["J"], single["J"]) < 1e-7
        assert _relative(record["loss_se"], single["loss_se"]) < 1e-7 and single["loss_se"] > 0
        assert _relative(record["fm_hessian"], single["fm_hessian"]) < 1e-12
    assert 0 < single["n_eff"][0] < 24  # θ ≠ θ̃: the weights are not uniform
    assert ranks[0]["bytes_reduced"] > 0 and single["bytes_reduced"] == 0


def _refine(out: Path, cwd: Path, ranks: int, *extra: str, **kwargs) -> subprocess.Popen:
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    return subprocess.Popen([*launcher, "-m", "difftre_torch", "refine", "lj_argon", *LJ_SETTINGS,
                             "--out", str(out), *extra], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _summary(out: Path) -> dict:
    return json.loads((out / "refine" / "lambda_0" / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The LJ example, 3 updates, 2 replicas: one process and two ranks."""
    root = tmp_path_factory.mktemp("lj")
    _finish(_refine(root / "one", root, 1))
    output = _finish(_refine(root / "two", root, 2))
    return root, output


def test_two_rank_lj_refinement_ends_at_the_one_process_parameters(uninterrupted):
    root, output = uninterrupted
    assert "2 ranks (gloo" in output
    one, two = _summary(root / "one"), _summary(root / "two")
    assert two["updates"] == one["updates"] == 3
    for name, value in one["parameters_final"].items():
        assert abs(two["parameters_final"][name] - value) <= 1e-12 * abs(value), name
    assert abs(two["loss_final"]["total"] - one["loss_final"]["total"]) <= 1e-12 * one["loss_final"]["total"]
    assert sorted(p.name for p in (root / "two" / "refine" / "lambda_0" / "ranks").glob("*.pt")) == [
        "rank0.update2.pt", "rank0.update3.pt", "rank1.update2.pt", "rank1.update3.pt"]


def _worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    for child in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                text=True).stdout.split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker of rank {rank} under {launcher.pid}")


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.1)


def test_killed_rank_stops_the_run_clearly_and_the_resumed_run_ends_as_the_uninterrupted(uninterrupted, tmp_path):
    """torchrun stops the surviving rank (SIGTERM) as soon as one dies; the run resumes from
    the checkpoint of update 1 and ends bit for bit where the uninterrupted 2-rank run does."""
    root, _ = uninterrupted
    out = tmp_path / "killed"
    timeout_s = 60
    launcher = _refine(out, tmp_path, 2, "--rank-timeout", str(timeout_s))
    _wait_for(out / "refine" / "lambda_0" / "checkpoint.pt", launcher)
    killed_at = time.monotonic()
    os.kill(_worker_pid(launcher, 1), signal.SIGKILL)
    output, _ = launcher.communicate(timeout=timeout_s + 60)
    stopped_after = time.monotonic() - killed_at
    assert launcher.returncode != 0
    assert stopped_after < timeout_s, stopped_after
    assert "difftre refine (rank 0): stopped: rank 0 of 2" in output
    assert "same number of ranks to continue from the last checkpoint" in output
    assert not (out / "refine" / "lambda_0" / "summary.json").exists()
    resumed = _finish(_refine(out, tmp_path, 2))
    assert "update    1 " not in resumed  # it continued, it did not start again
    want, got = _summary(root / "two"), _summary(out)
    assert got["parameters_final"] == want["parameters_final"]
    assert got["loss_final"] == want["loss_final"]
    # a 2-rank checkpoint is not resumed by one process: an error naming the checkpoint and the ranks
    (out / "refine" / "lambda_0" / "refine_result.json").unlink()
    (out / "refine" / "lambda_0" / "summary.json").unlink()
    (out / "steps" / "refine" / "refined.json").unlink()
    alone = subprocess.run([sys.executable, "-m", "difftre_torch", "refine", "lj_argon", *LJ_SETTINGS, "--out",
                            str(out)], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert alone.returncode == 2, alone.stderr
    assert "checkpoint.pt: written by a run on 2 rank(s), this run has 1" in alone.stderr


@pytest.mark.slow
def test_a_hung_rank_is_noticed_after_the_timeout(tmp_path):
    """Ranks started without torchrun's agent (as srun starts them): rank 1 is frozen (SIGSTOP)
    after the first checkpoint; rank 0 stops with the message once the timeout has passed."""
    out, timeout_s = tmp_path / "hung", 10
    processes = []
    for rank in range(2):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29600 + os.getpid() % 300),
               "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "difftre_torch", "refine", "lj_argon", *LJ_SETTINGS, "--set",
             "trainer.updates=6", "--out", str(out), "--rank-timeout", str(timeout_s)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        _wait_for(out / "refine" / "lambda_0" / "checkpoint.pt", processes[0])
        processes[1].send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        output, _ = processes[0].communicate(timeout=timeout_s + 60)
        waited = time.monotonic() - frozen_at
    finally:
        processes[1].kill()
        processes[1].communicate()
    assert processes[0].returncode == 4, output[-2000:]
    assert f"did not answer within {timeout_s} s" in output
    assert waited < timeout_s + 30, waited
