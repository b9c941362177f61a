"""MD throughput: ASE Langevin (AseSampler) against the batched sampler and the model-bound limit.

For a ~100-atom and a ~500-atom periodic cell this measures, in NVT at one state point:

(a) ``AseSampler`` with one replica: ASE's ``Langevin`` driving the potential through
    ``PotentialCalculator`` (one snapshot per call, its own neighbour search every step);
(b) ``BatchedSampler`` with R = 1, 8, 32 replicas (and 128 on CUDA) as one batch: BAOAB,
    Verlet list with a 1 Å skin, blow-up checks every 10 steps, as the trainer runs it;
(c) the model-bound limit for the same R: the same model's forward + force pass alone
    (:func:`difftre_torch.sampling.integrators.forces_and_stress`) on the same R snapshots with a
    precomputed exact neighbour list (no skin), i.e. what one MD step cannot undercut.

Each sampler runs two rounds (``sample`` calls): the first warms up (lazy initialisation, the
TorchScript profiling runs of e3nn/nequip modules) and calibrates the number of steps so that
the timed second round takes about ``--seconds``; the second round's wall time (from the
``sample`` call to its return, snapshots included) gives MD steps/s. Replica-steps/s = R ×
steps/s; atom-steps/s = N × replica-steps/s. Headline: batched/ASE (replica-steps/s ratio) and
batched/limit (time of one limit evaluation over time of one batched step). On CPU the share of
the batched step spent in the model call and in neighbour-list upkeep is measured in the same run
(module functions wrapped with timers; on CUDA in a separate, synchronised pass).

With ``--compiled`` (nequip only) each R also gets a row ``batched, compiled``: the same
BatchedSampler driving the model compiled by ``nequip-compile --mode aotinductor --target batch``
(:func:`difftre_torch.potentials.compiled.compile_nequip`, checked against the eager model with
:func:`~difftre_torch.potentials.compiled.check_same_energies` before timing), as
``CompiledSampling`` gives it to the trainer while θ is unchanged; "vs eager" = its
replica-steps/s over the eager batched row's.

Models: ``nequip`` (a small NequIP model trained here with ``nequip-train`` for three epochs on
EMT-labelled rattled fcc Cu, config below: float32, l_max 1, 16 features, 2 layers, r_max 4 Å;
fcc Cu cells of 108 and 500 atoms at 300 K, Δt 2 fs) or ``lj`` (LennardJones,
σ 3.405 Å, ε 0.0104 eV, r_c 8.5 Å, float64; fcc argon cells of 108 and 500 atoms at 80 K,
Δt 5 fs). Default: both, one table each (nequip first; skipped with a note if it does not
train here).

    python -m benchmarks.sampling [--device cpu|cuda] [--model lj|nequip ...]
                                  [--replicas 1 8 32] [--seconds 5] [--threads N] [--compiled]
                                  [--out benchmarks/RESULTS.md]

Targets (issue 6): on GPU, batched ≥ 20× ASE and ≥ 90 % of the model-bound limit at the best R;
on CPU, batched ≥ 2× ASE at R ≥ 8.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.update import busy_cores, machine_description, usable_cores
from benchmarks.update import versions as update_versions
from benchmarks.update import write_section as update_write_section

SECTION = "## sampling"
TITLE = "# difftre_torch benchmarks"

# ---------------------------------------------------------------------------------------------
# systems and models


@dataclass
class System:
    """One benchmark cell: ASE atoms, the state point and the MD settings that keep it stable."""

    name: str
    atoms: object
    temperature_K: float
    timestep_fs: float
    friction_per_fs: float
    min_distance_A: float


def lj_systems() -> list[System]:
    from ase.build import bulk

    return [System(f"fcc Ar {n}³ cells", bulk("Ar", "fcc", a=5.26, cubic=True).repeat(n), 80.0, 5.0, 0.02, 1.5)
            for n in (3, 5)]


def nequip_systems() -> list[System]:
    from ase.build import bulk

    return [System(f"fcc Cu {n}³ cells", bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n), 300.0, 2.0, 0.02, 1.5)
            for n in (3, 5)]


NEQUIP_DESCRIPTION = ("NequIP (nequip-train, 3 epochs on 16 EMT-labelled rattled 32-atom fcc Cu cells; float32, "
                      "l_max 1, 16 features, 2 layers, r_max 4 Å)")


def training_frames(n_frames: int = 16, seed: int = 11) -> list:
    """EMT-labelled fcc Cu, 2×2×2 conventional cells (32 atoms): lattice constant 3.61 Å scaled
    by ±2 %, positions rattled by 0.1 Å (EMT is at home in fcc Cu: its MD is stable)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.61 * (0.98 + 0.04 * k / max(1, n_frames - 1)), cubic=True).repeat(2)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def train_nequip(workdir: Path) -> Path:
    """nequip-train (:func:`difftre_torch.testing.train_tiny_nequip`: 3 epochs, 16 features) on
    :func:`training_frames` in ``workdir``; returns ``last.ckpt`` (RuntimeError on failure)."""
    from difftre_torch.testing import train_tiny_nequip

    return train_tiny_nequip(workdir, training_frames(), type_names=("Cu",), seed=11, max_epochs=3,
                             num_features=16, radial_mlp_width=16, num_bessels=8, train_batch=4,
                             val_batch=8)


# ---------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimers:
    """Seconds spent in the batched sampler's model call and neighbour-list upkeep, measured by
    wrapping the two functions its module calls (the package's files are not edited)."""

    NAMES = {"forces_and_stress": "model", "refresh_verlet_list": "neighbours"}

    def __init__(self, device: torch.device):
        from difftre_torch.sampling import batched

        self.module, self.device = batched, device
        self.seconds = {"model": 0.0, "neighbours": 0.0}
        self.originals = {name: getattr(batched, name) for name in self.NAMES}

    def __enter__(self):
        for name, phase in self.NAMES.items():
            setattr(self.module, name, self._wrap(self.originals[name], phase))
        return self

    def __exit__(self, *exc):
        for name, function in self.originals.items():
            setattr(self.module, name, function)

    def _wrap(self, function, phase):
        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                sync(self.device)
                self.seconds[phase] += time.perf_counter() - start
        return timed


def _configure(config, steps: int) -> None:
    """Make the next round ``steps`` steps long (then one snapshot), whichever round it is."""
    config.equilibration_steps = config.reequilibration_steps = max(0, steps - 1)
    config.snapshots_per_replica, config.stride = 1, 1


def time_rounds(sampler, potential, device, seconds: float, warm_steps: int, timers=None) -> dict:
    """Round 1 (``warm_steps``, warm-up and calibration), then a round sized to ~``seconds``:
    its steps, wall seconds, and the neighbour-list rebuilds it made (batched sampler)."""
    _configure(sampler.config, warm_steps)
    sync(device)
    start = time.perf_counter()
    sampler.sample(potential)
    sync(device)
    per_step = (time.perf_counter() - start) / warm_steps
    steps = int(np.clip(seconds / max(per_step, 1e-9), 10, 5000))
    _configure(sampler.config, steps)
    if timers is not None:
        timers.seconds = dict.fromkeys(timers.seconds, 0.0)
    sync(device)
    start = time.perf_counter()
    raw = sampler.sample(potential)
    sync(device)
    wall = time.perf_counter() - start
    return {"steps": steps, "wall_s": wall, "rebuilds": raw[0].stats.get("neighbour_list_rebuilds"),
            "phases": None if timers is None else dict(timers.seconds)}


def time_limit(potential, positions, cells, numbers, device, seconds: float) -> float:
    """Seconds of one forces_and_stress call on [R, N, 3] with an exact precomputed list: the mean
    over back-to-back calls for ~``seconds`` after two warm-up calls (a mean, like the samplers'
    rates, so that time lost to other processes counts alike)."""
    import functools

    from difftre_torch.neighbors import verlet_list
    from difftre_torch.sampling.batched import pair_list_request
    from difftre_torch.sampling.integrators import forces_and_stress

    request = pair_list_request(potential)
    call = potential
    if request is not None:
        pairs = verlet_list(positions, cells, request[0], 0.0, full=request[1]).pairs
        call = functools.partial(potential, pairs=pairs)
    for _ in range(2):
        forces_and_stress(call, positions, cells, numbers)
    sync(device)
    start = time.perf_counter()
    forces_and_stress(call, positions, cells, numbers)
    sync(device)
    once = time.perf_counter() - start
    calls = int(np.clip(seconds / max(once, 1e-9), 3, 2000))
    start = time.perf_counter()
    for _ in range(calls):
        forces_and_stress(call, positions, cells, numbers)
    sync(device)
    return (time.perf_counter() - start) / calls


def measure_system(system: System, potential, device, replicas: list[int], seconds: float,
                   compiled=None) -> list[dict]:
    from difftre_torch.sampling.batched import BatchedSampler, BatchedSamplerConfig
    from difftre_torch.sampling.sampler import AseSampler, SamplerConfig, StatePoint

    n_atoms = len(system.atoms)
    md = dict(timestep_fs=system.timestep_fs, friction_per_fs=system.friction_per_fs,
              min_distance_A=system.min_distance_A, max_volume_ratio=10.0)
    rows = []
    point = StatePoint("T", system.temperature_K, replicas=1)
    ase = time_rounds(AseSampler(system.atoms, [point], SamplerConfig(**md)), potential, device, seconds, 5)
    ase_rate = ase["steps"] / ase["wall_s"]
    rows.append({"system": system.name, "atoms": n_atoms, "sampler": "ASE Langevin", "R": 1,
                 "replica_steps_s": ase_rate, "steps": ase["steps"], "wall_s": ase["wall_s"]})
    print(f"{system.name}: ASE {ase_rate:.1f} steps/s ({ase['steps']} steps)", flush=True)
    for R in replicas:
        sampler = BatchedSampler(system.atoms, [StatePoint("T", system.temperature_K, replicas=R)],
                                 BatchedSamplerConfig(**md))
        timers = PhaseTimers(device) if device.type == "cpu" else None
        if timers is not None:
            with timers:
                run = time_rounds(sampler, potential, device, seconds, 5, timers)
        else:
            run = time_rounds(sampler, potential, device, seconds, 5)
            with PhaseTimers(device) as timers:  # a synchronised pass for the shares only
                profiled = time_rounds(sampler, potential, device, seconds / 2, 5, timers)
            run["phases"], run["phase_wall_s"] = profiled["phases"], profiled["wall_s"]
        step_s = run["wall_s"] / run["steps"]
        numbers = torch.as_tensor(system.atoms.numbers, device=device)
        limit_s = time_limit(potential, sampler.state.positions, sampler.state.cells, numbers, device, seconds / 2)
        phase_wall = run.get("phase_wall_s", run["wall_s"])
        rows.append({
            "system": system.name, "atoms": n_atoms, "sampler": "batched", "R": R,
            "replica_steps_s": R / step_s, "steps": run["steps"], "wall_s": run["wall_s"],
            "vs_ase": (R / step_s) / ase_rate, "limit_replica_steps_s": R / limit_s,
            "vs_limit": limit_s / step_s,
            "rebuilds_per_replica_step": run["rebuilds"] / (R * run["steps"]),
            "model_share": run["phases"]["model"] / phase_wall,
            "neighbour_share": run["phases"]["neighbours"] / phase_wall,
        })
        print(f"{system.name}: batched R={R}: {R / step_s:.1f} replica-steps/s ({run['steps']} steps), "
              f"{rows[-1]['vs_ase']:.2f}× ASE, {100 * rows[-1]['vs_limit']:.0f} % of the limit", flush=True)
        if compiled is not None:
            sampler = BatchedSampler(system.atoms, [StatePoint("T", system.temperature_K, replicas=R)],
                                     BatchedSamplerConfig(**md))
            run = time_rounds(sampler, compiled, device, seconds, 5)
            rate = R * run["steps"] / run["wall_s"]
            rows.append({"system": system.name, "atoms": n_atoms, "sampler": "batched, compiled", "R": R,
                         "replica_steps_s": rate, "steps": run["steps"], "wall_s": run["wall_s"],
                         "vs_ase": rate / ase_rate, "vs_eager": rate * step_s / R})
            print(f"{system.name}: batched, compiled R={R}: {rate:.1f} replica-steps/s, "
                  f"{rows[-1]['vs_eager']:.2f}× eager batched", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# report


def versions() -> str:
    return update_versions(("nequip", "e3nn", "vesin-torch", "ase", "numpy"))


def table(rows: list[dict]) -> str:
    compiled = any("vs_eager" in row for row in rows)
    lines = ["| system | atoms | sampler | R | MD steps/s | replica-steps/s | atom-steps/s | batched/ASE "
             "| limit replica-steps/s | batched/limit | model share of step | neighbour-list share "
             "| list rebuilds per replica-step |" + (" compiled vs eager |" if compiled else ""),
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if compiled else "")]
    for row in rows:
        fmt = lambda key, spec, scale=1.0: format(row[key] * scale, spec) if key in row else "–"  # noqa: E731
        lines.append(
            f"| {row['system']} | {row['atoms']} | {row['sampler']} | {row['R']} | "
            f"{row['replica_steps_s'] / row['R']:.1f} | {row['replica_steps_s']:.1f} | "
            f"{row['replica_steps_s'] * row['atoms']:.3g} | {fmt('vs_ase', '.2f')} | "
            f"{fmt('limit_replica_steps_s', '.1f')} | {fmt('vs_limit', '.0%')} | "
            f"{fmt('model_share', '.0%')} | {fmt('neighbour_share', '.0%')} | "
            f"{fmt('rebuilds_per_replica_step', '.3f')} |" + (f" {fmt('vs_eager', '.2f')} |" if compiled else ""))
    return "\n".join(lines)


def verdict(rows: list[dict], device: torch.device) -> str:
    lines = []
    for system in dict.fromkeys(row["system"] for row in rows):
        batched = [row for row in rows if row["system"] == system and row["sampler"] == "batched"]
        best = max(batched, key=lambda row: row["replica_steps_s"])
        ase = next(row for row in rows if row["system"] == system and row["sampler"] != "batched")
        ceiling = max(batched, key=lambda row: row["limit_replica_steps_s"])
        lines.append(f"- {system}: best R = {best['R']}: {best['vs_ase']:.1f}× ASE, "
                     f"{100 * best['vs_limit']:.0f} % of the model-bound limit. The model alone "
                     f"allows at most {ceiling['limit_replica_steps_s'] / ase['replica_steps_s']:.2f}× ASE "
                     f"(its best replica-steps/s, at R = {ceiling['R']}); ASE at R = 1 runs at "
                     f"{100 * ase['replica_steps_s'] / batched[0]['limit_replica_steps_s']:.0f} % of "
                     f"the R = {batched[0]['R']} limit.")
        fast = [row for row in rows if row["system"] == system and "vs_eager" in row]
        if fast:
            best_compiled = max(fast, key=lambda row: row["replica_steps_s"])
            lines.append(f"  compiled (AOTInductor): best R = {best_compiled['R']}: "
                         f"{best_compiled['vs_ase']:.1f}× ASE, "
                         f"{best_compiled['vs_eager']:.2f}× the eager batched sampler at that R.")
        if device.type == "cpu":
            eight = [row for row in batched if row["R"] >= 8]
            worst = min(row["vs_ase"] for row in eight) if eight else float("nan")
            lines.append(f"  CPU target batched ≥ 2× ASE at R ≥ 8: {'met' if worst >= 2 else 'NOT met'} "
                         f"(lowest {worst:.2f}×).")
        else:
            lines.append(f"  GPU targets ≥ 20× ASE: {'met' if best['vs_ase'] >= 20 else 'NOT met'}; "
                         f"≥ 90 % of the limit: {'met' if best['vs_limit'] >= 0.9 else 'NOT met'} "
                         f"(the rest of the step: model {best['model_share']:.0%}, neighbour lists "
                         f"{best['neighbour_share']:.0%}, integrator, checks and Python "
                         f"{1 - best['model_share'] - best['neighbour_share']:.0%}).")
    return "\n".join(lines)


def section(blocks: list[tuple[str, list[dict]]], args, device: torch.device, notes: list[str]) -> str:
    """The ``## sampling`` section: header, then one table and verdict per (model text, rows)."""
    command = "python -m benchmarks.sampling" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    header = textwrap.dedent(f"""\
        {SECTION}

        MD throughput in NVT at one state point: AseSampler (ASE `Langevin`, one replica) against
        BatchedSampler (R replicas as one batch; BAOAB, Verlet list with 1 Å skin, blow-up checks
        every 10 steps) and the model-bound limit (`forces_and_stress` alone on the same R
        snapshots with a precomputed exact neighbour list). Rates from the second of two `sample`
        rounds (the first warms up), each sized to ~{args.seconds:g} s, snapshots and checks
        included; limit: mean over back-to-back calls. batched/ASE compares replica-steps/s;
        batched/limit = limit time per call / batched time per step. Shares: fraction of the
        batched step's wall time inside the model call and inside neighbour-list upkeep.

        - date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}
        - machine: {machine_description(device, args.threads)}
        - versions: {versions()}
        - command: `{command}`
        - notes: {' '.join(notes)}
        """)
    parts = [header]
    for model_text, rows in blocks:
        parts.append(f"\n### {model_text}; device {device}\n\n" + table(rows) + "\n\n"
                     + verdict(rows, device) + "\n")
    return "".join(parts)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) the ``## sampling`` section of ``path``; other sections stay."""
    update_write_section(path, text, SECTION)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampling", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=["lj", "nequip"], nargs="+", default=None,
                        help="models to measure, one table each (default: nequip, if nequip-train "
                             "works here, then lj)")
    parser.add_argument("--replicas", type=int, nargs="+", default=None,
                        help="batch sizes R (default 1 8 32 on CPU, 1 8 32 128 on CUDA)")
    parser.add_argument("--seconds", type=float, default=5.0, help="target length of each timed round")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; default: torch's default less the cores other processes "
                             "keep busy (measured over 1 s before the run), at least 1")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    parser.add_argument("--compiled", action="store_true",
                        help="nequip: also time the batched sampler with the model compiled by nequip-compile "
                             "(AOTInductor, --target batch; one compile, about a minute on CPU)")
    parser.add_argument("--notes", default="", help="free text appended to the notes line")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    replicas = args.replicas or ([1, 8, 32] if device.type == "cpu" else [1, 8, 32, 128])
    started = time.perf_counter()
    busy, usable = busy_cores(), usable_cores()
    if args.threads is None:
        args.threads = max(1, min(torch.get_num_threads(), usable - round(busy)))
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    notes = [f"Just before the run other processes kept about {busy:.1f} of the {usable} usable cores "
             f"busy (/proc/stat over 1 s); torch threads {args.threads}."]
    if busy >= 0.5:
        notes.append("CPU timings are shared-machine timings: absolute rates vary with the other load.")
    blocks = []
    with tempfile.TemporaryDirectory(prefix="difftre_sampling_") as tmp:
        for model in args.model or ["nequip", "lj"]:
            loaded = load_model(model, Path(tmp), device, required=args.model is not None, notes=notes)
            if loaded is None:
                continue
            potential, systems, model_text = loaded
            compiled = None
            if args.compiled and model == "nequip":
                compiled, compile_s = compile_model(potential, systems[0], device, Path(tmp))
                model_text += f"; compiled with nequip-compile in {compile_s:.0f} s"
            rows = []
            for system in systems:
                rows += measure_system(system, potential, device, replicas, args.seconds, compiled)
            blocks.append((model_text, rows))
    notes.append(f"Whole run {time.perf_counter() - started:.0f} s. {args.notes}")
    text = section(blocks, args, device, [n.strip() for n in notes if n.strip()])
    print("\n" + text)
    write_section(args.out, text)
    print(f"wrote the '{SECTION}' section of {args.out}")


def compile_model(potential, system: System, device: torch.device, workdir: Path):
    """(compiled potential, seconds): ``nequip-compile --mode aotinductor --target batch`` of the
    eager model's checkpoint, loaded and checked against the eager model near ``system``."""
    from difftre_torch.potentials.compiled import check_frames, check_same_energies, compile_nequip
    from difftre_torch.potentials.nequip import load_nequip

    start = time.perf_counter()
    path = compile_nequip(potential.source.path, workdir / "model.nequip.pt2", device=device)
    compile_s = time.perf_counter() - start
    compiled = load_nequip(path, device=device)
    agreement = check_same_energies(potential, compiled, *check_frames(system.atoms))
    print(f"compiled the NequIP model in {compile_s:.0f} s; max |ΔU| {agreement.max_abs_energy_eV:.2g} eV, "
          f"max |ΔF| {agreement.max_abs_force_eV_A:.2g} eV/Å vs eager", flush=True)
    return compiled, compile_s


def load_model(model: str, workdir: Path, device: torch.device, required: bool, notes: list[str]):
    """(potential, systems, description) for ``model``; None if nequip does not train here and it
    was not asked for by name (then a note says so)."""
    if model == "lj":
        from difftre_torch.potentials import LennardJones

        return (LennardJones(3.405, 0.0104, 8.5).to(device), lj_systems(),
                "LennardJones (σ 3.405 Å, ε 0.0104 eV, r_c 8.5 Å, float64), fcc argon at 80 K, Δt 5 fs")
    try:
        t0 = time.perf_counter()
        checkpoint = train_nequip(workdir)
        trained_s = time.perf_counter() - t0
        from difftre_torch.potentials.nequip import load_nequip

        potential = load_nequip(checkpoint, device=device)
    except Exception as err:  # noqa: BLE001 - any failure means: skip it (or stop)
        if required:
            raise
        print(f"nequip did not train ({type(err).__name__}: {str(err)[:300]}); skipping it", flush=True)
        notes.append(f"nequip did not train here ({type(err).__name__}), so only lj was measured.")
        return None
    print(f"trained the NequIP model in {trained_s:.0f} s", flush=True)
    return potential, nequip_systems(), f"{NEQUIP_DESCRIPTION}, trained in {trained_s:.0f} s; fcc Cu at 300 K, Δt 2 fs"


if __name__ == "__main__":
    main()
