"""A Lennard-Jones liquid the package was not developed on (recipes/lj_liquid): from σ 0.15 Å off,
Gauss–Newton steps on a pool of trajectories recover σ* = 3.405 Å within the run's own standard
error and the run stops by itself. Slow (about 5 minutes on one core)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "lj_liquid" / "lj_liquid.yaml"
SIGMA_STAR = 3.405


@pytest.mark.slow
def test_sigma_is_recovered_and_the_run_stops_by_itself(tmp_path):
    run = subprocess.run([sys.executable, "-m", "difftre_torch", "refine", str(CONFIG), "--out", str(tmp_path / "out"),
                          "--lambda", "0", "--threads", "1", "--set", "trainer.progress=false",
                          "--set", "sampler.progress=false"], capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "refine" / "lambda_0" / "summary.json").read_text())
    updates, limit = summary["updates"], summary["config"]["updates"]
    assert updates < limit and summary["stopped"].startswith("converged at update"), summary["stopped"]
    sigma = summary["parameters_final"]["sigma"]
    error = summary["parameter_errors"]["sigma"]
    assert 0 < error < 0.02
    assert abs(sigma - SIGMA_STAR) <= 2.0 * error, (sigma, error)
