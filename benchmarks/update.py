"""Cost of one DiffTRe update against N cached snapshots: time and peak memory.

For N snapshots of one system (64 atoms: rattled, breathing copies of a crystal; content does
not matter for timing) this measures

(a) ``t_update``: one :func:`difftre_torch.gradient.difftre_gradient` call, i.e. a graph-free
    forward pass over all N (chunked), the reweighted RDF loss and its N cotangents, and a
    chunked forward + backward pass into θ; the observable (partial RDFs) is θ-independent and
    cached in the :class:`~difftre_torch.sampling.store.SnapshotStore`;
(b) ``t_fwd_bwd``: the baseline, one plain forward + backward pass of the same model over the
    same N snapshots in the same chunks (energies summed, ``autograd.grad`` into θ);
(c) the peak memory of (a): on CPU the growth of the peak RSS over the RSS just before the call
    (``resource.getrusage(...).ru_maxrss``, as in tests/test_gradient.py, with the high-water
    mark reset through ``/proc/self/clear_refs`` where the kernel allows it), on CUDA
    ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the call.

Each N runs in fresh subprocesses. Both build the store and warm up on two chunks. The timing
process measures the memory of one update with the default allocator, then ``--repeats``
interleaved runs of (a) and (b) (medians; ``time.perf_counter``, ``torch.cuda.synchronize`` on
CUDA). On CPU with glibc a second process, started with a fixed mmap threshold
(:data:`FIXED_MMAP_ENV`), measures the memory of one update again: glibc's default dynamic
threshold keeps freed chunk graphs cached in the heap, which adds tens of MB of allocator slack
to the RSS that has nothing to do with N. The fixed-threshold number is the headline, the
default one is reported next to it. The phases of (a) are timed by wrapping the ``chunk_fn`` it
calls and the potential module's ``neighbor_pairs`` (the package's files are not edited).

Targets: t_update / t_fwd_bwd ≤ 2 (two forward passes and one backward pass against one and
one), peak memory flat within 10 % from N = 100 to N = 10 000.

Models: ``lj`` (LennardJones, fcc argon, 64 atoms, r_c 8.5 Å) or ``nequip`` (a tiny NequIP
model trained here with ``nequip-train`` for one epoch on EMT-labelled C4N4 cells, then
evaluated on 64-atom rock-salt C/N supercells). Default: nequip if it trains, else lj.

    python -m benchmarks.update [--sizes 100 1000 10000] [--device cpu|cuda]
                                [--model lj|nequip] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SECTION = "## update"
TITLE = "# difftre_torch benchmarks"

# ---------------------------------------------------------------------------------------------
# systems


@dataclass
class System:
    """A crystal to rattle, and how. base_positions [N, 3] Å; base_cell [3, 3] Å (rows);
    numbers [N]; rattle_A: Gaussian displacement σ (Å); temperature_K of the state point;
    r_max_A, n_bins: the cached partial RDFs."""

    base_positions: torch.Tensor
    base_cell: torch.Tensor
    numbers: torch.Tensor
    rattle_A: float
    temperature_K: float
    r_max_A: float
    n_bins: int


def argon_system() -> System:
    """fcc argon (a = 5.25 Å), primitive cell repeated 4×4×4: 64 atoms."""
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.25).repeat((4, 4, 4))
    return System(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                  torch.tensor(atoms.numbers), rattle_A=0.15, temperature_K=120.0,
                  r_max_A=6.0, n_bins=60)


def rocksalt_cn(repeat: int, spacing_A: float = 2.2):
    """C/N on a simple-cubic grid (rock-salt ordering), ``repeat``³ sites, as ASE Atoms."""
    import numpy as np
    from ase import Atoms

    grid = np.stack(np.meshgrid(*[np.arange(repeat)] * 3, indexing="ij"), -1).reshape(-1, 3)
    numbers = np.where(grid.sum(1) % 2 == 0, 6, 7)
    return Atoms(numbers=numbers, positions=grid * spacing_A, cell=np.eye(3) * repeat * spacing_A,
                 pbc=True)


def carbon_nitrogen_system() -> System:
    """Rock-salt C/N, 4×4×4 sites (64 atoms, 8.8 Å cube)."""
    atoms = rocksalt_cn(4)
    return System(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                  torch.tensor(atoms.numbers), rattle_A=0.08, temperature_K=300.0,
                  r_max_A=4.0, n_bins=40)


def rattled_snapshots(system: System, n_snapshots: int, seed: int = 0):
    """positions [S, N, 3] Å and cells [S, 3, 3] Å (float64, CPU): the crystal scaled by
    1 + 0.01·(k mod 3 − 1) and rattled by N(0, rattle_A²) per coordinate."""
    generator = torch.Generator().manual_seed(seed)
    scale = 1.0 + 0.01 * (torch.arange(n_snapshots, dtype=torch.float64) % 3 - 1)
    cells = system.base_cell[None] * scale[:, None, None]
    positions = system.base_positions[None] * scale[:, None, None]
    positions += system.rattle_A * torch.randn(positions.shape, generator=generator,
                                               dtype=torch.float64)
    return positions, cells


# ---------------------------------------------------------------------------------------------
# a tiny NequIP model, trained here

def train_tiny_nequip(workdir: Path, n_frames: int = 8) -> Path:
    """nequip-train one epoch (:func:`difftre_torch.testing.train_tiny_nequip`) on ``n_frames``
    EMT-labelled rattled C4N4 cubes (2×2×2 rock salt, 4.4 Å) in ``workdir``; returns ``last.ckpt``."""
    import numpy as np
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from difftre_torch import testing

    rng = np.random.default_rng(7)
    frames = []
    for _ in range(n_frames):
        atoms = rocksalt_cn(2)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return testing.train_tiny_nequip(workdir, frames)


# ---------------------------------------------------------------------------------------------
# the two measured operations


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_store(potential, system: System, n_snapshots: int, chunk_size: int,
                device: torch.device):
    """A SnapshotStore of ``n_snapshots`` rattled snapshots on ``device``: reference energies
    from ``potential`` (chunked, no graph) and the partial RDFs [S, n_pairs·n_bins] cached."""
    from difftre_torch.observables import partial_rdfs
    from difftre_torch.sampling.store import SnapshotStore

    positions, cells = rattled_snapshots(system, n_snapshots)
    positions, cells = positions.to(device), cells.to(device)
    numbers = system.numbers.to(device)
    with torch.no_grad():
        reference = torch.cat([
            potential(positions[k:k + chunk_size], cells[k:k + chunk_size], numbers)
            for k in range(0, n_snapshots, chunk_size)
        ])
    _, partials = partial_rdfs(positions, cells, numbers, system.r_max_A, system.n_bins,
                               snapshots_per_chunk=chunk_size)
    rdf = torch.cat([partials[key] for key in sorted(partials)], dim=1)
    return SnapshotStore(numbers=numbers, positions=positions, cells=cells,
                         reference_energies=reference.detach(),
                         temperature_K=system.temperature_K, observables={"rdf": rdf})


def rdf_loss(store):
    """L = mean_bins (⟨g⟩_θ − g̃)², with g̃ = 1.05 × the plain mean (so dL/dθ ≠ 0)."""
    from difftre_torch.loss import observable_loss
    from difftre_torch.reweighting import reweighted_mean

    target = 1.05 * store.observables["rdf"].mean(0)

    def loss_fn(weights, values):
        loss = observable_loss(reweighted_mean(weights[0], values[0]["rdf"]), target)
        return loss, {"rdf": loss}

    return loss_fn


NEIGHBOUR_SECONDS = [0.0]  # accumulated by the wrapper that time_neighbour_lists installs


def time_neighbour_lists(potential, device: torch.device) -> None:
    """Wrap the ``neighbor_pairs`` that the potential's module calls (a module attribute,
    replaced here; the package's files are untouched) so its seconds add to NEIGHBOUR_SECONDS."""
    module = sys.modules[type(potential).__module__]
    search = getattr(module, "neighbor_pairs", None)
    if search is None:
        return

    def timed_search(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        try:
            return search(*args, **kwargs)
        finally:
            sync(device)
            NEIGHBOUR_SECONDS[0] += time.perf_counter() - start

    module.neighbor_pairs = timed_search


@dataclass
class PhaseClock:
    """Seconds spent in the chunk function, split by phase, accumulated over calls."""

    device: torch.device
    seconds: dict = field(default_factory=lambda: {"fwd_nograd": 0.0, "fwd_graph": 0.0})

    def chunk_fn(self, potential, positions, cells, numbers, store, create_graph):
        sync(self.device)
        start = time.perf_counter()
        out = {"energy": potential(positions, cells, numbers)}
        sync(self.device)
        self.seconds["fwd_graph" if create_graph else "fwd_nograd"] += time.perf_counter() - start
        return out


def update(potential, store, params, chunk_size: int, device: torch.device) -> dict:
    """(a) one difftre_gradient call: seconds in all, per phase, and in neighbour lists."""
    from difftre_torch.gradient import difftre_gradient

    clock = PhaseClock(device)
    neighbours = NEIGHBOUR_SECONDS[0]
    sync(device)
    start = time.perf_counter()
    result = difftre_gradient(potential, [store], rdf_loss(store), params,
                              chunk_fn=clock.chunk_fn, chunk_size=chunk_size)
    sync(device)
    total = time.perf_counter() - start
    return {"total": total, **clock.seconds, "bwd_and_loss": total - sum(clock.seconds.values()),
            "neighbours": NEIGHBOUR_SECONDS[0] - neighbours, "n_eff": result.n_eff[0]}


def forward_backward(potential, store, params, chunk_size: int, device: torch.device) -> dict:
    """(b) the baseline: Σ_chunks autograd.grad(Σ_i U_θ(S_i), θ), accumulated like (a)."""
    grads = [torch.zeros_like(p) for p in params]
    fwd = bwd = 0.0
    neighbours = NEIGHBOUR_SECONDS[0]
    for k in range(0, len(store), chunk_size):
        sl = slice(k, k + chunk_size)
        sync(device)
        t0 = time.perf_counter()
        with torch.enable_grad():
            energy = potential(store.positions[sl], store.cells[sl], store.numbers).sum()
            sync(device)
            t1 = time.perf_counter()
            chunk_grads = torch.autograd.grad(energy, params, allow_unused=True)
        for g, cg in zip(grads, chunk_grads):
            if cg is not None:
                g.add_(cg)
        sync(device)
        t2 = time.perf_counter()
        fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return {"total": fwd + bwd, "fwd": fwd, "bwd": bwd,
            "neighbours": NEIGHBOUR_SECONDS[0] - neighbours}


# ---------------------------------------------------------------------------------------------
# peak memory


def _rss_kB() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (and so ru_maxrss) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _release_free_heap() -> None:
    """glibc ``malloc_trim(0)``: hand freed heap pages back to the OS, so that the RSS before a
    measured call is what is in use, not what earlier calls left cached (no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
"""glibc tunable for the memory-only worker: every block ≥ 64 KiB gets its own mmap and goes back
to the OS when freed. By default glibc raises the threshold after each free of an mmapped block
(up to 32 MiB), so later blocks of a chunk's graph land in the heap and freed ones linger
there: the RSS then carries allocator slack of tens of MB that varies from run to run. Set at
process start (setting it later with mallopt leaves the earlier fragmentation in place)."""


def peak_memory_MB(run, device: torch.device) -> float:
    """Peak memory growth of ``run()`` (MiB): CPU, ru_maxrss after minus the RSS before (the
    high-water mark reset first; without /proc/self/clear_refs, ru_maxrss after minus before);
    CUDA, max_memory_allocated minus memory_allocated before."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _release_free_heap()
    rss_before = _rss_kB()
    reset = _reset_peak_rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss_after - (rss_before if reset else maxrss_before)) / 1024


# ---------------------------------------------------------------------------------------------
# one N, in a fresh process


def load_model(model: str, checkpoint: str | None, device: torch.device):
    """(potential, θ, system) for ``model`` on ``device``."""
    if model == "lj":
        from difftre_torch.potentials import LennardJones

        potential = LennardJones(3.4, 0.0104, 8.5).to(device)
        return potential, [potential.sigma, potential.epsilon], argon_system()
    from difftre_torch.potentials.nequip import load_nequip

    potential = load_nequip(checkpoint, device=device)
    return potential, potential.trainable_parameters(), carbon_nitrogen_system()


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
    store = build_store(potential, system, n_snapshots, chunk_size, device)
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
        update(potential, warm, params, chunk_size, device)
        forward_backward(potential, warm, params, chunk_size, device)
    return potential, params, store


def measure_memory(n_snapshots: int, model: str, checkpoint: str | None, device_name: str,
                   chunk_size: int, threads: int) -> dict:
    """Peak memory of one update (run this in a process started with FIXED_MMAP_ENV)."""
    device = torch.device(device_name)
    potential, params, store = prepare(n_snapshots, model, checkpoint, device, chunk_size, threads)
    peak = peak_memory_MB(lambda: update(potential, store, params, chunk_size, device), device)
    return {"n": n_snapshots, "peak_MB": peak}


def measure_time(n_snapshots: int, model: str, checkpoint: str | None, device_name: str,
                 chunk_size: int, repeats: int, threads: int) -> dict:
    """Peak memory of one update (default allocator), then ``repeats`` interleaved timings of
    (a) and (b), medians."""
    device = torch.device(device_name)
    potential, params, store = prepare(n_snapshots, model, checkpoint, device, chunk_size, threads)
    store_MB = sum(t.numel() * t.element_size() for t in [
        store.positions, store.cells, store.reference_energies, store.observables["rdf"]]) / 2**20
    peak = peak_memory_MB(lambda: update(potential, store, params, chunk_size, device), device)
    updates, baselines = [], []
    for _ in range(repeats):  # interleaved, so slow drifts of a shared machine hit both alike
        updates.append(update(potential, store, params, chunk_size, device))
        baselines.append(forward_backward(potential, store, params, chunk_size, device))

    def median(runs, key):
        return statistics.median(run[key] for run in runs)

    return {
        "n": n_snapshots, "atoms": int(store.numbers.numel()), "store_MB": store_MB,
        "peak_default_malloc_MB": peak,
        "update_s": median(updates, "total"), "fwd_bwd_s": median(baselines, "total"),
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
    result = subprocess.run(command, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent,
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


# ---------------------------------------------------------------------------------------------
# the machine


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_cores(seconds: float = 1.0) -> float:
    """Usable cores kept busy by other processes: the non-idle share of each usable CPU's
    /proc/stat line over ``seconds`` while this process sleeps, summed (0.0 without /proc)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def sample() -> dict[str, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as handle:
            for line in handle:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if usable is not None and int(name[3:]) not in usable:
                    continue
                values = [int(v) for v in fields[:8]]
                out[name] = (sum(values), values[3] + values[4])  # total, idle + iowait
        return out

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError):
        return 0.0
    busy = 0.0
    for name, (total, idle) in after.items():
        total0, idle0 = before.get(name, (total, idle))
        if total > total0:
            busy += 1.0 - (idle - idle0) / (total - total0)
    return busy


def machine_description(device: torch.device, threads: int) -> str:
    from difftre_torch.environment import cpu_model

    text = f"{cpu_model()}, {usable_cores()} usable cores, torch threads {threads}"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def versions(packages: tuple[str, ...] = ("nequip", "e3nn", "vesin-torch")) -> str:
    """"torch X, nequip Y, …" for the benchmark header (missing packages say so)."""
    from difftre_torch.environment import package_versions

    found = package_versions(packages)
    return ", ".join([f"torch {torch.__version__}"] + [
        f"{name} {v}" if v != "not installed" else f"{name} not installed" for name, v in found.items()
        if name != "python"])


# ---------------------------------------------------------------------------------------------
# report


def _growth(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return 100.0 * (value - reference) / reference


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    ref = rows[0]
    lines = [f"| N | update s | fwd+bwd s | ratio | peak memory MB | growth vs N={ref['n']} % "
             f"| peak MB, default malloc | its growth % |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['n']} | {row['update_s']:.3f} | {row['fwd_bwd_s']:.3f} | "
            f"{row['update_s'] / row['fwd_bwd_s']:.2f} | {row['peak_MB']:.1f} | "
            f"{_fmt(_growth(row['peak_MB'], ref['peak_MB']), '+.1f')} | "
            f"{_fmt(row['peak_default_malloc_MB'], '.1f')} | "
            f"{_fmt(_growth(row['peak_default_malloc_MB'], ref['peak_default_malloc_MB']), '+.1f')} |")
    return "\n".join(lines)


def phase_table(rows: list[dict]) -> str:
    lines = ["| N | update: fwd no-graph | update: fwd with graph | update: bwd + loss "
             "| update: of which neighbour lists | fwd+bwd: fwd | fwd+bwd: bwd "
             "| fwd+bwd: of which neighbour lists | store MB | N_eff/N |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        u, b = row["update_phases_s"], row["baseline_phases_s"]
        lines.append(f"| {row['n']} | {u['fwd_nograd']:.3f} | {u['fwd_graph']:.3f} | "
                     f"{u['bwd_and_loss']:.3f} | {u['neighbours']:.3f} | {b['fwd']:.3f} | "
                     f"{b['bwd']:.3f} | {b['neighbours']:.3f} | {row['store_MB']:.1f} | "
                     f"{row['n_eff'] / row['n']:.3f} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    worst_ratio = max(row["update_s"] / row["fwd_bwd_s"] for row in rows)
    worst_growth = max(abs(_growth(row["peak_MB"], rows[0]["peak_MB"]) or 0.0) for row in rows)
    text = (f"Targets: ratio ≤ 2 — {'met' if worst_ratio <= 2.0 else 'NOT met'} "
            f"(worst {worst_ratio:.2f}); peak memory flat within 10 % of N={rows[0]['n']} — "
            f"{'met' if worst_growth <= 10.0 else 'NOT met'} (worst {worst_growth:.1f} %).")
    default = [_growth(row["peak_default_malloc_MB"], rows[0]["peak_default_malloc_MB"]) for row in rows]
    if all(g is not None for g in default):
        text += (f" With glibc's default malloc the RSS peak changes by up to {max(default, key=abs):+.1f} %:"
                 " heap blocks freed by earlier chunks stay cached and fragment; the headline"
                 " (fixed-threshold) column leaves that slack out.")
    return text


def section(rows: list[dict], args, model_text: str, device: torch.device, notes: list[str]) -> str:
    command = "python -m benchmarks.update" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    header = textwrap.dedent(f"""\
        {SECTION}

        One DiffTRe update (`difftre_gradient`, reweighted RDF loss, chunk size {args.chunk_size})
        against one plain forward+backward pass over the same N snapshots (same chunks), and the
        peak memory of the update; fresh processes per N, after a two-chunk warm-up. Times:
        median of {args.repeats} interleaved runs, seconds.

        - date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}
        - machine: {machine_description(device, args.threads)}
        - versions: {versions()}
        - command: `{command}`
        - model: {model_text}; {rows[0]['atoms']} atoms per snapshot; device {device}
        - peak memory: {rows[0]['memory_method']}
        - notes: {' '.join(notes)}

        """)
    return (header + table(rows) + "\n\nPhases of the same runs (median s; neighbour lists are "
            "part of the forward passes):\n\n" + phase_table(rows) + "\n\n" + verdict(rows) + "\n")


def write_section(path: Path, text: str, section: str = SECTION) -> None:
    """Replace the ``section`` (e.g. ``## update``) of ``path`` (up to the next ``## `` heading), or append
    it; other sections stay as they are. Creates the file with a title line if missing."""
    from difftre_torch.checkpoint import atomic_write_text

    lines = path.read_text().splitlines() if path.exists() else [TITLE]
    start = next((k for k, line in enumerate(lines) if line.strip() == section), None)
    new = text.rstrip("\n").splitlines()
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += [""] + new
    else:
        end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")),
                   len(lines))
        lines = lines[:start] + new + ([""] if end < len(lines) else []) + lines[end:]
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    os.chmod(path, mode)  # the atomic write goes through a private (0600) temporary file


# ---------------------------------------------------------------------------------------------
# command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.update",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_positive_int, nargs="+", default=[100, 1000, 10000],
                        help="numbers of snapshots N (the first is the memory reference)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=["lj", "nequip"], default=None,
                        help="default: nequip if nequip-train works here, else lj")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    parser.add_argument("--chunk-size", type=_positive_int, default=100)
    parser.add_argument("--repeats", type=_positive_int, default=3)
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads; default: torch's default, less the cores other "
                             "processes keep busy (measured over 1 s before the run), at least 1")
    parser.add_argument("--notes", default="", help="free text appended to the notes line")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        task, n_snapshots = args.worker[0], int(args.worker[1])
        if task == "memory":
            out = measure_memory(n_snapshots, args.model, args.checkpoint, args.device,
                                 args.chunk_size, args.threads)
        else:
            out = measure_time(n_snapshots, args.model, args.checkpoint, args.device,
                               args.chunk_size, args.repeats, args.threads)
        print(json.dumps(out))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    started = time.perf_counter()
    busy, usable = busy_cores(), usable_cores()
    if args.threads is None:
        args.threads = max(1, min(torch.get_num_threads(), usable - round(busy)))
    notes = [f"Just before the run other processes kept about {busy:.1f} of the {usable} usable "
             f"cores busy (/proc/stat over 1 s); torch threads {args.threads}"
             + (" (fewer than torch's default, so as not to oversubscribe the cores)."
                if args.threads < torch.get_num_threads() else ".")]
    if busy >= 0.5:
        notes.append("CPU timings are shared-machine timings: absolute times vary with the other "
                     "load, the ratio (interleaved runs) much less.")
    with tempfile.TemporaryDirectory(prefix="difftre_bench_") as tmp:
        model, checkpoint = args.model or "nequip", None
        model_text = "LennardJones (σ 3.4 Å, ε 0.0104 eV, r_c 8.5 Å, float64), rattled fcc Ar"
        if model == "nequip":
            try:
                t0 = time.perf_counter()
                checkpoint = str(train_tiny_nequip(Path(tmp)))
                seconds = time.perf_counter() - t0
                from difftre_torch.testing import TINY_NEQUIP_DESCRIPTION
                model_text = f"{TINY_NEQUIP_DESCRIPTION}, trained in {seconds:.0f} s; rattled rock-salt C/N"
                print(f"trained the tiny NequIP model in {seconds:.0f} s", flush=True)
            except Exception as err:  # noqa: BLE001 - any failure means: fall back (or stop)
                if args.model == "nequip":
                    raise
                print(f"nequip did not train ({type(err).__name__}: {str(err)[:300]}); using lj",
                      flush=True)
                notes.append(f"nequip did not train here ({type(err).__name__}), so lj was used.")
                model = "lj"
        rows = []
        for n in args.sizes:
            row = measure(n, args, checkpoint, model)
            rows.append(row)
            print(f"N={n}: update {row['update_s']:.3f} s, fwd+bwd {row['fwd_bwd_s']:.3f} s, "
                  f"peak {row['peak_MB']:.1f} MB", flush=True)
    notes.append(f"Whole run {time.perf_counter() - started:.0f} s. Peak memory counts what the "
                 "update allocates beyond the store (allocated before; 'store MB'): one chunk's "
                 "graph and the O(N) energies, weights and cotangents. " + args.notes)
    text = section(rows, args, model_text, device, [n.strip() for n in notes if n.strip()])
    print("\n" + text)
    write_section(args.out, text)
    print(f"wrote the '{SECTION}' section of {args.out}")


if __name__ == "__main__":
    main()
