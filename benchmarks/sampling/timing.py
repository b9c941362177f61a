"""Timing of the sampling benchmark: a sampler's two ``sample`` rounds (warm-up and calibration,
then the timed one), the model-bound limit (forces alone on the same snapshots), the share of a
batched step inside the model and the neighbour-list upkeep, and one system's table rows."""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import sync, timed
from benchmarks.sampling.models import System


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
            setattr(self.module, name, timed(self.originals[name], self.device, self.seconds, phase))
        return self

    def __exit__(self, *exc):
        for name, function in self.originals.items():
            setattr(self.module, name, function)


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
        timers.seconds.update(dict.fromkeys(timers.seconds, 0.0))  # in place: the wrappers add to it
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
    from difftre_torch.potentials.base import pair_list_request
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


def _variant_row(system: System, label: str, potential, config, R: int, device, seconds: float,
                 eager: dict, limit_s: float | None) -> dict:
    """One timed row of a faster variant of the batched sampler at R replicas, against the eager
    batched row (``eager``: its seconds per step and ASE's steps/s). ``limit_s``: the model-bound
    limit's seconds per call, or None to measure ``potential``'s own (a compiled model)."""
    from difftre_torch.sampling.base import StatePoint
    from difftre_torch.sampling.batched import BatchedSampler

    sampler = BatchedSampler(system.atoms, [StatePoint("T", system.temperature_K, replicas=R)], config)
    run = time_rounds(sampler, potential, device, seconds, 5)
    rate = R * run["steps"] / run["wall_s"]
    if limit_s is None:
        numbers = torch.as_tensor(system.atoms.numbers, device=device)
        limit_s = time_limit(potential, sampler.state.positions, sampler.state.cells, numbers, device, seconds / 2)
    row = {"system": system.name, "atoms": len(system.atoms), "sampler": label, "R": R,
           "replica_steps_s": rate, "steps": run["steps"], "wall_s": run["wall_s"],
           "vs_ase": rate / eager["ase_rate"], "vs_eager": rate * eager["step_s"] / R,
           "limit_replica_steps_s": R / limit_s, "vs_limit": limit_s * rate / R,
           "rebuilds_per_replica_step": run["rebuilds"] / (R * run["steps"])}
    print(f"{system.name}: {label} R={R}: {rate:.1f} replica-steps/s, {row['vs_eager']:.2f}× eager batched, "
          f"{100 * row['vs_limit']:.0f} % of its limit", flush=True)
    return row


STEP_LABEL = "batched, compiled step, deferred checks"
"""The row of ``--compile-step``: the eager model, SamplerConfig.compile_step and deferred_checks."""


def measure_system(system: System, potential, device, replicas: list[int], seconds: float,
                   compiled=None, compile_step: bool = False) -> list[dict]:
    from difftre_torch.sampling.base import SamplerConfig, StatePoint
    from difftre_torch.sampling.batched import BatchedSampler
    from difftre_torch.sampling.sampler import AseSampler

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
                                 SamplerConfig(**md))
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
        eager = {"step_s": step_s, "ase_rate": ase_rate}
        if compile_step:  # the same eager model; the step under torch.compile, flags read at the checks
            rows.append(_variant_row(system, STEP_LABEL, potential, SamplerConfig(**md, compile_step=True,
                                                                                  deferred_checks=True),
                                     R, device, seconds, eager, limit_s))
        if compiled is not None:
            label = "batched, compiled model and step, deferred checks" if compile_step else "batched, compiled"
            config = SamplerConfig(**md, compile_step=compile_step, deferred_checks=compile_step)
            rows.append(_variant_row(system, label, compiled, config, R, device, seconds, eager, None))
    return rows
