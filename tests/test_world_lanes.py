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
    assert labels[2:6] == ["publish experiment", "held-out campaign", "export held-out", "provenance"]
    assert labels[6] == "experiment npt300_teacher_cell112_s201"  # teacher before the third replica
    assert labels[-5:] == ["publish experiment", "provenance", "states campaign", "publish state points", "provenance"]
    commands = [command for label, command, _ in lanes.measure_lane(runs, data) if label == "publish experiment"]
    assert all(command[command.index("--held-out") + 1] == "new" for command in commands)
    exp = [j.name for j, _ in experiment_jobs()]
    _finish(runs, exp[:2])
    skipped = [label for label, _, skip in lanes.measure_lane(runs, data) if skip()]
    assert skipped == labels[:2]
    _finish(runs, [j.name for j, _ in heldout_jobs()])
    assert "held-out campaign" in [label for label, _, skip in lanes.measure_lane(runs, data) if skip()]


def test_measure_lane_skips_what_is_published_when_the_runs_are_gone(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    exp = [j.name for j, _ in experiment_jobs()]
    (data / "experiment").mkdir(parents=True)
    summary = {"replicas": [{"job": n} for n in exp if "_reality_" in n],
               "teacher_vs_reality": {"job": next(n for n in exp if "_teacher_" in n)}}
    (data / "experiment" / "experiment_summary.json").write_text(json.dumps(summary))
    (data / "heldout").mkdir()
    (data / "heldout" / "heldout.json").write_text("{}")
    skipped = {label for label, _, skip in lanes.measure_lane(runs, data) if skip()}
    assert {f"experiment {n}" for n in exp} | {"held-out campaign", "export held-out", "publish experiment"} <= skipped
    assert "states campaign" not in skipped and "publish state points" not in skipped
    index = data / "experiment_states" / "states.json"
    index.parent.mkdir()
    index.write_text(json.dumps({"state_points": {}, "pending": {"T150_P1bar": "1 of 2"}}))
    assert "publish state points" not in {label for label, _, skip in lanes.measure_lane(runs, data) if skip()}
    index.write_text(json.dumps({"state_points": {}, "pending": {}}))
    skipped = {label for label, _, skip in lanes.measure_lane(runs, data) if skip()}
    assert {"states campaign", "publish state points"} <= skipped


def test_measure_lane_publishes_again_when_replicas_finish(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    exp = [j.name for j, _ in experiment_jobs()]
    reality, teacher = [n for n in exp if "_reality_" in n], [n for n in exp if "_teacher_" in n]
    _finish(runs, reality[:2])
    publish = [skip for label, _, skip in lanes.measure_lane(runs, data) if label == "publish experiment"][0]
    assert not publish()  # nothing published yet
    (data / "experiment").mkdir(parents=True)
    summary = {"replicas": [{"job": n} for n in reality[:2]], "teacher_vs_reality": None}
    (data / "experiment" / "experiment_summary.json").write_text(json.dumps(summary))
    assert publish()
    _finish(runs, teacher)
    assert not publish()  # a finished teacher replica is not in the published summary
    summary["teacher_vs_reality"] = {"job": teacher[0]}
    (data / "experiment" / "experiment_summary.json").write_text(json.dumps(summary))
    assert publish()
    _finish(runs, reality[2:])
    assert not publish()


def test_model_lane_skips_finished_stages_and_passes_epochs(tmp_path, capsys):
    runs, data = tmp_path / "runs", tmp_path / "data"
    stages = lanes.model_lane(runs, data, tmp_path / "base", max_epochs=7)
    assert [label for label, _, _ in stages] == ["training campaign", "separation frames", "dataset", "base model",
                                                 "converged base model"]
    assert stages[3][1][-2:] == ["--max-epochs", "7"]
    converged = stages[4][1]
    assert converged[converged.index("--init-from") + 1] == str(data / "base_model" / "base.ckpt")
    assert converged[converged.index("--publish-to") + 1] == str(data / "base_model_converged")
    assert converged[converged.index("--config") + 1].endswith("base_model_finetune.yaml")
    _finish(runs, [j.name for j, _ in training_jobs()])
    assert [skip() for _, _, skip in lanes.model_lane(runs, data, tmp_path / "base")] == [True, False, False, False,
                                                                                        False]
    assert lanes.main(["model", "--runs", str(runs), "--data", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "training campaign: complete, skipped" in out and "dataset: -m recipes.world.dataset" in out
    (data / "dataset").mkdir(parents=True)
    (data / "dataset" / "dataset.json").write_text("{}")
    fresh = tmp_path / "gone"  # the training runs are gone, the dataset is published
    assert [skip() for _, _, skip in lanes.model_lane(fresh, data, tmp_path / "base")][:3] == [True, True, True]
