"""The thread choice of a job (difftre_torch/threads.py) and how the command line applies it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from difftre_torch import threads


def test_small_work_takes_one_thread_whatever_the_cores(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    choice = threads.choose_threads(224, usable=16, busy=0.0)
    assert choice.threads == 1
    assert "224 atoms per MD step" in choice.reason
    assert threads.choose_threads(None, usable=16, busy=0.0).threads == 1


def test_large_work_takes_the_free_cores(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    big = threads.SMALL_WORK_ATOMS
    assert threads.choose_threads(big, usable=8, busy=0.0).threads == 8
    assert threads.choose_threads(big, usable=8, busy=2.6).threads == 5
    assert threads.choose_threads(big, usable=2, busy=1.0).threads == 1
    assert threads.choose_threads(big, usable=2, busy=7.0).threads == 1  # never below one


def test_requested_and_environment_override(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    assert threads.choose_threads(10, 3, usable=2).threads == 3
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    choice = threads.choose_threads(10, usable=8)
    assert (choice.threads, choice.reason) == (2, "as requested")
    assert threads.choose_threads(10, 4, usable=8).threads == 4  # --threads beats the environment
    monkeypatch.setenv(threads.THREADS_ENV, "two")
    with pytest.raises(ValueError, match="DIFFTRE_THREADS='two': expected a positive integer"):
        threads.choose_threads(10, usable=8)
    monkeypatch.delenv(threads.THREADS_ENV)
    with pytest.raises(ValueError, match="--threads 0"):
        threads.choose_threads(10, 0, usable=8)


def test_prepare_openmp_keeps_a_policy_the_user_chose():
    env: dict = {}
    assert threads.prepare_openmp(env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.prepare_openmp(env) == "ACTIVE"


def _difftre(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", threads.THREADS_ENV)}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "difftre_torch", *args], capture_output=True, text=True,
                          env=env, check=False, timeout=300)


def test_the_command_prints_its_choice_and_sets_a_passive_wait_policy():
    done = _difftre("check", "lj_argon")
    assert done.returncode == 0, done.stderr
    line = next(s for s in done.stdout.splitlines() if s.startswith("[difftre] torch threads:"))
    assert "torch threads: 1 (108 atoms per MD step" in line
    assert "OMP_WAIT_POLICY=PASSIVE" in line and "--threads" in line
    done = _difftre("check", "lj_argon", "--threads", "2", env_extra={"OMP_WAIT_POLICY": "ACTIVE"})
    assert "torch threads: 2 (as requested; OMP_WAIT_POLICY=ACTIVE)" in done.stdout


def test_a_bad_thread_count_is_one_clear_line():
    done = _difftre("check", "lj_argon", "--threads", "0")
    assert done.returncode == 2
    assert "--threads: expected a positive integer, got '0'" in done.stderr
    assert "Traceback" not in done.stderr
    done = _difftre("check", "lj_argon", env_extra={threads.THREADS_ENV: "-1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["difftre check: error: DIFFTRE_THREADS='-1': expected a positive integer"]
