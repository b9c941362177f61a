"""The whole stand-in world in two resumable lanes, one per CPU core (or one GPU each).

``python -m recipes.world.lanes {model,measure} --runs runs/world [--data data/world] [--dry-run]``

* ``model``: the training campaign (teacher NVT) → the layer-separation frames → the dataset split → nequip-train of the base
  model (resumes from ``last.ckpt``) → its evaluation and publication (``--publish``) → the
  base model trained on until its validation error stops falling (``base_model_finetune.yaml``,
  ``--init-from`` the published one) → its evaluation and publication beside it
  (``base_model_converged``);
* ``measure``: two reality NPT replicas of the experiment campaign → the experiment's first
  publication → the held-out campaign and its export → PROVENANCE.md → the teacher replica and
  the remaining reality replicas (s103–s105) → the experiment published again with them →
  PROVENANCE.md → the ``states`` campaign (the other state points) → their publication
  (:mod:`recipes.world.state_points`) → PROVENANCE.md.

A stage whose output is already published is skipped even when its intermediate runs are gone
(a campaign whose dataset, export or publication exists is not run again).

Every stage is one of the world's own commands (``python -m recipes.world.<stage>``), run as a
subprocess in order; each resumes from its own checkpoints or is skipped when its output is
complete, so the lane can be killed at any time and started again with the same command. A
stage whose inputs are incomplete (e.g. the dataset while training jobs are missing) is not run:
the lane stops there and says why. ``--dry-run`` prints what would run. On a CPU machine run
each lane with ``DIFFTRE_THREADS=1`` (one core each); train_base takes ``--threads`` itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

from recipes.world.trajectories import experiment_jobs, heldout_jobs, state_jobs, training_jobs


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _done(runs: Path, names: list[str]) -> bool:
    return all((runs / n / "done.json").exists() for n in names)


def model_lane(runs: Path, data: Path, base_run: Path, max_epochs: int | None = None
               ) -> list[tuple[str, list[str], Callable[[], bool]]]:
    """(label, command, skip-when) of the ``model`` lane."""
    names = [job.name for job, _ in training_jobs()]
    epochs = ["--max-epochs", str(max_epochs)] if max_epochs else []
    dataset = lambda: (data / "dataset" / "dataset.json").exists()  # noqa: E731
    converged = base_run.parent / f"{base_run.name}_finetune"
    return [
        ("training campaign", _python("recipes.world.trajectories", "training", "--runs", str(runs)),
         lambda: _done(runs, names) or dataset()),
        ("separation frames", _python("recipes.world.separation", "--runs", str(runs)),
         lambda: (runs / "train_separation" / "done.json").exists() or dataset()),
        ("dataset", _python("recipes.world.dataset", "--runs", str(runs), "--out", str(data / "dataset")),
         lambda: (data / "dataset" / "dataset.json").exists()),
        ("base model", _python("recipes.world.train_base", "--data", str(data / "dataset"), "--run", str(base_run),
                               "--runs", str(runs), "--publish", "--publish-to", str(data / "base_model"), *epochs),
         lambda: (data / "base_model" / "base.ckpt").exists()),
        ("converged base model",
         _python("recipes.world.train_base", "--config", str(Path(__file__).with_name("base_model_finetune.yaml")),
                 "--init-from", str(data / "base_model" / "base.ckpt"), "--data", str(data / "dataset"),
                 "--run", str(converged), "--runs", str(data / "heldout"), "--compile", "--publish", "--publish-to",
                 str(data / "base_model_converged")),
         lambda: (data / "base_model_converged" / "base.ckpt").exists()),
    ]


def _published(runs: Path, data: Path, names: list[str]) -> bool:
    """True when data/experiment's summary already uses every finished replica of ``names``."""
    path = data / "experiment" / "experiment_summary.json"
    if not path.exists():
        return False
    summary = json.loads(path.read_text())
    used = {rep["job"] for rep in summary.get("replicas", [])}
    if summary.get("teacher_vs_reality"):
        used.add(summary["teacher_vs_reality"]["job"])
    return {n for n in names if _done(runs, [n])} <= used


def _used(data: Path, name: str) -> bool:
    """True when the published experiment already holds replica ``name`` (its run may be gone)."""
    path = data / "experiment" / "experiment_summary.json"
    if not path.exists():
        return False
    summary = json.loads(path.read_text())
    used = {rep["job"] for rep in summary.get("replicas", [])}
    used |= {(summary.get("teacher_vs_reality") or {}).get("job")}
    return name in used


def _states_published(index: Path) -> bool:
    """True when the state points' index exists with none pending."""
    return index.exists() and not json.loads(index.read_text()).get("pending")


def measure_lane(runs: Path, data: Path) -> list[tuple[str, list[str], Callable[[], bool]]]:
    """(label, command, skip-when) of the ``measure`` lane.

    The experiment is published as soon as two reality replicas exist (so the refinement has
    data early), then the held-out campaign runs and is exported, and the teacher replica and
    the remaining reality replicas follow; the experiment is published again when they finish (the
    publication stage is skipped only while it already uses every finished replica).
    """
    exp = [job.name for job, _ in experiment_jobs()]
    held = [job.name for job, _ in heldout_jobs()]
    reality = [n for n in exp if "_reality_" in n]
    first_two = reality[:2]
    rest = sorted((n for n in exp if n not in first_two), key=lambda n: "_reality_" in n)  # teacher first

    def replica(n: str) -> tuple[str, list[str], Callable[[], bool]]:
        return (f"experiment {n}", _python("recipes.world.trajectories", "experiment", "--runs", str(runs),
                                           "--only", n), lambda: _done(runs, [n]) or _used(data, n))

    states = [job.name for job, _ in state_jobs()]
    states_index = data / "experiment_states" / "states.json"

    publish = ("publish experiment", _python("recipes.world.experiment", "--runs", str(runs), "--out",
                                             str(data / "experiment"), "--held-out", "new", "--no-progress"),
               lambda: _published(runs, data, exp))
    provenance = ("provenance", _python("recipes.world.provenance", "--runs", str(runs), "--data", str(data)),
                  lambda: False)
    return [
        *(replica(n) for n in first_two),
        publish,
        ("held-out campaign", _python("recipes.world.trajectories", "heldout", "--runs", str(runs)),
         lambda: _done(runs, held) or (data / "heldout" / "heldout.json").exists()),
        ("export held-out", _python("recipes.world.heldout", "--runs", str(runs), "--out", str(data / "heldout")),
         lambda: (data / "heldout" / "heldout.json").exists()),
        provenance,
        *(replica(n) for n in rest),
        publish,
        provenance,
        ("states campaign", _python("recipes.world.trajectories", "states", "--runs", str(runs)),
         lambda: _done(runs, states) or _states_published(states_index)),
        ("publish state points", _python("recipes.world.state_points", "--runs", str(runs), "--out",
                                          str(data / "experiment_states"), "--experiment", str(data / "experiment"),
                                          "--no-progress"),
         lambda: _states_published(states_index)),
        provenance,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lane", choices=("model", "measure"))
    parser.add_argument("--runs", default="runs/world")
    parser.add_argument("--data", default="data/world")
    parser.add_argument("--base-run", default="runs/base_model", help="nequip-train directory")
    parser.add_argument("--max-epochs", type=int, default=None, help="base model epochs (default: the config's)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    runs, data = Path(args.runs), Path(args.data)
    stages = model_lane(runs, data, Path(args.base_run), args.max_epochs) if args.lane == "model" else measure_lane(runs, data)
    for label, command, skip in stages:
        if skip():
            print(f"[lanes:{args.lane}] {label}: complete, skipped", flush=True)
            continue
        print(f"[lanes:{args.lane}] {label}: {' '.join(command[1:])}", flush=True)
        if args.dry_run:
            continue
        code = subprocess.call(command)
        if code != 0:
            print(f"[lanes:{args.lane}] {label}: exit status {code}; the lane stops here "
                  "(run the same command again to resume)", flush=True)
            return code
        if label != "provenance" and not skip():
            print(f"[lanes:{args.lane}] {label}: finished without its complete output; the lane "
                  "stops here rather than build on partial data", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
