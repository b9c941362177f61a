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
from typing import Literal

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary


@dataclass
class MDConfig:
    """Settings of one ASE MD run (ASE units; fs and GPa at the interface).

    ensemble: ``"nvt"`` (Langevin) or ``"npt"`` (LangevinBAOAB, Langevin–Hoover cell).
    temperature_K: thermostat temperature.
    timestep_fs: integration time step.
    friction_per_fs: Langevin friction γ for the atoms (NPT: T_tau = 1/γ).
    pressure_GPa: external hydrostatic pressure (NPT only).
    barostat_tau_fs: cell fluctuation / damping time P_tau (NPT only).
    hydrostatic: NPT with fixed cell shape (volume only) instead of the full cell.
    min_distance_A: two atoms closer than this mark the trajectory as blown up.
    max_volume_ratio: a cell whose volume leaves [V0/r, V0·r] marks it as blown up.
    """

    ensemble: Literal["nvt", "npt"] = "nvt"
    temperature_K: float = 300.0
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    pressure_GPa: float = 0.0
    barostat_tau_fs: float = 1000.0
    hydrostatic: bool = False
    min_distance_A: float = 0.6
    max_volume_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.ensemble not in ("nvt", "npt"):
            raise ValueError(f"MDConfig.ensemble: expected 'nvt' or 'npt', got {self.ensemble!r}")
        for name in ("temperature_K", "timestep_fs", "friction_per_fs", "barostat_tau_fs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MDConfig.{name}: expected > 0, got {getattr(self, name)!r}")


def initialise_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta at ``temperature_K`` with zero total momentum (in place)."""
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)


def build_integrator(atoms: Atoms, config: MDConfig, rng: np.random.Generator) -> MolecularDynamics:
    """An ASE integrator for ``atoms`` (which must carry its calculator), driven by ``rng``.

    A ``FixCom`` constraint is added if absent: the centre of mass stays put, and the number of
    degrees of freedom used for the kinetic temperature is 3N − 3.
    """
    if atoms.calc is None:
        raise ValueError("build_integrator: atoms has no calculator attached")
    if not any(isinstance(c, FixCom) for c in atoms.constraints):
        atoms.set_constraint(list(atoms.constraints) + [FixCom()])
    dt = config.timestep_fs * units.fs
    if config.ensemble == "nvt":
        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=config.temperature_K,
            friction=config.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
    from ase.md.langevinbaoab import LangevinBAOAB

    pressure = config.pressure_GPa * units.GPa
    external = -pressure if config.hydrostatic else -pressure * np.identity(3)
    with warnings.catch_warnings():  # FixCom is fine here: it only projects momenta
        warnings.simplefilter("ignore")
        return LangevinBAOAB(
            atoms,
            timestep=dt,
            temperature_K=config.temperature_K,
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


def blow_up_reason(atoms: Atoms, config: MDConfig, reference_volume_A3: float) -> str | None:
    """Why the current configuration is unphysical, or ``None`` if it looks healthy.

    Checks: non-finite positions or momenta; two atoms closer than ``config.min_distance_A``
    (minimum image, via vesin); volume outside the allowed ratio of ``reference_volume_A3``.
    """
    pos = atoms.get_positions()
    if not (np.isfinite(pos).all() and np.isfinite(atoms.get_momenta()).all()):
        return "non-finite positions or momenta"
    volume = abs(np.linalg.det(atoms.cell.array))
    ratio = volume / reference_volume_A3
    if not (1.0 / config.max_volume_ratio <= ratio <= config.max_volume_ratio):
        return f"cell volume {volume:.1f} Å³ is {ratio:.2f}× the reference"
    from vesin import NeighborList

    nl = NeighborList(cutoff=config.min_distance_A, full_list=False)
    i, j = nl.compute(points=pos, box=atoms.cell.array, periodic=bool(atoms.pbc.all()), quantities="ij")
    if len(i):
        return f"atoms {int(i[0])} and {int(j[0])} closer than {config.min_distance_A} Å"
    return None


@dataclass
class SegmentResult:
    """What :func:`run_segment` produced: recorded frames, discarded frames, blow-up reasons."""

    frames: list
    discarded: int
    blow_ups: list[str]


def run_segment(
    dyn: MolecularDynamics,
    n_steps: int,
    config: MDConfig,
    reference_volume_A3: float,
    *,
    stride: int = 0,
    record=None,
    check_every: int = 10,
    max_blow_ups: int = 20,
    on_step=None,
) -> SegmentResult:
    """Advance ``dyn`` by ``n_steps``, recording ``record(atoms)`` every ``stride`` steps.

    Every ``check_every`` steps (and at the end) the configuration is checked with
    :func:`blow_up_reason`; an exception raised by the calculator counts as a blow-up too. On a
    blow-up the frames recorded since the last healthy check are discarded, a warning is
    issued, and the run continues from that healthy state with the random stream advanced (new
    noise, so the same blow-up does not repeat). After ``max_blow_ups`` it gives up with a
    RuntimeError. No frame from a broken trajectory is ever returned. ``on_step(dyn)`` is called
    after every step (monitoring, or tests that inject faults).
    """
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
            reason = blow_up_reason(dyn.atoms, config, reference_volume_A3) if due else None
        except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            due = True
        if reason is not None:
            blow_ups.append(f"step {int(dyn.nsteps)}: {reason}")
            if len(blow_ups) > max_blow_ups:
                raise RuntimeError(f"MD blew up {len(blow_ups)} times; last: {reason}")
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
