"""The world's two resumable lanes (recipes/world/lanes.py): order, skipping, stopping."""

import json

from recipes.world import lanes
from recipes.world.trajectories import experiment_jobs, heldout_jobs, training_jobs


def _finish(runs, names):
    for n in names:
        (runs / n).mkdir(parents=True, exist_ok=True)
        (runs / n / "done.json").write_text(json.dumps({"job": {"name": n}}))


def test_measure_lane_order_and_skips(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    labels = [label for label, _, _ in lanes.measure_lane(runs, data)]
    assert labels[:2] == ["experiment npt300_reality_cell112_s101", "experiment npt300_reality_cell112_s102"]
    assert labels[2] == "held-out campaign"
    assert labels[3] == "experiment npt300_teacher_cell112_s201"  # teacher before the third replica
    assert labels[-3:] == ["publish experiment", "export held-out", "provenance"]
    _finish(runs, [j.name for j, _ in experiment_jobs()][:2])
    skipped = [label for label, _, skip in lanes.measure_lane(runs, data) if skip()]
    assert skipped == labels[:2]
    _finish(runs, [j.name for j, _ in heldout_jobs()])
    assert "held-out campaign" in [label for label, _, skip in lanes.measure_lane(runs, data) if skip()]


def test_model_lane_skips_finished_stages_and_passes_epochs(tmp_path, capsys):
    runs, data = tmp_path / "runs", tmp_path / "data"
    stages = lanes.model_lane(runs, data, tmp_path / "base", max_epochs=7)
    assert [label for label, _, _ in stages] == ["training campaign", "separation frames", "dataset", "base model"]
    assert stages[3][1][-2:] == ["--max-epochs", "7"]
    _finish(runs, [j.name for j, _ in training_jobs()])
    assert [skip() for _, _, skip in lanes.model_lane(runs, data, tmp_path / "base")] == [True, False, False, False]
    assert lanes.main(["model", "--runs", str(runs), "--data", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "training campaign: complete, skipped" in out and "dataset: -m recipes.world.dataset" in out
