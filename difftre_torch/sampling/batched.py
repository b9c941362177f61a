"""R replicas of one system advanced together as one batch on the potential's device.

:class:`BatchedSampler` is a :class:`~difftre_torch.sampling.base.Sampler`, as
:class:`~difftre_torch.sampling.sampler.AseSampler` is (``sample(potential) -> list[RawSamples]``,
``state_dict``, ``load_state_dict``, ``blow_ups``, ``state_points``), takes the same
:class:`~difftre_torch.sampling.base.SamplerConfig` and returns the same
:class:`~difftre_torch.sampling.base.RawSamples`, so the trainer cannot tell which one ran.
All replicas of all state points share one batch: one energy + force (+ stress) evaluation per
step for all of them, temperatures and pressures per replica. Physics (units ASE's: Å, eV, fs
at the interface, K, GPa; cells as rows):

* the step is :mod:`difftre_torch.sampling.integrators`: BAOAB Langevin for the atoms (same
  γ, T and Δt meaning as ASE's ``Langevin``), Langevin–Hoover for the cell of NPT replicas (the
  equations and barostat-mass heuristic of ASE's ``LangevinBAOAB``: full cell, or
  ``hydrostatic``), centre of mass fixed (3N − 3 degrees of freedom). Given the same random
  numbers it reproduces ``LangevinBAOAB`` (with FixCom) step for step in NVT and hydrostatic
  NPT. Full cell: ASE 3.29 adds tr(p_ε)/N_dof to every element of the velocity drag
  (``p_eps + trace/Ndof`` broadcasts a scalar over the 3×3 matrix), where Quigley–Probert put it on
  the diagonal; this step uses the diagonal, and equals ASE's once ASE's term is corrected
  (tests/test_batched.py). The two differ by O(tr p_ε/(N_dof W)) in the off-diagonal drag;
* neighbours: a Verlet list (cut-off + ``skin_A``, vesin) is passed to potentials whose forward
  takes ``pairs=`` (``LennardJones``, ``NequIPPotential``); a replica's list is rebuilt only
  when the bound of :func:`~difftre_torch.neighbors.verlet_displacement` reaches the skin (for
  a fixed cell: an atom moved more than half the skin). Other potentials are called as they
  are. The one host round trip per step is 2R booleans (state finite, list stale), needed to
  decide which lists vesin rebuilds. With ``deferred_checks`` the flags stay on the device and
  are read once per blow-up check: between checks every list is kept, and a window in which a
  list went stale or a state non-finite is run again from the last check with the same noise,
  reading the flags every step (so every force still comes from a list that covers the
  cut-off); at each check, lists within the last window's largest growth of the displacement
  bound of the skin are rebuilt ahead, so that reruns stay rare. A glitch that the rerun does
  not repeat (a potential that fails once) then costs the window, not a restart with new noise;
* ``compile_step``: the drift and the kick run under ``torch.compile``
  (:func:`~difftre_torch.sampling.integrators.compiled_step`);
* noise (:mod:`difftre_torch.sampling.noise`): one ``torch.Generator`` per replica, seeded from (seed, state point, replica), drawn
  ``noise_block_steps`` steps at a time; a replica's trajectory does not depend on which other
  replicas share its batch;
* blow-ups (:mod:`difftre_torch.sampling.blowups`, the check the ASE sampler makes too, here
  with the Verlet list's pairs), per replica, every ``check_every`` steps: non-finite values,
  volume and cell vector lengths outside the allowed ratios, two atoms closer than
  ``min_distance_A``, kinetic temperature above ``max_temperature_ratio`` × its state point's,
  an atom displaced more than ``max_step_displacement_A`` per step since the last check (a
  drift step that gives non-finite positions or cell counts too). That replica's frames since
  its last good check are dropped, it restarts from that state with the noise stream moved on
  (new noise), the event goes to ``blow_ups`` and a warning; the others carry on, and finished
  replicas wait (unchanged) until every replica has its frames. More than ``max_blow_ups`` of
  one replica in one segment (equilibration or production), or a start state that already
  fails (checked when a round starts, before any force call), raise
  :class:`~difftre_torch.sampling.blowups.MDBlowUpError`.
* ``state_dict()`` holds positions, momenta, cells, cell momenta, generator states and the step
  count; a restored sampler continues bit for bit on the same device type.

torch-sim: evaluated, not used. torch-sim-atomistic 0.3.0 (the newest release that installs on
Python 3.11; installed with constraints.txt, torch stayed 2.13.0) was read and run with our
``LennardJones`` behind its ``ModelInterface`` (32-atom LJ fluid, two systems in one batch). Its
batch layout fits (``nvt_langevin`` is BAOAB and takes a kT per system), but: (1) its Langevin
noise comes from torch's global generator (``torch.randn_like``); ``seed=`` seeds only the
initial momenta (same ``seed=``, other ``torch.manual_seed``: different trajectories). So a
replica has no stream of its own, it cannot be restarted with new noise without changing the
other replicas' noise, and an exact restore means saving the process-wide RNG state; (2) it has
no FixCom: the O step adds centre-of-mass momentum (after 200 steps, a total momentum of 6.3
and 2.9 amu·Å/t_ASE per system, against 1.4 for one atom's thermal momentum), so its degrees of
freedom differ from the ASE sampler's 3N − 3; (3) both of its NPT integrators (``npt_langevin``,
``npt_nose_hoover``) scale the cell isotropically ("currently only isotropic fluctuations"), so
no anisotropic cell as in our ASE sampler; ``npt_langevin`` calls the model twice per step
(measured 2.0 calls/step, NVT 1.0), and its friction is in mass/time, not ASE's γ; (4) it wraps
positions into the cell every step, and its cells are columns where ours are rows; (5) its
models return forces and stress themselves, ours return the energy only (an adapter is short,
so this alone would not rule it out). Points 1–3 go against what this sampler must do. So the
integrators here are our own: BAOAB + Langevin–Hoover, ASE ``LangevinBAOAB``'s equations
rewritten for a batch (no code copied).
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms, units

from difftre_torch.neighbors import (
    VerletList,
    det3,
    refresh_verlet_list,
    verlet_displacement,
    verlet_list,
    verlet_list_is_stale,
)
from difftre_torch.potentials.ase_calculator import potential_device_dtype
from difftre_torch.potentials.base import Potential, pair_list_request
from difftre_torch.sampling.integrators import (
    LangevinParameters,
    LangevinState,
    baoab_drift,
    baoab_kick,
    barostat_mass,
    cell_force,
    compiled_step,
    forces_and_stress,
    kinetic_temperature_K,
    maxwell_boltzmann_momenta,
)
from difftre_torch.sampling.base import RawSamples, SamplerConfig, StatePoint, owned_replicas, progress_bar
from difftre_torch.sampling.blowups import bad_start, blow_up_reasons, too_many_blow_ups
from difftre_torch.sampling.noise import ReplicaNoise, replica_seed


@dataclass
class _Round:
    """What one ``sample`` call needs while it runs."""

    potential: Potential
    params: LangevinParameters
    numbers: torch.Tensor
    pairs_request: tuple[float, bool] | None
    verlet: VerletList | None
    need_stress: bool
    drift: object = baoab_drift
    kick: object = baoab_kick
    deferred: bool = False  # flags read at the checks only (SamplerConfig.deferred_checks)


class BatchedSampler:
    """R replicas (all state points together) advanced as one batch; see the module docstring.

    atoms: the system (positions, cell rows, numbers, masses). state_points: as for AseSampler.
    config: the MD settings (``skin_A`` and ``noise_block_steps`` are this sampler's own;
    default: ``SamplerConfig()``). owned: the replica indices of each state point this sampler
    advances (one rank's share, :func:`~difftre_torch.distributed.replica_share`; default: all).
    ``replicas`` lists (state point index, replica index within it) in batch order.
    """

    def __init__(self, atoms: Atoms, state_points: list[StatePoint], config: SamplerConfig | None = None,
                 owned: Sequence[Sequence[int]] | None = None) -> None:
        if not state_points:
            raise ValueError("BatchedSampler: at least one state point is needed")
        names = [s.name for s in state_points]
        if len(set(names)) != len(names):
            raise ValueError(f"BatchedSampler: state point names must be unique, got {names}")
        if not np.all(atoms.pbc):
            raise ValueError("BatchedSampler: the system must be periodic in 3D")
        self.template = atoms.copy()
        self.template.calc = None
        self.template.set_constraint()
        self.state_points = list(state_points)
        self.config = config or SamplerConfig()
        self.replicas = [(p, r) for p, point in enumerate(self.state_points)
                         for r in owned_replicas(point, p, owned, "BatchedSampler")]
        self.reference_volume_A3 = float(self.template.get_volume())
        self.state: LangevinState | None = None
        self.noise: ReplicaNoise | None = None
        self._pending: dict | None = None  # a loaded state_dict, applied on the next sample()
        self.step = 0
        self.rounds = 0
        self.blow_ups: list[str] = []
        self.window_reruns = 0  # windows run again under deferred_checks (diagnostics)

    # ------------------------------------------------------------------ set-up

    @property
    def n_replicas(self) -> int:
        return len(self.replicas)

    def _parameters(self, device, dtype=torch.float64) -> LangevinParameters:
        cfg, n = self.config, len(self.template)
        points = [self.state_points[p] for p, _ in self.replicas]
        tensor = lambda values, kind=dtype: torch.tensor(values, dtype=kind, device=device)
        return LangevinParameters(
            timestep=cfg.timestep_fs * units.fs,
            friction=cfg.friction_per_fs / units.fs,
            kT=tensor([units.kB * s.temperature_K for s in points]),
            masses=tensor(self.template.get_masses().tolist()),
            pressure=tensor([(s.pressure_GPa or 0.0) * units.GPa for s in points]),
            barostat=tensor([s.pressure_GPa is not None for s in points], torch.bool),
            barostat_mass=tensor([barostat_mass(cfg.barostat_tau_fs, n)] * self.n_replicas),
            cell_friction=1.0 / (cfg.barostat_tau_fs * units.fs),
            hydrostatic=bool(cfg.hydrostatic),
        )

    def _initialise(self, device, params: LangevinParameters) -> None:
        n = len(self.template)
        seeds = [replica_seed(self.config.seed, p, r) for p, r in self.replicas]
        self.noise = ReplicaNoise(seeds, 3 * n + 9, self.config.noise_block_steps, device, torch.float64)
        pending, self._pending = self._pending, None
        as_device = lambda t: t.to(device=device, dtype=torch.float64)
        if pending is not None and pending["state"] is not None:
            self.state = LangevinState(**{k: as_device(v) for k, v in pending["state"].items()})
            self.noise.load_state_dict(pending["noise"])
            return
        R = self.n_replicas
        positions = torch.tensor(self.template.positions, dtype=torch.float64, device=device)
        cell = torch.tensor(self.template.cell.array, dtype=torch.float64, device=device)
        momenta = maxwell_boltzmann_momenta(params.masses, params.kT, self.noise.direct((n, 3)))
        self.state = LangevinState(
            positions=positions.expand(R, n, 3).clone(), momenta=momenta,
            cells=cell.expand(R, 3, 3).clone(),
            cell_momenta=torch.zeros(R, 3, 3, dtype=torch.float64, device=device),
            forces=torch.zeros(R, n, 3, dtype=torch.float64, device=device),
            cell_force=torch.zeros(R, 3, 3, dtype=torch.float64, device=device))

    def _start_round(self, potential: Potential) -> _Round:
        device, _ = potential_device_dtype(potential)
        params = self._parameters(device)
        if self.state is None:
            self._initialise(device, params)
        elif self.state.positions.device != device:
            raise ValueError(f"BatchedSampler: the replicas live on {self.state.positions.device}, the "
                             f"potential on {device}; keep the potential on one device")
        request = pair_list_request(potential)
        cutoff = max(request[0] if request else 0.0, self.config.min_distance_A)
        verlet = None
        if cutoff > 0:  # always rebuilt at the start of a round (exact restores depend on it)
            verlet = verlet_list(self.state.positions, self.state.cells, cutoff, self.config.skin_A,
                                 full=request[1] if request else False)
        self._check_start(verlet)
        numbers = torch.as_tensor(self.template.numbers, dtype=torch.long, device=device)
        steps = compiled_step() if self.config.compile_step else (baoab_drift, baoab_kick)
        ctx = _Round(potential, params, numbers, request, verlet, params.any_barostat, *steps,
                     deferred=self.config.deferred_checks)
        # forces (and f_ε) of the current state under this round's potential, as AseSampler does
        forces, stress = self._evaluate(ctx, self.state.positions, self.state.cells)
        self.state.forces = forces
        if ctx.need_stress:
            volume = det3(self.state.cells).abs()
            self.state.cell_force = cell_force(self.state.momenta, stress, volume, params)
        return ctx

    def _check_start(self, verlet: VerletList | None) -> None:
        """Raise :class:`~difftre_torch.sampling.blowups.MDBlowUpError` for the first replica
        whose current (start) state fails the structural checks: there is nothing to roll back
        to. ``verlet``: the round's fresh Verlet list (its pairs cover ``min_distance_A``)."""
        cfg, state = self.config, self.state
        reasons = blow_up_reasons(
            state.positions, state.momenta, state.cells, self.reference_volume_A3,
            min_distance_A=cfg.min_distance_A, max_volume_ratio=cfg.max_volume_ratio,
            pairs=None if verlet is None else verlet.pairs, reference_cell=self._reference_cell(),
            max_cell_length_ratio=cfg.max_cell_length_ratio)
        for k, reason in enumerate(reasons):
            if reason is not None:
                p, r = self.replicas[k]
                raise bad_start(self.state_points[p].name, r, reason)

    def _reference_cell(self) -> torch.Tensor:
        """The start cell [3, 3] Å (rows), on the replicas' device."""
        return torch.as_tensor(self.template.cell.array, dtype=torch.float64, device=self.state.cells.device)

    # ------------------------------------------------------------------ one step

    def _evaluate(self, ctx: _Round, positions: torch.Tensor, cells: torch.Tensor, stale=None,
                  refresh: bool = True):
        """Forces [R, N, 3] (and stress [R, 3, 3] if needed), float64. The Verlet list is
        brought up to date first (``stale``: precomputed flags, else checked here), unless
        ``refresh`` is False (deferred checks: the list is used as it is)."""
        potential = ctx.potential
        if ctx.pairs_request is not None:
            if refresh:
                refresh_verlet_list(ctx.verlet, positions, cells, stale=stale)
            potential = functools.partial(ctx.potential, pairs=ctx.verlet.pairs)
        return forces_and_stress(potential, positions, cells, ctx.numbers, ctx.need_stress)

    def _step(self, ctx: _Round, active: np.ndarray) -> tuple[LangevinState, np.ndarray]:
        """One step of every replica (inactive ones keep their state); also returns the replicas
        whose drifted state was not finite (evaluated at their old state, to be restored).

        Host round trip: one transfer of 2R booleans (finite after the drift; Verlet list
        stale), which decides which lists vesin rebuilds."""
        old = self.state
        new = ctx.drift(old, ctx.params, self.noise.next())
        finite = torch.isfinite(new.positions).flatten(1).all(1) & torch.isfinite(new.cells).flatten(1).all(1)
        stale = None
        if ctx.pairs_request is not None:
            stale = verlet_list_is_stale(ctx.verlet, new.positions, new.cells)
            flags = torch.stack([finite, stale & finite]).cpu().numpy()
        else:
            flags = finite[None].cpu().numpy()
        finite = flags[0]
        keep = active & finite
        mask = None
        if not keep.all():  # inactive or broken replicas are evaluated where they were
            mask = torch.as_tensor(keep, device=old.positions.device)
            new.positions = torch.where(mask[:, None, None], new.positions, old.positions)
            new.cells = torch.where(mask[:, None, None], new.cells, old.cells)
            if stale is not None:
                stale = verlet_list_is_stale(ctx.verlet, new.positions, new.cells)
        elif stale is not None:
            stale = torch.as_tensor(flags[1], device=old.positions.device)
        forces, stress = self._evaluate(ctx, new.positions, new.cells, stale)
        new = ctx.kick(new, ctx.params, forces, stress)
        if mask is not None:
            new = _merge(mask, new, old)
        self.step += 1
        return new, active & ~finite

    def _step_deferred(self, ctx: _Round, active_mask: torch.Tensor) -> torch.Tensor:
        """One step of every replica without reading anything on the host: the Verlet list is
        kept as it is, inactive replicas keep their state. Returns [R] bool on the device: the
        replicas whose list went stale or whose state became non-finite in this step (the
        window is then run again, :meth:`_run`)."""
        old = self.state
        new = ctx.drift(old, ctx.params, self.noise.next())
        finite = torch.isfinite(new.positions).flatten(1).all(1) & torch.isfinite(new.cells).flatten(1).all(1)
        keep = active_mask & finite
        new.positions = torch.where(keep[:, None, None], new.positions, old.positions)
        new.cells = torch.where(keep[:, None, None], new.cells, old.cells)
        raised = active_mask & ~finite
        if ctx.pairs_request is not None:
            raised = raised | (active_mask & verlet_list_is_stale(ctx.verlet, new.positions, new.cells))
        forces, stress = self._evaluate(ctx, new.positions, new.cells, refresh=False)
        new = ctx.kick(new, ctx.params, forces, stress)
        self.state = _merge(keep, new, old)
        self.step += 1
        return raised

    def _rebuild_ahead(self, ctx: _Round, last: torch.Tensor | None) -> torch.Tensor:
        """At a check (deferred flags): rebuild the lists whose displacement bound is within the
        largest growth since the last check (``last``: the bounds then, [R]) of the skin; returns
        the bounds after the rebuild, to compare with at the next check."""
        bound = verlet_displacement(ctx.verlet, self.state.positions, self.state.cells)
        if last is not None:
            growth = float(torch.nan_to_num(bound - last, nan=0.0).clamp(min=0.0).max())
            refresh_verlet_list(ctx.verlet, self.state.positions, self.state.cells,
                                rebuild=bound + 1.5 * growth >= ctx.verlet.skin_A)
            bound = verlet_displacement(ctx.verlet, self.state.positions, self.state.cells)
        return bound

    # ------------------------------------------------------------------ a segment

    def _run(self, ctx: _Round, n_steps: int, stride: int = 0, n_frames: int = 0, on_step=None,
             segment: str = "equilibration") -> dict:
        """Advance every replica by ``n_steps``, recording a frame every ``stride`` steps (up to
        ``n_frames``), with per-replica blow-up checks and restarts (module docstring).
        ``segment`` names the segment in the error after too many blow-ups."""
        cfg = self.config
        R, N = self.n_replicas, len(self.template)
        device = self.state.positions.device
        reference_cell = self._reference_cell()
        targets_K = ctx.params.kT / units.kB
        steps = np.zeros(R, dtype=np.int64)
        count = np.zeros(R, dtype=np.int64)
        frames = torch.empty(R, n_frames, N, 3, dtype=torch.float64, device=device)
        frame_cells = torch.empty(R, n_frames, 3, 3, dtype=torch.float64, device=device)
        frame_T = torch.empty(R, n_frames, dtype=torch.float64, device=device)
        good, good_steps, good_count = self.state.clone(), steps.copy(), count.copy()
        deferred = ctx.deferred
        good_noise, good_step = (self.noise.state_dict(), self.step) if deferred else (None, None)
        rerun = False  # running a window again, reading the flags every step
        raised = None  # [R] on the device: a flag was raised in this window (deferred)
        masks: dict[bytes, torch.Tensor] = {}  # active replicas → device mask, copied once
        bounds = self._rebuild_ahead(ctx, None) if deferred and ctx.verlet is not None else None
        blow_count = np.zeros(R, dtype=np.int64)
        discarded = 0
        since_check = 0
        while (steps < n_steps).any():
            active = steps < n_steps
            forced = np.zeros(R, dtype=bool)
            error = None
            quiet = deferred and not rerun
            try:
                with np.errstate(all="ignore"):
                    if quiet:
                        key = active.tobytes()
                        if key not in masks:
                            masks[key] = torch.as_tensor(active, device=device)
                        now = self._step_deferred(ctx, masks[key])
                        raised = now if raised is None else raised | now
                    else:
                        self.state, forced = self._step(ctx, active)
            except (RuntimeError, ValueError, FloatingPointError, torch.linalg.LinAlgError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if quiet and error is not None:  # run the window again, checking every step
                error = None
                raised = torch.ones(R, dtype=torch.bool, device=device)
                since_check = cfg.check_every
            elif error is None:
                steps[active] += 1
                if on_step is not None:
                    on_step(self)
                if stride and n_frames:
                    due = np.flatnonzero(active & ~forced & (steps % stride == 0) & (count < n_frames))
                    if len(due):
                        rows = torch.as_tensor(due, device=device)
                        slots = torch.as_tensor(count[due], device=device)
                        frames[rows, slots] = self.state.positions[rows]
                        frame_cells[rows, slots] = self.state.cells[rows]
                        frame_T[rows, slots] = kinetic_temperature_K(self.state.momenta[rows], ctx.params.masses)
                        count[due] += 1
                since_check += 1
            if error is None:
                finished = active & (steps >= n_steps)
                if not (since_check >= cfg.check_every or finished.any() or forced.any()):
                    continue
                if quiet and bool(raised.any()):  # the one host read of the window's flags
                    self.state = good.clone()
                    self.noise.load_state_dict(good_noise)
                    self.step = good_step
                    steps, count = good_steps.copy(), good_count.copy()
                    since_check, raised, rerun = 0, None, True
                    self.window_reruns += 1
                    continue
                raised = None
                if ctx.verlet is not None:
                    refresh_verlet_list(ctx.verlet, self.state.positions, self.state.cells)
                reasons = blow_up_reasons(
                    self.state.positions, self.state.momenta, self.state.cells, self.reference_volume_A3,
                    min_distance_A=cfg.min_distance_A, max_volume_ratio=cfg.max_volume_ratio,
                    pairs=None if ctx.verlet is None else ctx.verlet.pairs,
                    reference_cell=reference_cell, max_cell_length_ratio=cfg.max_cell_length_ratio,
                    masses=ctx.params.masses, temperature_K=targets_K,
                    max_temperature_ratio=cfg.max_temperature_ratio,
                    previous_positions=good.positions, previous_cells=good.cells,
                    steps_since=torch.as_tensor(steps - good_steps),
                    max_step_displacement_A=cfg.max_step_displacement_A)
                # a drift to non-finite positions or cell was undone by _step: still a blow-up
                reasons = [reason if reason is not None or not f else "non-finite positions, momenta or cell"
                           for reason, f in zip(reasons, forced)]
            else:  # the potential failed for the whole batch: every replica that moved is suspect
                reasons = [error if a else None for a in active]
            since_check = 0
            bad = np.array([r is not None for r in reasons])
            for k in np.flatnonzero(bad):
                p, r = self.replicas[k]
                blow_count[k] += 1
                message = f"{self.state_points[p].name}/replica {r}: step {int(steps[k])}: {reasons[k]}"
                self.blow_ups.append(message)
                if blow_count[k] > cfg.max_blow_ups:
                    raise too_many_blow_ups(self.state_points[p].name, r, segment, int(steps[k]), reasons[k],
                                            int(blow_count[k]), cfg.max_blow_ups, cfg.timestep_fs)
                warnings.warn(f"MD blow-up ({message}); discarding {int(count[k] - good_count[k])} frame(s) "
                              f"and restarting from step {int(good_steps[k])}", RuntimeWarning)
                discarded += int(count[k] - good_count[k])
                steps[k], count[k] = good_steps[k], good_count[k]
            if bad.any():
                self.state = _merge(torch.as_tensor(bad, device=device), good, self.state)
                if ctx.verlet is not None:
                    refresh_verlet_list(ctx.verlet, self.state.positions, self.state.cells,
                                        rebuild=torch.as_tensor(bad, device=device))
            if deferred and ctx.verlet is not None:
                bounds = self._rebuild_ahead(ctx, bounds)
            good = self.state.clone()  # every replica is healthy now (checked or restored)
            good_steps, good_count = steps.copy(), count.copy()
            if deferred:
                good_noise, good_step, rerun = self.noise.state_dict(), self.step, False
        return {"frames": frames, "cells": frame_cells, "temperatures": frame_T, "count": count,
                "discarded": discarded}

    # ------------------------------------------------------------------ the interface

    def sample(self, potential: Potential, on_step=None) -> list[RawSamples]:
        """One round for every replica of every state point with ``potential`` driving the MD:
        equilibration (``equilibration_steps`` in the first round, ``reequilibration_steps``
        later), then ``snapshots_per_replica`` frames ``stride`` steps apart. ``on_step(sampler)``
        is called after every step (tests inject faults with it; under ``deferred_checks`` again
        for the steps of a window that runs again). ``stats["wall_s"]``,
        ``stats["neighbour_list_rebuilds"]`` (Verlet lists searched again after the round's
        first build) and ``stats["window_reruns"]`` (``deferred_checks``) are the whole batch's."""
        cfg = self.config
        t0 = time.perf_counter()
        ctx = self._start_round(potential)
        equilibration = cfg.equilibration_steps if self.rounds == 0 else cfg.reequilibration_steps
        bar = progress_bar(cfg, equilibration + cfg.snapshots_per_replica * cfg.stride,
                           f"MD {'+'.join(p.name for p in self.state_points)} ({self.n_replicas} replicas)")

        first_step, reruns = self.step, self.window_reruns

        def step(sampler) -> None:
            bar.update(max(0, sampler.step - first_step - bar.n))  # a rerun window does not count twice
            if on_step is not None:
                on_step(sampler)

        try:
            warm = self._run(ctx, equilibration, on_step=step)
            prod = self._run(ctx, cfg.snapshots_per_replica * cfg.stride, cfg.stride,
                             cfg.snapshots_per_replica, on_step=step, segment="production")
        finally:
            bar.close()
        out_device, out_dtype = potential_device_dtype(potential)
        wall = time.perf_counter() - t0
        rebuilds = 0 if ctx.verlet is None else int(ctx.verlet.builds.sum()) - self.n_replicas
        out = []
        for p, point in enumerate(self.state_points):
            rows = [k for k, (q, _) in enumerate(self.replicas) if q == p]
            take = lambda t: torch.cat([t[k, : prod["count"][k]] for k in rows])
            replica = torch.cat([torch.full((int(prod["count"][k]),), self.replicas[k][1], dtype=torch.long)
                                 for k in rows])
            out.append(RawSamples(
                state_point=point,
                positions=take(prod["frames"]).to(out_device, out_dtype),
                cells=take(prod["cells"]).to(out_device, out_dtype),
                replica=replica,
                stats={"wall_s": wall, "discarded_frames": warm["discarded"] + prod["discarded"],
                       "kinetic_temperature_K": float(take(prod["temperatures"]).mean()),
                       "neighbour_list_rebuilds": rebuilds,
                       "window_reruns": self.window_reruns - reruns},
            ))
        self.rounds += 1
        return out

    def state_dict(self) -> dict:
        if self._pending is not None:  # loaded but not run since: pass it on unchanged
            return {**self._pending, "blow_ups": list(self.blow_ups)}
        return {
            "state": None if self.state is None else {
                name: getattr(self.state, name).detach().cpu().clone() for name in LangevinState.FIELDS},
            "noise": None if self.noise is None else self.noise.state_dict(),
            "step": self.step,
            "rounds": self.rounds,
            "blow_ups": list(self.blow_ups),
            "replicas": [(self.state_points[p].name, r) for p, r in self.replicas],
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        expected = [(self.state_points[p].name, r) for p, r in self.replicas]
        if [tuple(x) for x in state["replicas"]] != expected:
            raise ValueError(f"BatchedSampler.load_state_dict: saved replicas {state['replicas']} "
                             f"differ from this sampler's {expected}")
        self._pending = {k: v for k, v in state.items() if k != "blow_ups"}
        self.state, self.noise = None, None
        self.step = int(state["step"])
        self.rounds = int(state["rounds"])
        self.blow_ups = list(state["blow_ups"])


def _merge(take_first: torch.Tensor, first: LangevinState, second: LangevinState) -> LangevinState:
    """Per replica: ``first``'s rows where ``take_first`` [R] is True, else ``second``'s."""
    fields = {}
    for name in LangevinState.FIELDS:
        a, b = getattr(first, name), getattr(second, name)
        fields[name] = torch.where(take_first.view(-1, *([1] * (a.ndim - 1))), a, b)
    return LangevinState(**fields)
