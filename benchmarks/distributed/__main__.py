"""Command line of the scaling benchmark: ``python -m benchmarks.distributed`` (see the package's
docstring). ``worker`` is the inner process (alone, or one rank under torchrun)."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import command_line, device_title, now_text, write_section

QUICK = Path("recipes/gc3n4/quick.yaml")
LATENCY_S = 10e-6
"""Assumed latency of one step of a tree all-reduce between GPUs (α), s."""
BANDWIDTH_B_S = 20e9
"""Assumed all-reduce bandwidth per GPU (B), bytes/s (a 200 Gb/s link, less protocol overhead)."""


def _overrides(args, replicas: int) -> list[str]:
    return [f"state_points.0.replicas={replicas}", f"sampler.equilibration_steps={args.equilibration}",
            f"sampler.reequilibration_steps={args.reequilibration}",
            f"sampler.snapshots_per_replica={args.snapshots}", f"sampler.stride={args.stride}",
            "sampler.progress=false", f"trainer.updates={args.updates}", "trainer.resample_ratio=1.0",
            "trainer.progress=false", "trainer.tensorboard=false"]


def worker(args) -> None:
    """``args.updates`` updates of the quick job's refinement (each samples again: resample_ratio 1);
    rank 0 writes per-update times and the all-reduce volume to ``args.out``."""
    import warnings

    import torch

    from difftre_torch import distributed
    from difftre_torch.config import load_job
    from difftre_torch.workflow.build import build_potential, build_system, build_targets, reference_frames
    from difftre_torch.workflow.steps import make_trainer

    warnings.filterwarnings("ignore")
    ranks = distributed.start(600.0)
    torch.set_num_threads(args.threads)
    job = load_job(QUICK, _overrides(args, args.replicas))
    atoms = build_system(job)
    targets = build_targets(job, job.targets)
    potential = build_potential(job, atoms)
    lam = float(job.trainer.force_matching_weight)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(ranks.broadcast(scratch, "the scratch folder"))
        trainer = make_trainer(job, folder, atoms, targets, lam, potential, lambda: reference_frames(job), ranks)
        trainer.callbacks = []
        rows = []
        for _ in range(args.updates):
            before = (ranks.bytes_reduced, ranks.reductions)
            t0 = time.perf_counter()
            record = trainer.step()
            rows.append({"wall_s": time.perf_counter() - t0, "sample_s": record.time["sample"],
                         "gradient_s": record.time["update"], "bytes": ranks.bytes_reduced - before[0],
                         "reductions": ranks.reductions - before[1], "loss": record.loss["total"]})
        everyone = ranks.gather(rows, "collecting the timings")
        if ranks.is_main:
            result = {
                "world_size": ranks.world_size, "replicas": args.replicas, "backend": ranks.backend,
                "device": str(ranks.device), "lambda": lam, "parameters": sum(p.numel() for p in trainer.params),
                "target_values": sum(int(t.values.numel()) for t in targets),
                "snapshots": trainer.sizes, "local_snapshots": [len(s) for s in trainer.stores],
                "rows": rows, "ranks": everyone,
            }
            Path(args.out).write_text(json.dumps(result, indent=1))
    distributed.stop(ranks)


def _run(args, ranks: int, replicas: int, out: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.distributed", "worker", "--out", str(out),
               "--replicas", str(replicas), "--threads", str(args.threads)]
    for name in ("updates", "equilibration", "reequilibration", "snapshots", "stride"):
        command += [f"--{name}", str(getattr(args, name))]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(ranks)] + command[1:]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    print(f"[benchmark] {ranks} rank(s), {replicas} replica(s): {' '.join(command)}", flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the worker failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


def _steady(result: dict, key: str) -> float:
    """Median over the updates after the first (which equilibrates from the start structure)."""
    return statistics.median(r[key] for r in result["rows"][1:])


def project(rank_s: float, nbytes: float, reductions: float, gpus: int) -> float:
    """Update time at ``gpus`` ranks (weak scaling): rank time + all-reduce latency and volume."""
    latency = reductions * LATENCY_S * 2 * math.log2(gpus)
    volume = 2 * (gpus - 1) / gpus * nbytes / BANDWIDTH_B_S
    return rank_s + latency + volume


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__)
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "worker"))
    parser.add_argument("--out", default=None, help="worker: its JSON; run: the RESULTS.md to write")
    parser.add_argument("--replicas", type=int, default=4, help="replicas of the refined state point in all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--equilibration", type=int, default=100)
    parser.add_argument("--reequilibration", type=int, default=60)
    parser.add_argument("--snapshots", type=int, default=12)
    parser.add_argument("--stride", type=int, default=5)
    parser.add_argument("--notes", default="", help="a sentence for the notes line")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args)
        return
    import torch

    from difftre_torch.environment import busy_cores, cpu_model, usable_cores

    busy = busy_cores()
    t0 = time.perf_counter()
    half = args.replicas // 2
    with tempfile.TemporaryDirectory() as scratch:
        runs = {
            "one": _run(args, 1, args.replicas, Path(scratch) / "one.json"),
            "two": _run(args, 2, args.replicas, Path(scratch) / "two.json"),
            "rank": _run(args, 1, half, Path(scratch) / "rank.json"),
        }
    one, two, rank = runs["one"], runs["two"], runs["rank"]
    nbytes = statistics.median(r["bytes"] for r in two["rows"][1:])
    reductions = statistics.median(r["reductions"] for r in two["rows"][1:])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f", GPU {torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}" if device.type == "cuda" else ""
    rows = []
    for label, key in (("1 process", "one"), ("2 ranks", "two"), ("1 process, one rank's share", "rank")):
        r = runs[key]
        per_rank = r["replicas"] // r["world_size"]
        rows.append(f"| {label} | {r['replicas']} | {per_rank} | {r['backend'] or '-'} | "
                    f"{_steady(r, 'sample_s'):.2f} | {_steady(r, 'gradient_s'):.2f} | {_steady(r, 'wall_s'):.2f} |")
    speedup = _steady(one, "wall_s") / _steady(two, "wall_s")
    overhead = _steady(two, "wall_s") / _steady(rank, "wall_s")
    rank_s = _steady(rank, "wall_s")
    projections = "\n".join(
        f"| {p} | {p * half} | {project(rank_s, nbytes, reductions, p):.2f} | "
        f"{1e3 * (project(rank_s, nbytes, reductions, p) - rank_s):.2f} |" for p in (8, 64, 512))
    comm_512 = project(rank_s, nbytes, reductions, 512) - rank_s
    conclusion = (f"At 512 GPUs the all-reduces would take {1e3 * comm_512:.2f} ms of a {rank_s:.2f} s update "
                  f"({100 * comm_512 / rank_s:.3f} %): the update time is that of the slowest rank's sampling "
                  "and gradient, so load balance (a rank whose replica blows up and rolls back makes the "
                  "others wait) and the per-rank time limit the scaling, not the all-reduces.")
    text = f"""{device_title("## distributed", device)}

One DiffTRe update of the quick g-C3N4 job (NequIP base + pair correction; G(r), a and spacing
targets; force matching λ = {one['lambda']:g}), every update sampling again (resample_ratio 1;
re-equilibration {args.reequilibration} steps, {args.snapshots} snapshots × stride {args.stride} per replica),
in fresh processes side by side: 1 process with all replicas, 2 ranks (torchrun) with half each,
and 1 process with half (one rank's work alone). Times: rank 0's wall clock, median of updates
2–{args.updates} (update 1 also equilibrates {args.equilibration} steps), s.

- date: {now_text()}
- machine: {cpu_model()}, {usable_cores()} usable cores, torch threads {args.threads} per process{gpu}
- versions: torch {torch.__version__}
- command: `{command_line('benchmarks.distributed')}`
- notes: Just before the run other processes kept about {busy:.1f} of the {usable_cores()} usable cores busy. Whole run {time.perf_counter() - t0:.0f} s. {args.notes}

| run | replicas | per rank | backend | sampling s | gradient s | update s |
|---|---:|---:|---|---:|---:|---:|
{chr(10).join(rows)}

Speed-up of 2 ranks over 1 process with the same replicas: **{speedup:.2f}×**; 2 ranks / one rank's
share alone: {overhead:.2f} (the difference holds the waiting for the slower rank, the all-reduces and two processes sharing {usable_cores()} cores; not measured apart).

Communication per update (counted on rank 0 by `Ranks`): **{nbytes / 1e3:.1f} kB** in {reductions:.0f}
all-reduces ({one['parameters']} trainable parameters, once for the DiffTRe gradient and once for force
matching, as float64; {one['target_values']} target values plus their normalisations; the weights' maximum and
sum; N_eff; sampling statistics; lattice averages; a barrier per checkpoint when checkpoints are written, none
here). The volume does not grow with the replicas or the atoms.

Projection for weak scaling (each GPU keeps {half} replica(s), measured rank time {rank_s:.2f} s from this
machine), t(P) = t_rank + n_reduce·α·2·log2(P) + 2(P−1)/P · bytes/B with **assumed** α = {LATENCY_S * 1e6:g} µs
per tree step and B = {BANDWIDTH_B_S / 1e9:g} GB/s (not measured here):

| GPUs | replicas | update s | of which communication ms |
|---:|---:|---:|---:|
{projections}

{conclusion}
"""
    out = Path(args.out) if args.out else Path(__file__).resolve().parents[1] / "RESULTS.md"
    write_section(out, text, device_title("## distributed", device))
    print(text)


if __name__ == "__main__":
    main()
