"""Command line of the MD-steps benchmark: ``python -m benchmarks.multistate`` (see the package's
docstring). ``worker`` is the inner process of one refinement."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import command_line, device_title, now_text, write_section

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = {
    "lj": ("the LJ example (`difftre refine lj_argon`)", ROOT / "difftre_torch" / "data" / "lj_argon" / "lj_argon.yaml"),
    "gc3n4": ("the g-C3N4 quick job", ROOT / "recipes" / "gc3n4" / "quick.yaml"),
}
VARIANTS = {
    "today": [],
    "pool": ["trainer.pool_size={pool}"],
    "curvature": ["trainer.optimizer=levenberg_marquardt"],
    "both": ["trainer.optimizer=levenberg_marquardt", "trainer.pool_size={pool}"],
    "both_half": ["trainer.optimizer=levenberg_marquardt", "trainer.pool_size={pool}",
                  "sampler.snapshots_per_replica={half}"],
}


def md_steps(job, rounds: int) -> int:
    """MD steps of every replica of every refined state point after ``rounds`` sampling rounds."""
    s = job.sampler
    per_replica = 0 if rounds == 0 else (s.equilibration_steps + (rounds - 1) * s.reequilibration_steps
                                         + rounds * s.snapshots_per_replica * s.stride)
    return per_replica * sum(p.replicas for p in job.state_points if p.refine)


def worker(args) -> None:
    """One refinement into ``args.dir`` (resumed from its checkpoint); each update's record with the
    MD steps and wall time so far appended to ``rows.jsonl``; ``done.json`` at the end."""
    import warnings

    import torch

    from difftre_torch.callbacks import Callback, CheckpointCallback
    from difftre_torch.config import load_job
    from difftre_torch.workflow.build import build_potential, build_system, build_targets, reference_frames
    from difftre_torch.workflow.steps import make_trainer

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    half = max(1, load_job(SYSTEMS[args.system][1]).sampler.snapshots_per_replica // 2)
    overrides = [o.format(pool=args.pool, half=half) for o in VARIANTS[args.variant]] + [
        "trainer.progress=false", "trainer.tensorboard=false", "sampler.progress=false"] + list(args.set or [])
    job = load_job(SYSTEMS[args.system][1], overrides)
    atoms = build_system(job)
    targets = build_targets(job, job.targets)
    potential = build_potential(job, atoms)
    lam = float(job.trainer.force_matching_weight)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(job, folder, atoms, targets, lam, potential, lambda: reference_frames(job))

    class Rows(Callback):
        def on_update_end(self, t, record):
            row = {"update": record.update, "md_steps": md_steps(job, t.rounds_sampled),
                   "wall_s": t.times["sample"] + t.times["update"], "record": record.to_json()}
            with open(folder / "rows.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")

    trainer.callbacks = [Rows(), CheckpointCallback()]  # the row first: a redone update replaces it
    summary = trainer.fit(resume=True)
    (folder / "done.json").write_text(json.dumps({"overrides": overrides, "stopped": summary.stopped,
                                                  "parameters_final": summary.parameters_final,
                                                  "parameter_errors": summary.parameter_errors}))


def rows_of(folder: Path) -> list[dict]:
    """The rows of a run, one per update (a redone update's last row)."""
    rows: dict[int, dict] = {}
    for line in (folder / "rows.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["update"]] = row
    return [rows[k] for k in sorted(rows)]


def first_reaching(rows: list[dict], loss: float, noise: float) -> dict | None:
    """The first row whose target loss is at most ``loss`` plus the combined noise of both
    (√(SE² + noise²), SE the row's own jackknife error): equal within sampling noise."""
    for r in rows:
        own = r["record"]["noise"]
        if own["target_loss"] <= loss + (own["loss_se"] ** 2 + noise ** 2) ** 0.5:
            return r
    return None


def table(system: str, runs: dict[str, list[dict]]) -> tuple[str, list[str]]:
    end = runs["today"][-1]["record"]["noise"]
    loss, noise = end["target_loss"], end["loss_se"]
    base = first_reaching(runs["today"], loss, noise)
    lines = ["| variant | updates | samples | MD steps | wall s | target loss at the end ± SE | reached today's "
             "at update | MD steps to it | wall s to it | fewer MD steps than today |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    first = runs["today"][0]["md_steps"]
    notes = [f"the first sample (with its equilibration) is {first} of today's {base['md_steps']} MD steps to its "
             f"final loss: no step rule can take fewer than {first}, at most {base['md_steps'] / first:.2f}× fewer"]
    for name, rows in runs.items():
        last = rows[-1]
        samples = 1 + sum(r["record"]["resampled"] for r in rows)
        hit = first_reaching(rows, loss, noise)
        reached = ("–", "–", "–", "–") if hit is None else (
            str(hit["update"]), str(hit["md_steps"]), f"{hit['wall_s']:.0f}",
            f"{base['md_steps'] / hit['md_steps']:.2f}×")
        own = last["record"]["noise"]
        lines.append(f"| {name} | {last['update']} | {samples} | {last['md_steps']} | {last['wall_s']:.0f} | "
                     f"{own['target_loss']:.3g} ± {own['loss_se']:.2g} | {' | '.join(reached)} |")
        params = last["record"]["parameters"]
        if params:
            notes.append(f"{name}: θ at the last update " + ", ".join(f"{k} {v:.4f}" for k, v in params.items()))
    return "\n".join(lines), notes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multistate", description=__doc__,
                                     epilog="example: python -m benchmarks.multistate --systems lj gc3n4")
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "worker"))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--pool", type=int, default=3, help="trainer.pool_size of the pooled variants")
    parser.add_argument("--dir", default="runs/multistate", help="run: the folder of all runs; worker: its own")
    parser.add_argument("--system", choices=list(SYSTEMS), help="worker: the system")
    parser.add_argument("--variant", choices=list(VARIANTS), help="worker: the variant")
    parser.add_argument("--set", action="append", help="worker: a further config override KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--parallel", type=int, default=1, help="refinements run at once")
    parser.add_argument("--out", default=None, help="the RESULTS.md to write")
    parser.add_argument("--notes", default="", help="a sentence for the notes line")
    parser.add_argument("--report-only", action="store_true", help="write the table from what --dir holds, "
                        "starting no refinement")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args)
        return
    import torch

    from difftre_torch.environment import busy_cores, cpu_model, usable_cores

    busy = busy_cores()
    t0 = time.perf_counter()
    base = Path(args.dir)
    jobs = [] if args.report_only else [(s, v) for s in args.systems for v in args.variants
                                        if not (base / s / v / "done.json").exists()]
    running: list[tuple[subprocess.Popen, str]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    while jobs or running:
        while jobs and len(running) < args.parallel:
            system, variant = jobs.pop(0)
            folder = base / system / variant
            folder.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "benchmarks.multistate", "worker", "--system", system,
                       "--variant", variant, "--dir", str(folder), "--pool", str(args.pool),
                       "--threads", str(args.threads)]
            print(f"[benchmark] {system}/{variant}: {' '.join(command)}", flush=True)
            log = open(folder / "worker.log", "a")
            running.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), f"{system}/{variant}"))
        time.sleep(2.0)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed ({proc.returncode}); see {base / name / 'worker.log'}")
                print(f"[benchmark] {name}: done", flush=True)
    sections = []
    for system in args.systems:  # every variant of the system with rows, in VARIANTS' order
        finished = [v for v in VARIANTS if (base / system / v / "rows.jsonl").exists()]
        if not (base / system / "today" / "done.json").exists():
            raise SystemExit(f"{base / system / 'today'}: today's finished run is needed for the comparison; "
                             f"run python -m benchmarks.multistate --systems {system} --variants today")
        runs = {v: rows_of(base / system / v) for v in finished}
        text, notes = table(system, runs)
        done = {v: json.loads((base / system / v / "done.json").read_text()) for v in finished
                if (base / system / v / "done.json").exists()}
        notes += [f"{v}: unfinished, {len(runs[v])} updates when this table was written (resume with the same "
                  "command)" for v in finished if v not in done]
        errors = [f"{v}: standard errors " + ", ".join(f"{k} {x:.4f}" for k, x in d["parameter_errors"].items())
                  for v, d in done.items() if d["parameter_errors"] and len(d["parameter_errors"]) <= 4]
        sections.append(f"### {SYSTEMS[system][0]}\n\n{text}\n\n" + "".join(f"- {n}\n" for n in notes + errors))
    device = torch.device("cpu")
    text = f"""{device_title("## multistate", device)}

MD steps to the same loss (`benchmarks/multistate`): today's trainer, the snapshot pool
(pool_size {args.pool}, MBAR), Levenberg–Marquardt steps, both, and both with trajectories of half
as many snapshots, each job with its shipped sampler settings (but that), seeds and number of
updates, the stopping rule off, side by side in the same folder (`--dir`). The target loss is the reweighted
loss of the experiment's terms (without force matching) with its jackknife standard error (SE).
"Reached" is the first update whose target loss is at most the loss today's trainer ends with
plus the two losses' combined SE (equal within sampling noise). MD steps count every replica of
every refined state point; samples include the first.

- date: {now_text()}
- machine: {cpu_model()}, {usable_cores()} usable cores, torch threads {args.threads} per process, {args.parallel} at once
- versions: torch {torch.__version__}
- command: `{command_line('benchmarks.multistate')}`
- notes: Just before the run other processes kept about {busy:.1f} of the {usable_cores()} usable cores busy. This command's own time {time.perf_counter() - t0:.0f} s (runs resumed from `--dir` count only their rest). {args.notes}

{chr(10).join(sections)}"""
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "RESULTS.md"
    write_section(out, text, device_title("## multistate", device))
    print(text)


if __name__ == "__main__":
    main()
