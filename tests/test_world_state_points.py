"""recipes.world.state_points: every state point of the states campaign published like the
300 K experiment, indexed with its state, errors and noise check; held-out and pending points
named."""

from __future__ import annotations

import json

import pytest
import torch

from recipes.world import experiment
from recipes.world import state_points as sp
from recipes.world.trajectories import ONE_BAR_GPA, state_job_name
from test_world_experiment import write_replica


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("states")
    runs = root / "runs"
    for k, (temperature, pressure) in enumerate(((450.0, ONE_BAR_GPA), (375.0, ONE_BAR_GPA), (300.0, 1.0))):
        for seed in (1, 2):
            write_replica(runs, state_job_name(temperature, pressure, "reality", 10 * k + seed), seed=10 * k + seed,
                          temperature_K=temperature, pressure_GPa=pressure)
    write_replica(runs, state_job_name(150.0, ONE_BAR_GPA, "reality", 99), seed=99, temperature_K=150.0)
    for seed in (101, 102):  # the 300 K, 1 bar experiment, published on its own
        write_replica(runs, f"npt300_reality_cell112_s{seed}", seed=seed)
    experiment.main(["--runs", str(runs), "--out", str(root / "experiment"), "--quick", "--no-progress"])
    try:
        yield root, sp.main(["--runs", str(runs), "--out", str(root / "out"), "--experiment",
                             str(root / "experiment"), "--quick", "--no-progress"])
    finally:
        torch.set_num_threads(threads)


def test_every_complete_state_point_is_published(index):
    root, idx = index
    points = dict(idx["state_points"])
    listed = points.pop("T300_P1bar")  # the 300 K experiment beside them
    assert not listed["own"] and listed["dir"] == str(root / "experiment") and len(listed["replicas"]) == 2
    assert sorted(points) == ["T300_P1GPa", "T375_P1bar", "T450_P1bar"]
    assert "T150_P1bar" in idx["pending"] and "1 of 2" in idx["pending"]["T150_P1bar"]
    for tag, entry in points.items():
        folder = root / "out" / entry["dir"]
        lattice = json.loads((folder / "lattice.json").read_text())
        assert lattice["temperature_K"] == entry["temperature_K"]
        assert lattice["pressure_GPa"] == entry["pressure_GPa"]
        assert entry["lattice"]["a_A"]["value"] == lattice["a_A"]
        assert entry["lattice"]["spacing_A"]["error"] == lattice["spacing_err_A"] > 0
        assert (folder / "neutron.gr").exists() and (folder / "xray.gr").exists()
        assert len(entry["replicas"]) == 2
        assert entry["noise_check"]["expected"] == pytest.approx(3 / 2)  # 4 blocks: ν = 3
        assert len(entry["noise_check"]["chi2_per_bin"]) == 1
    assert [e["held_out"] for e in points.values()] == [False, True, False]
    assert all(e["own"] for e in points.values())
    assert json.loads((root / "out" / "states.json").read_text())["state_points"].keys() == idx["state_points"].keys()


def test_state_tags():
    assert sp.state_tag(375.0, ONE_BAR_GPA) == "T375_P1bar"
    assert sp.state_tag(300.0, 1.0) == "T300_P1GPa"
    assert state_job_name(300.0, 1.0, "reality", "*") == "npt300_1GPa_reality_cell112_s*"
