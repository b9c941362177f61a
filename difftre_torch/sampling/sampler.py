"""Replicas at one or more state points, sampled with ASE and the current potential.

:class:`AseSampler` owns R replicas per state point (T, and P for NPT), each with its own seed
and integrator state, carried from one sampling round to the next: round 1 equilibrates from the
initial structure, later rounds re-equilibrate briefly from where the replica stopped (the
potential has changed) and then record one snapshot every ``stride`` steps. Its
:meth:`~AseSampler.state_dict` holds every replica's exact integrator state, so a restored
sampler produces the same snapshots bit for bit.

Units: Å, fs, K, GPa; cells as rows.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from ase import Atoms

from difftre_torch.potentials.ase_calculator import PotentialCalculator, potential_device_dtype
from difftre_torch.potentials.base import Potential
from difftre_torch.sampling.ase_md import (
    MDConfig,
    build_integrator,
    initialise_velocities,
    integrator_state,
    restore_integrator_state,
    run_segment,
)


@dataclass
class StatePoint:
    """A thermodynamic state: temperature (K), pressure (GPa; ``None`` → NVT), replicas."""

    name: str
    temperature_K: float
    pressure_GPa: float | None = None
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.temperature_K <= 0:
            raise ValueError(f"StatePoint {self.name!r}: temperature_K must be > 0")
        if self.replicas < 1:
            raise ValueError(f"StatePoint {self.name!r}: replicas must be >= 1")


@dataclass
class SamplerConfig:
    """MD settings shared by all replicas (ASE units; see :class:`~difftre_torch.sampling.ase_md.MDConfig`).

    equilibration_steps: before the first round's snapshots.
    reequilibration_steps: before later rounds' snapshots (the potential has changed).
    snapshots_per_replica, stride: snapshots per replica per round, steps between them.
    """

    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    barostat_tau_fs: float = 1000.0
    hydrostatic: bool = False
    equilibration_steps: int = 1000
    reequilibration_steps: int = 200
    snapshots_per_replica: int = 100
    stride: int = 10
    min_distance_A: float = 0.6
    max_volume_ratio: float = 2.0
    check_every: int = 10
    seed: int = 0

    def md_config(self, state: StatePoint) -> MDConfig:
        return MDConfig(
            ensemble="nvt" if state.pressure_GPa is None else "npt",
            temperature_K=state.temperature_K,
            timestep_fs=self.timestep_fs,
            friction_per_fs=self.friction_per_fs,
            pressure_GPa=0.0 if state.pressure_GPa is None else state.pressure_GPa,
            barostat_tau_fs=self.barostat_tau_fs,
            hydrostatic=self.hydrostatic,
            min_distance_A=self.min_distance_A,
            max_volume_ratio=self.max_volume_ratio,
        )


@dataclass
class RawSamples:
    """Snapshots of one state point from one round: positions [S,N,3] Å, cells [S,3,3] Å,
    replica [S]; plus the round's statistics."""

    state_point: StatePoint
    positions: torch.Tensor
    cells: torch.Tensor
    replica: torch.Tensor
    stats: dict = field(default_factory=dict)


class AseSampler:
    """R replicas per state point, advanced one after another with ASE integrators."""

    def __init__(self, atoms: Atoms, state_points: list[StatePoint], config: SamplerConfig) -> None:
        if not state_points:
            raise ValueError("AseSampler: at least one state point is needed")
        names = [s.name for s in state_points]
        if len(set(names)) != len(names):
            raise ValueError(f"AseSampler: state point names must be unique, got {names}")
        self.template = atoms.copy()
        self.template.calc = None
        self.template.set_constraint()
        self.state_points = list(state_points)
        self.config = config
        self.reference_volume_A3 = float(self.template.get_volume())
        self.replica_states: dict[tuple[int, int], dict] = {}
        self.rounds = 0
        self.blow_ups: list[str] = []

    def _seed(self, point: int, replica: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.config.seed, point, replica])

    def sample(self, potential: Potential, on_step=None) -> list[RawSamples]:
        """One round: every replica of every state point, with ``potential`` driving the MD."""
        device, dtype = potential_device_dtype(potential)
        out = []
        for p, point in enumerate(self.state_points):
            md = self.config.md_config(point)
            positions, cells, replicas = [], [], []
            t0 = time.perf_counter()
            discarded = 0
            temperatures = []
            for r in range(point.replicas):
                atoms = self.template.copy()
                atoms.calc = PotentialCalculator(potential, device=device, dtype=dtype)
                rng = np.random.default_rng(self._seed(p, r))
                saved = self.replica_states.get((p, r))
                if saved is None:
                    initialise_velocities(atoms, point.temperature_K, rng)
                dyn = build_integrator(atoms, md, rng)
                if saved is not None:
                    restore_integrator_state(dyn, saved)
                    _refresh_cached_forces(dyn)  # they belong to the previous potential
                equilibration = (self.config.equilibration_steps if saved is None
                                 else self.config.reequilibration_steps)
                hook = None if on_step is None else (lambda d, p=p, r=r: on_step(p, r, d))
                seg = run_segment(dyn, equilibration, md, self.reference_volume_A3,
                                  check_every=self.config.check_every, on_step=hook)
                self.blow_ups += [f"{point.name}/replica {r}: {b}" for b in seg.blow_ups]
                prod = run_segment(
                    dyn, self.config.snapshots_per_replica * self.config.stride, md,
                    self.reference_volume_A3, stride=self.config.stride, record=_record,
                    check_every=self.config.check_every, on_step=hook,
                )
                self.blow_ups += [f"{point.name}/replica {r}: {b}" for b in prod.blow_ups]
                discarded += seg.discarded + prod.discarded
                for pos, cell, temp in prod.frames:
                    positions.append(pos)
                    cells.append(cell)
                    temperatures.append(temp)
                    replicas.append(r)
                self.replica_states[(p, r)] = integrator_state(dyn)
            out.append(RawSamples(
                state_point=point,
                positions=torch.as_tensor(np.stack(positions), dtype=dtype, device=device),
                cells=torch.as_tensor(np.stack(cells), dtype=dtype, device=device),
                replica=torch.as_tensor(replicas, dtype=torch.long),
                stats={"wall_s": time.perf_counter() - t0, "discarded_frames": discarded,
                       "kinetic_temperature_K": float(np.mean(temperatures))},
            ))
        self.rounds += 1
        return out

    def state_dict(self) -> dict:
        return {
            "replica_states": copy.deepcopy(self.replica_states),
            "rounds": self.rounds,
            "blow_ups": list(self.blow_ups),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.replica_states = copy.deepcopy(state["replica_states"])
        self.rounds = int(state["rounds"])
        self.blow_ups = list(state["blow_ups"])


def _record(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, float]:
    return atoms.get_positions().copy(), atoms.cell.array.copy(), float(atoms.get_temperature())


def _refresh_cached_forces(dyn) -> None:
    """Recompute an integrator's cached forces (LangevinBAOAB) with the current calculator."""
    if hasattr(dyn, "_update_accel"):
        dyn._update_accel()
        if getattr(dyn, "externalstress", None) is not None:
            dyn._update_force_eps()
