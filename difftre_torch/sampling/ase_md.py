"""NVT and NPT sampling with ASE's integrators, with exact save/restore and blow-up checks.

Units are ASE's: Å, eV, fs (converted to ASE time with ``ase.units.fs``), K, amu; pressure in
GPa at the interface, eV/Å³ inside. Cell vectors are rows.

* NVT: ``ase.md.langevin.Langevin`` (Vanden-Eijnden–Ciccotti scheme) with ``fixcm=False`` and an
  ``ase.constraints.FixCom`` constraint, as ASE recommends; friction γ in 1/fs.
* NPT: ``ase.md.langevinbaoab.LangevinBAOAB``: BAOAB Langevin dynamics for the atoms
  (Leimkuhler & Matthews, J. Chem. Phys. 138, 174102 (2013), doi:10.1063/1.4802990) and
  Langevin–Hoover dynamics for the cell (Quigley & Probert, J. Chem. Phys. 120, 11432 (2004),
  doi:10.1063/1.1755657), which samples the isothermal–isobaric ensemble. The full cell
  (6 strain components, symmetric, no rotation) fluctuates unless ``hydrostatic=True``, so a
  layered crystal can change c alone. Atom thermostat time T_tau = 1/γ; cell time P_tau.

Why LangevinBAOAB rather than MTKNPT: it is stochastic, so replicas decorrelate quickly and
small cells equilibrate without Nosé–Hoover's ergodicity problems; its whole state is positions,
momenta, cell, cell momentum and one NumPy Generator, so a run restored from
:func:`integrator_state` continues bit for bit; and it accepts the FixCom constraint, which
MTKNPT refuses.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from difftre_torch.sampling.base import SamplerConfig, StatePoint
from difftre_torch.sampling.blowups import blow_up_reasons, too_many_blow_ups


def initialise_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta at ``temperature_K`` with zero total momentum (in place)."""
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)


def build_integrator(atoms: Atoms, config: SamplerConfig, state: StatePoint,
                     rng: np.random.Generator) -> MolecularDynamics:
    """An ASE integrator for ``atoms`` (which must carry its calculator) at ``state``, driven by ``rng``.

    ``state.ensemble`` picks it: NVT ``Langevin`` or NPT ``LangevinBAOAB`` at
    ``state.pressure_GPa``; ``config`` gives the time step, friction, barostat time and
    ``hydrostatic`` (its other fields are the samplers'). A ``FixCom`` constraint is added if
    absent: the centre of mass stays put, and the number of degrees of freedom used for the
    kinetic temperature is 3N − 3.
    """
    if atoms.calc is None:
        raise ValueError("build_integrator: atoms has no calculator attached")
    if not any(isinstance(c, FixCom) for c in atoms.constraints):
        atoms.set_constraint(list(atoms.constraints) + [FixCom()])
    dt = config.timestep_fs * units.fs
    if state.ensemble == "nvt":
        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=state.temperature_K,
            friction=config.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
    from ase.md.langevinbaoab import LangevinBAOAB

    pressure = state.pressure_GPa * units.GPa
    external = -pressure if config.hydrostatic else -pressure * np.identity(3)
    with warnings.catch_warnings():  # FixCom is fine here: it only projects momenta
        warnings.simplefilter("ignore")
        return LangevinBAOAB(
            atoms,
            timestep=dt,
            temperature_K=state.temperature_K,
            externalstress=external,
            hydrostatic=config.hydrostatic,
            T_tau=units.fs / config.friction_per_fs,
            P_tau=config.barostat_tau_fs * units.fs,
            rng=rng,
        )


def integrator_state(dyn: MolecularDynamics) -> dict:
    """Everything needed to continue ``dyn`` exactly: arrays, cell momentum, RNG state, step."""
    atoms = dyn.atoms
    state = {
        "positions": atoms.get_positions().copy(),
        "momenta": atoms.get_momenta().copy(),
        "cell": atoms.cell.array.copy(),
        "nsteps": int(dyn.nsteps),
        "rng": copy.deepcopy(dyn.rng.bit_generator.state),
    }
    # LangevinBAOAB caches the accelerations and the cell force; the latter is computed from
    # mid-step momenta, so it cannot be recomputed from the stored state and is saved as is.
    for name in ("p_eps", "accel", "force_eps"):
        if hasattr(dyn, name):
            state[name] = np.array(getattr(dyn, name), dtype=float).copy()
    return state


def restore_integrator_state(dyn: MolecularDynamics, state: dict) -> None:
    """Inverse of :func:`integrator_state`: put ``dyn`` back where the state was taken."""
    atoms = dyn.atoms
    atoms.set_cell(state["cell"], scale_atoms=False)
    atoms.set_positions(state["positions"], apply_constraint=False)
    atoms.set_momenta(state["momenta"], apply_constraint=False)
    dyn.nsteps = int(state["nsteps"])
    dyn.rng.bit_generator.state = copy.deepcopy(state["rng"])
    for name in ("p_eps", "accel", "force_eps"):
        if name in state:
            value = np.asarray(state[name], dtype=float)
            setattr(dyn, name, float(value) if value.ndim == 0 else value.copy())


def blow_up_reason(atoms: Atoms, config: SamplerConfig, reference_volume_A3: float, *,
                   reference_cell: np.ndarray | None = None, temperature_K: float | None = None,
                   previous: dict | None = None, steps_since: int = 1) -> str | None:
    """Why the current configuration of ``atoms`` is unphysical, or ``None`` if it looks healthy:
    :func:`~difftre_torch.sampling.blowups.blow_up_reasons` for this one system (R = 1; close
    pairs from a vesin search, minimum image if ``atoms`` is periodic in 3D), with the bounds of
    ``config``. The checks that need more run when it is given: reference_cell [3, 3] Å (the
    start cell: cell vector lengths); temperature_K (the thermostat's: kinetic temperature, with
    ``atoms``' masses); previous (an :func:`integrator_state` of the previous check) with
    steps_since (MD steps since then: displacement per step)."""
    as_batch = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))[None]
    extra = {}
    if reference_cell is not None:
        extra.update(reference_cell=as_batch(reference_cell)[0], max_cell_length_ratio=config.max_cell_length_ratio)
    if temperature_K is not None:
        extra.update(masses=as_batch(atoms.get_masses())[0], temperature_K=torch.tensor([float(temperature_K)]),
                     max_temperature_ratio=config.max_temperature_ratio)
    if previous is not None:
        extra.update(previous_positions=as_batch(previous["positions"]), previous_cells=as_batch(previous["cell"]),
                     steps_since=torch.tensor([int(steps_since)]),
                     max_step_displacement_A=config.max_step_displacement_A)
    return blow_up_reasons(as_batch(atoms.get_positions()), as_batch(atoms.get_momenta()),
                           as_batch(atoms.cell.array), reference_volume_A3,
                           min_distance_A=config.min_distance_A, max_volume_ratio=config.max_volume_ratio,
                           periodic=bool(atoms.pbc.all()), **extra)[0]


@dataclass
class SegmentResult:
    """What :func:`run_segment` produced: recorded frames, discarded frames, blow-up reasons."""

    frames: list
    discarded: int
    blow_ups: list[str]


def run_segment(
    dyn: MolecularDynamics,
    n_steps: int,
    config: SamplerConfig,
    reference_volume_A3: float,
    *,
    stride: int = 0,
    record=None,
    on_step=None,
    state_point: StatePoint | None = None,
    replica: int = 0,
    segment: str = "equilibration",
    reference_cell: np.ndarray | None = None,
    on_blow_up=None,
) -> SegmentResult:
    """Advance ``dyn`` by ``n_steps``, recording ``record(atoms)`` every ``stride`` steps.

    Every ``config.check_every`` steps (and at the end) the configuration is checked with
    :func:`blow_up_reason` (kinetic temperature against ``state_point.temperature_K`` if given,
    cell vector lengths against ``reference_cell`` if given, displacement since the previous
    check); an exception raised by the calculator counts as a blow-up too. On a blow-up the
    frames recorded since the last healthy check are discarded, a warning is issued, and the run
    continues from that healthy state with the random stream advanced (new noise, so the same
    blow-up does not repeat). After more than ``config.max_blow_ups`` in this segment it gives up
    with :class:`~difftre_torch.sampling.blowups.MDBlowUpError` naming ``state_point``,
    ``replica`` and ``segment``. No frame from a broken trajectory is ever returned.
    ``on_step(dyn)`` is called after every step (monitoring, or tests that inject faults);
    ``on_blow_up(message)`` with each blow-up's ``"step <k>: <reason>"`` as it happens (so the
    caller's record includes those of a segment that ends in the error).
    """
    check_every, max_blow_ups = config.check_every, config.max_blow_ups
    start = int(dyn.nsteps)
    target = start + int(n_steps)
    frames: list = []
    blow_ups: list[str] = []
    discarded = 0
    last_good = integrator_state(dyn)
    good_count = 0
    while dyn.nsteps < target:
        try:
            with np.errstate(all="ignore"):
                dyn.run(1)
            if on_step is not None:
                on_step(dyn)
            step = int(dyn.nsteps) - start
            due = step % check_every == 0 or dyn.nsteps >= target
            reason = None
            if due:
                reason = blow_up_reason(
                    dyn.atoms, config, reference_volume_A3, reference_cell=reference_cell,
                    temperature_K=None if state_point is None else state_point.temperature_K,
                    previous=last_good, steps_since=int(dyn.nsteps) - last_good["nsteps"])
        except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            due = True
        if reason is not None:
            blow_ups.append(f"step {int(dyn.nsteps)}: {reason}")
            if on_blow_up is not None:
                on_blow_up(blow_ups[-1])
            if len(blow_ups) > max_blow_ups:
                raise too_many_blow_ups("(unnamed)" if state_point is None else state_point.name, replica,
                                        segment, int(dyn.nsteps), reason, len(blow_ups), max_blow_ups,
                                        config.timestep_fs)
            warnings.warn(f"MD blow-up ({reason}); discarding {len(frames) - good_count} frame(s) "
                          f"and restarting from step {last_good['nsteps']}", RuntimeWarning)
            discarded += len(frames) - good_count
            del frames[good_count:]
            rng_state = copy.deepcopy(dyn.rng.bit_generator.state)
            restore_integrator_state(dyn, last_good)
            dyn.rng.bit_generator.state = rng_state
            continue
        if stride and record is not None and (int(dyn.nsteps) - start) % stride == 0:
            frames.append(record(dyn.atoms))
        if due:  # healthy: frames so far are verified, and this is the state to fall back to
            last_good = integrator_state(dyn)
            good_count = len(frames)
    return SegmentResult(frames=frames, discarded=discarded, blow_ups=blow_ups)
