"""Command line of the threads benchmark: ``python -m benchmarks.threads`` (see the package's
docstring). ``worker`` is the inner process each measurement runs in."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.threads import __doc__ as DOC

QUICK = Path("recipes/gc3n4/quick.yaml")
BUSY_LOOP = "while True: pass"


# ----------------------------------------------------------------------------- inner processes


def worker_micro(threads: int, seconds: float) -> dict:
    """Element-wise ops on [112, 3] float64 tensors for ``seconds``: ops per second."""
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(112, 3, dtype=torch.float64)
    y = torch.randn(112, 3, dtype=torch.float64)
    for _ in range(200):
        x = x * 0.999 + y * 1e-3
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            x = x * 0.999 + y * 1e-3
        n += 100
    return {"rate": n / (time.perf_counter() - t0)}


def worker_md(threads: int, steps: int) -> dict:
    """The quick job's ``npt`` MD (2 × 112 atoms, one batch): steps per second after a warm-up."""
    import warnings
    from dataclasses import replace

    import torch

    from difftre_torch.config import load_job
    from difftre_torch.workflow.build import build_base_potential, build_system, make_sampler

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    job = load_job(QUICK, [])
    job.sampler = replace(job.sampler, progress=False, snapshots_per_replica=1, stride=1,
                          equilibration_steps=20, reequilibration_steps=steps)
    atoms = build_system(job)
    potential = build_base_potential(job)
    sampler = make_sampler(job, atoms, [job.state_points[0]])
    sampler.sample(potential)  # warm-up round (20 steps)
    t0 = time.perf_counter()
    sampler.sample(potential)
    return {"rate": (steps + 1) / (time.perf_counter() - t0), "atoms_per_step": len(atoms) * job.state_points[0].replicas}


def worker_stage(out: str) -> dict:
    """The quick job's first stage as ``difftre refine`` runs it (its thread choice included)."""
    from difftre_torch import threads

    threads.prepare_openmp()
    from difftre_torch.config import load_job
    from difftre_torch.workflow.pipeline import Pipeline

    job = load_job(QUICK, [])
    from difftre_torch.workflow.build import build_system

    per_step = len(build_system(job)) * max(p.replicas for p in job.state_points)
    choice = threads.choose_threads(per_step)
    threads.apply(choice)
    print(choice.describe(), file=sys.stderr, flush=True)
    pipeline = Pipeline(job, Path(out), fresh=True, log=lambda s: print(s, file=sys.stderr, flush=True))
    first = pipeline.items({})[0]
    t0 = time.perf_counter()
    first.run()
    return {"wall_s": time.perf_counter() - t0, "threads": choice.threads, "reason": choice.reason,
            "policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


# ----------------------------------------------------------------------------- the driver


def run_one(kind: str, args: list[str], env: dict, competitor: bool) -> dict:
    """Run ``worker kind args`` in a fresh process (beside a busy loop if ``competitor``)."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if competitor else None
    try:
        if busy is not None:
            time.sleep(1.0)
        done = subprocess.run([sys.executable, "-m", "benchmarks.threads", "worker", kind, *args],
                              env=env, capture_output=True, text=True, check=False)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment(policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    return env


def measure_md(steps: int, seconds: float, repeats: int) -> list[dict]:
    rows = []
    for competitor in (False, True):
        for policy in (None, "PASSIVE"):
            for threads in (1, 2):
                md = [run_one("md", [str(threads), str(steps)], environment(policy), competitor)
                      for _ in range(repeats)]
                micro = run_one("micro", [str(threads), str(seconds)], environment(policy), competitor)
                row = {"competitor": competitor, "policy": policy or "default", "threads": threads,
                       "md_steps_per_s": max(m["rate"] for m in md), "micro_ops_per_s": micro["rate"],
                       "atoms_per_step": md[0]["atoms_per_step"]}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def measure_stage(out: Path) -> list[dict]:
    rows = []
    for competitor in (False, True):
        result = run_one("stage", [str(out / ("busy" if competitor else "alone"))], environment(None), competitor)
        row = {"competitor": competitor, **result}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def section(md: list[dict], stage: list[dict], command: str, seconds: float) -> str:
    from benchmarks.common import now_text, versions
    from difftre_torch.environment import cpu_model, usable_cores

    lines = ["## threads", "",
             "Thread use on a shared machine: each measurement in a fresh process, alone and beside one "
             "competing single-threaded process (a Python busy loop), side by side in one run.", "",
             f"- date: {now_text()}",
             f"- machine: {cpu_model()}, {usable_cores()} usable cores",
             f"- versions: {versions()}",
             f"- command: `{command}`",
             f"- whole run {seconds:.0f} s", ""]
    if md:
        lines += ["MD of the quick g-C3N4 job (base NequIP, float32, `npt` state point: "
                  f"{md[0]['atoms_per_step']} atoms per step in one batch) and a small-tensor op "
                  "([112, 3] float64, `x*a + y*b`):", "",
                  "| competitor | OMP_WAIT_POLICY | threads | MD steps/s | small ops/s |",
                  "|---|---|---:|---:|---:|"]
        for r in md:
            lines.append(f"| {'one' if r['competitor'] else 'none'} | {r['policy']} | {r['threads']} | "
                         f"{r['md_steps_per_s']:.1f} | {r['micro_ops_per_s']:.0f} |")
        lines.append("")
    if stage:
        alone = next(r for r in stage if not r["competitor"])
        busy = next(r for r in stage if r["competitor"])
        ratio = busy["wall_s"] / alone["wall_s"]
        lines += ["The quick job's first stage (base model's structure comparison, both state points) "
                  "with `difftre refine`'s default thread settings:", "",
                  "| competitor | threads chosen | OMP_WAIT_POLICY | wall s |", "|---|---:|---|---:|",
                  f"| none | {alone['threads']} | {alone['policy']} | {alone['wall_s']:.0f} |",
                  f"| one | {busy['threads']} | {busy['policy']} | {busy['wall_s']:.0f} |", "",
                  f"Ratio with a competitor / alone: **{ratio:.2f}** (target ≤ 1.3: "
                  f"{'met' if ratio <= 1.3 else 'not met'}).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        kind, rest = argv[1], argv[2:]
        if kind == "micro":
            result = worker_micro(int(rest[0]), float(rest[1]))
        elif kind == "md":
            result = worker_md(int(rest[0]), int(rest[1]))
        else:
            result = worker_stage(rest[0])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=DOC.split("\n")[0],
                                     epilog="example:\n  python -m benchmarks.threads --mode md",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["md", "stage", "both"], default="both")
    parser.add_argument("--steps", type=int, default=100, help="MD steps timed per md measurement")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each small-op measurement")
    parser.add_argument("--repeats", type=int, default=2, help="md measurements per setting (best kept)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/difftre_threads_bench"),
                        help="folder for the stage runs' outputs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args(argv)
    from benchmarks.common import command_line, write_section

    t0 = time.perf_counter()
    md = measure_md(args.steps, args.seconds, args.repeats) if args.mode in ("md", "both") else []
    stage = measure_stage(args.work) if args.mode in ("stage", "both") else []
    text = section(md, stage, command_line("benchmarks.threads"), time.perf_counter() - t0)
    write_section(args.out, text, "## threads")
    print(text)


if __name__ == "__main__":
    main()
