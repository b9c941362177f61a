"""One N of the update benchmark in fresh processes: the worker side (prepare a store, then time
the update against the baseline, or measure its peak memory) and the parent side that starts the
workers and merges their JSON into one table row."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.update.kernels import forward_backward, time_neighbour_lists, update
from benchmarks.update.memory import FIXED_MMAP_ENV, peak_memory_MB
from benchmarks.update.systems import build_store, load_model

REPOSITORY = Path(__file__).resolve().parents[2]
"""Where the workers run ``python -m benchmarks.update``."""


def prepare(n_snapshots: int, model: str, checkpoint: str | None, device: torch.device,
            chunk_size: int, threads: int):
    """(potential, θ, store) for one N: model loaded, neighbour lists timed, store built, θ
    moved off θ̃, and a warm-up of (a) and (b) on two chunks (lazy initialisation and the
    TorchScript profiling runs of e3nn/nequip modules), so that what follows is measured as
    inside a running training loop."""
    from difftre_torch.sampling.store import SnapshotStore

    torch.set_num_threads(threads)
    potential, params, system = load_model(model, checkpoint, device)
    time_neighbour_lists(potential, device)
    store, search_s = build_store(potential, system, n_snapshots, chunk_size, device)
    with torch.no_grad():  # as after an optimiser step: non-uniform weights
        generator = torch.Generator().manual_seed(1)
        for p in params:
            p.mul_(1.0 + 1e-3 * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(device))
    head = slice(0, 2 * chunk_size)
    warm = SnapshotStore(numbers=store.numbers, positions=store.positions[head],
                         cells=store.cells[head], reference_energies=store.reference_energies[head],
                         temperature_K=store.temperature_K,
                         observables={"rdf": store.observables["rdf"][head]})
    for _ in range(2):
        for cached in (True, False):
            update(potential, warm, params, chunk_size, device, cached)
            forward_backward(potential, warm, params, chunk_size, device, cached)
    return potential, params, store, search_s


def measure_memory(n_snapshots: int, model: str, checkpoint: str | None, device_name: str,
                   chunk_size: int, threads: int) -> dict:
    """Peak memory of one update (run this in a process started with FIXED_MMAP_ENV)."""
    device = torch.device(device_name)
    potential, params, store, _ = prepare(n_snapshots, model, checkpoint, device, chunk_size, threads)
    peak = peak_memory_MB(lambda: update(potential, store, params, chunk_size, device), device)
    return {"n": n_snapshots, "peak_MB": peak}


def measure_time(n_snapshots: int, model: str, checkpoint: str | None, device_name: str,
                 chunk_size: int, repeats: int, threads: int) -> dict:
    """Peak memory of one update (default allocator), then ``repeats`` interleaved timings of
    (a) and (b), medians."""
    device = torch.device(device_name)
    potential, params, store, search_s = prepare(n_snapshots, model, checkpoint, device, chunk_size, threads)
    store_MB = sum(t.numel() * t.element_size() for t in [
        store.positions, store.cells, store.reference_energies, store.observables["rdf"]]) / 2**20
    cache_MB = 0.0 if store.pair_cache is None else store.pair_cache.nbytes / 2**20
    peak = peak_memory_MB(lambda: update(potential, store, params, chunk_size, device), device)
    from difftre_torch.gradient import forward_outputs

    at_hand = forward_outputs(potential, [store], chunk_size=chunk_size)  # step 1 known, outside the clock
    updates, searching, baselines, listed, given = [], [], [], [], []
    for _ in range(repeats):  # interleaved, so slow drifts of a shared machine hit all alike
        updates.append(update(potential, store, params, chunk_size, device))
        given.append(update(potential, store, params, chunk_size, device, forward=at_hand))
        searching.append(update(potential, store, params, chunk_size, device, cached=False))
        baselines.append(forward_backward(potential, store, params, chunk_size, device))
        listed.append(forward_backward(potential, store, params, chunk_size, device, cached=True))

    def median(runs, key):
        return statistics.median(run[key] for run in runs)

    return {
        "n": n_snapshots, "atoms": int(store.numbers.numel()), "store_MB": store_MB,
        "peak_default_malloc_MB": peak,
        "pair_cache_MB": cache_MB, "pair_search_s": search_s,
        "update_s": median(updates, "total"), "fwd_bwd_s": median(baselines, "total"),
        "update_searching_s": median(searching, "total"), "fwd_bwd_listed_s": median(listed, "total"),
        "update_given_s": median(given, "total"),
        "update_phases_s": {k: median(updates, k)
                            for k in ("fwd_nograd", "fwd_graph", "bwd_and_loss", "neighbours")},
        "baseline_phases_s": {k: median(baselines, k) for k in ("fwd", "bwd", "neighbours")},
        "update_runs_s": [u["total"] for u in updates],
        "fwd_bwd_runs_s": [b["total"] for b in baselines],
        "n_eff": updates[-1]["n_eff"], "threads": torch.get_num_threads(),
    }


def run_worker(task: str, n_snapshots: int, args, checkpoint: str | None, model: str,
               env: dict | None = None) -> dict:
    """measure_<task> in a fresh interpreter (its JSON is the last line of stdout)."""
    command = [sys.executable, "-m", "benchmarks.update", "--worker", task, str(n_snapshots),
               "--model", model, "--device", args.device, "--chunk-size", str(args.chunk_size),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{task} worker for N={n_snapshots} failed (rc {result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure(n_snapshots: int, args, checkpoint: str | None, model: str) -> dict:
    """One row: timings (and default-allocator memory) from one fresh process; on CPU with
    glibc the headline memory from a second one started with FIXED_MMAP_ENV."""
    row = run_worker("time", n_snapshots, args, checkpoint, model)
    if args.device == "cpu" and platform.libc_ver()[0] == "glibc":
        row["peak_MB"] = run_worker("memory", n_snapshots, args, checkpoint, model,
                                    FIXED_MMAP_ENV)["peak_MB"]
        row["memory_method"] = (
            "peak RSS growth during the update (ru_maxrss after, high-water mark reset, minus the "
            "RSS before) in a process started with MALLOC_MMAP_THRESHOLD_=65536, so that freed "
            "chunk graphs go back to the OS; 'default malloc' column: the same with glibc's "
            "default dynamic mmap threshold (its cached free blocks add run-to-run slack)")
    elif args.device == "cpu":
        row["peak_MB"], row["peak_default_malloc_MB"] = row["peak_default_malloc_MB"], None
        row["memory_method"] = "peak RSS growth during the update (ru_maxrss), default allocator"
    else:
        row["peak_MB"], row["peak_default_malloc_MB"] = row["peak_default_malloc_MB"], None
        row["memory_method"] = "torch.cuda.max_memory_allocated during the update minus allocated before"
    return row
