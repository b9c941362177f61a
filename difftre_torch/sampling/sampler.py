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
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from difftre_torch.potentials.ase_calculator import PotentialCalculator, potential_device_dtype
from difftre_torch.potentials.base import Potential
from difftre_torch.sampling.ase_md import (
    blow_up_reason,
    build_integrator,
    initialise_velocities,
    integrator_state,
    restore_integrator_state,
    run_segment,
)
from difftre_torch.sampling.base import RawSamples, SamplerConfig, StatePoint, owned_replicas, progress_bar
from difftre_torch.sampling.blowups import bad_start


class AseSampler:
    """R replicas per state point, advanced one after another with ASE integrators; a
    :class:`~difftre_torch.sampling.base.Sampler`. owned: the replica indices of each state point
    this sampler advances (one rank's share, :func:`~difftre_torch.distributed.replica_share`;
    default: all)."""

    def __init__(self, atoms: Atoms, state_points: list[StatePoint], config: SamplerConfig | None = None,
                 owned: Sequence[Sequence[int]] | None = None) -> None:
        if not state_points:
            raise ValueError("AseSampler: at least one state point is needed")
        names = [s.name for s in state_points]
        if len(set(names)) != len(names):
            raise ValueError(f"AseSampler: state point names must be unique, got {names}")
        self.template = atoms.copy()
        self.template.calc = None
        self.template.set_constraint()
        self.state_points = list(state_points)
        self.config = config or SamplerConfig()
        self.owned = [owned_replicas(point, p, owned, "AseSampler") for p, point in enumerate(self.state_points)]
        self.reference_volume_A3 = float(self.template.get_volume())
        self.replica_states: dict[tuple[int, int], dict] = {}
        self.rounds = 0
        self.blow_ups: list[str] = []

    def _seed(self, point: int, replica: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.config.seed, point, replica])

    def sample(self, potential: Potential, on_step=None) -> list[RawSamples]:
        """One round: every replica of every state point, with ``potential`` driving the MD.
        ``on_step(point index, replica index, dyn)`` is called after every step (tests inject
        faults with it). Each replica's start state is checked first, then every
        ``check_every`` steps (:func:`~difftre_torch.sampling.ase_md.run_segment`);
        :class:`~difftre_torch.sampling.blowups.MDBlowUpError` for a start that fails or for
        more than ``max_blow_ups`` blow-ups of one replica in one segment."""
        device, dtype = potential_device_dtype(potential)
        out = []
        cfg = self.config
        reference_cell = self.template.cell.array
        for p, point in enumerate(self.state_points):
            positions, cells, replicas = [], [], []
            t0 = time.perf_counter()
            discarded = 0
            temperatures = []
            for r in self.owned[p]:
                atoms = self.template.copy()
                atoms.calc = PotentialCalculator(potential, device=device, dtype=dtype)
                rng = np.random.default_rng(self._seed(p, r))
                saved = self.replica_states.get((p, r))
                if saved is None:
                    initialise_velocities(atoms, point.temperature_K, rng)
                dyn = build_integrator(atoms, cfg, point, rng)
                if saved is not None:
                    restore_integrator_state(dyn, saved)
                reason = blow_up_reason(atoms, cfg, self.reference_volume_A3, reference_cell=reference_cell)
                if reason is not None:  # the start state cannot be rolled back to
                    raise bad_start(point.name, r, reason)
                if saved is not None:
                    _refresh_cached_forces(dyn)  # they belong to the previous potential
                equilibration = cfg.equilibration_steps if saved is None else cfg.reequilibration_steps
                bar = progress_bar(cfg, equilibration + cfg.snapshots_per_replica * cfg.stride,
                                   f"MD {point.name} replica {r + 1}/{point.replicas}")

                def hook(d, p=p, r=r, bar=bar):
                    bar.update(1)
                    if on_step is not None:
                        on_step(p, r, d)

                def record_blow_up(message, name=point.name, r=r):  # as it happens: kept if the run stops
                    self.blow_ups.append(f"{name}/replica {r}: {message}")

                checks = dict(state_point=point, replica=r, reference_cell=reference_cell, on_blow_up=record_blow_up)
                try:
                    seg = run_segment(dyn, equilibration, cfg, self.reference_volume_A3, on_step=hook, **checks)
                    prod = run_segment(dyn, cfg.snapshots_per_replica * cfg.stride, cfg, self.reference_volume_A3,
                                       stride=cfg.stride, record=_record, on_step=hook, segment="production",
                                       **checks)
                finally:
                    bar.close()
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
