"""The main job's entry point: config parsing and errors, and exact resume after SIGKILL."""

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
import yaml
from ase.build import bulk
from ase.io import write

from difftre_torch.run import DEFAULT_CONFIG, build_targets, load_config, parse_config


def _tiny_job(root: Path, updates: int = 4) -> Path:
    """A 32-atom LJ job with an RDF and a pressure target, seconds per update."""
    a = (4 * 3.405 ** 3 / 0.8) ** (1 / 3)
    write(root / "start.extxyz", bulk("Ar", "fcc", a=a, cubic=True).repeat(2))
    r = np.arange(25) * 0.2 + 2.6
    g = 1.0 + 0.8 * np.exp(-((r - 3.8) / 0.4) ** 2)
    np.savetxt(root / "target.csv", np.c_[r, g], delimiter=",", header="r,g")
    config = {
        "system": {"structure": "start.extxyz"},
        "potential": {"kind": "lennard_jones", "sigma_A": 3.3, "epsilon_eV": 0.0104, "cutoff_A": 8.5,
                      "trainable": ["sigma"]},
        "state_points": [{"name": "T181", "temperature_K": 181.0, "replicas": 2}],
        "sampler": {"timestep_fs": 5.0, "friction_per_fs": 0.02, "equilibration_steps": 60,
                    "reequilibration_steps": 20, "snapshots_per_replica": 8, "stride": 5,
                    "min_distance_A": 1.5, "seed": 4},
        "trainer": {"updates": updates, "learning_rate": 0.02, "resample_ratio": 0.97,
                    "progress": False, "tensorboard": False},
        "targets": [{"name": "rdf", "observable": "rdf", "file": "target.csv", "function": "rdf"},
                    {"name": "p", "observable": "pressure", "values": [0.02], "weight": 0.5}],
        "output": {"dir": "out"},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "difftre_torch.run", str(config), "--out", str(out),
                             "--threads", "1", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    config = _tiny_job(tmp_path)
    whole = _run(config, tmp_path / "whole")
    log = whole.communicate(timeout=600)[0]
    assert whole.returncode == 0, log

    killed = _run(config, tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 600
    while time.time() < deadline:  # wait until at least two updates are checkpointed, then kill
        if checkpoint.exists():
            state = torch.load(checkpoint, weights_only=False)
            if state["update"] >= 2:
                break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = torch.load(checkpoint, weights_only=False)
    assert 2 <= state["update"] < 4, "the kill must land mid-run"
    resumed = _run(config, tmp_path / "killed", "--resume")
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log

    a = torch.load(tmp_path / "whole" / "refined_potential.pt")
    b = torch.load(tmp_path / "killed" / "refined_potential.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa = json.loads((tmp_path / "whole" / "summary.json").read_text())
    sb = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert sa["loss_final"] == sb["loss_final"]
    assert sa["n_eff_history"] == sb["n_eff_history"]
    assert sa["resamples"] == sb["resamples"]


def test_default_config_parses_and_reads_its_target():
    config = load_config(DEFAULT_CONFIG)
    targets = build_targets(config)
    assert [t.name for t in targets] == ["rdf"] and targets[0].sigma is None
    assert targets[0].x.shape == targets[0].values.shape and targets[0].values.max() > 2.0


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["trainer"].update(learning_rat=0.1), "trainer: unknown field"),
    (lambda c: c["potential"].update(kind="morse"), "potential.kind"),
    (lambda c: c.pop("targets"), "missing section 'targets'"),
    (lambda c: c["state_points"][0].update(temperature_K=-5), "state_points[0]"),
    (lambda c: c["targets"][0].update(state_point="T999"), "unknown state_point"),
])
def test_config_errors_name_the_file_and_field(tmp_path, mutate, message):
    from difftre_torch.run import build_trainer

    path = _tiny_job(tmp_path)
    raw = yaml.safe_load(path.read_text())
    mutate(raw)
    with pytest.raises(ValueError) as err:
        build_trainer(parse_config(raw, tmp_path, str(path)), tmp_path / "o")
    assert message in str(err.value)
    if "state_point" not in message:
        assert str(path) in str(err.value)
