"""What every sampler shares: the state points, the one MD settings type, the samples a round
returns, and the :class:`Sampler` protocol the trainer and the comparison program against.

Implementations: :class:`~difftre_torch.sampling.sampler.AseSampler` (ASE integrators, one
replica after another) and :class:`~difftre_torch.sampling.batched.BatchedSampler` (all replicas
as one batch on the potential's device). Both take ``(atoms, state_points, SamplerConfig)``.

Units are ASE's: Å, eV, fs, K, amu; pressure in GPa; cell vectors are rows.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from difftre_torch.potentials.base import Potential


@dataclass
class StatePoint:
    """A thermodynamic state to sample: NVT when ``pressure_GPa`` is None, else NPT."""

    name: str = field(metadata={"doc": "unique name, referred to by targets and in blow-up messages"})
    temperature_K: float = field(metadata={"doc": "thermostat temperature (K)"})
    pressure_GPa: float | None = field(
        default=None, metadata={"doc": "external hydrostatic pressure (GPa) for NPT; None: NVT at the start cell"})
    replicas: int = field(default=1, metadata={"doc": "independent MD replicas, each with its own seed"})

    def __post_init__(self) -> None:
        if not self.temperature_K > 0:
            raise ValueError(f"StatePoint {self.name!r}: temperature_K must be > 0")
        if self.replicas < 1:
            raise ValueError(f"StatePoint {self.name!r}: replicas must be >= 1")

    @property
    def ensemble(self) -> Literal["nvt", "npt"]:
        """``"nvt"`` (fixed cell) or ``"npt"`` (the cell fluctuates at ``pressure_GPa``)."""
        return "nvt" if self.pressure_GPa is None else "npt"


@dataclass
class SamplerConfig:
    """MD settings shared by all replicas of all state points (both samplers).

    NVT: Langevin dynamics with friction γ = ``friction_per_fs``; NPT: the same for the atoms plus
    Langevin–Hoover dynamics of the cell with time constant ``barostat_tau_fs``
    (:mod:`difftre_torch.sampling.ase_md`, :mod:`difftre_torch.sampling.integrators`). A round
    equilibrates (``equilibration_steps`` in the first round, ``reequilibration_steps`` later,
    since the potential has changed), then records ``snapshots_per_replica`` snapshots
    ``stride`` steps apart. Every ``check_every`` steps each replica is checked for a blow-up
    (:func:`~difftre_torch.sampling.blowups.blow_up_reasons`: non-finite values, volume, cell
    vector lengths, close pairs, kinetic temperature, displacement per step) and, if it fails,
    rolled back to its last healthy check; its start state is checked before the first step
    (a failure there, or more than ``max_blow_ups`` in one segment, raises
    :class:`~difftre_torch.sampling.blowups.MDBlowUpError`). The bounds' defaults
    (``max_temperature_ratio`` 5, ``max_step_displacement_A`` 0.5 Å, ``max_cell_length_ratio`` 2)
    are far outside a healthy run's fluctuations (the reasoning is in
    :mod:`~difftre_torch.sampling.blowups`); the checks only read the state, so healthy
    trajectories do not depend on them. Each field's unit and meaning is
    in its ``metadata["doc"]``; every field is validated on construction (ValueError naming
    ``SamplerConfig.<field>``).
    """

    timestep_fs: float = field(default=1.0, metadata={"doc": "integration time step (fs)"})
    friction_per_fs: float = field(
        default=0.01, metadata={"doc": "Langevin friction γ of the atoms (1/fs); NPT's atom thermostat time is 1/γ"})
    barostat_tau_fs: float = field(
        default=1000.0, metadata={"doc": "NPT only: cell fluctuation and damping time P_tau (fs)"})
    hydrostatic: bool = field(
        default=False, metadata={"doc": "NPT only: keep the cell shape, let only the volume change"})
    equilibration_steps: int = field(
        default=1000, metadata={"doc": "MD steps before the first round's snapshots"})
    reequilibration_steps: int = field(
        default=200, metadata={"doc": "MD steps before a later round's snapshots (the potential has changed)"})
    snapshots_per_replica: int = field(
        default=100, metadata={"doc": "snapshots recorded per replica per round"})
    stride: int = field(default=10, metadata={"doc": "MD steps between recorded snapshots"})
    min_distance_A: float = field(
        default=0.6, metadata={"doc": "blow-up: two atoms closer than this (Å); 0 turns the check off"})
    max_volume_ratio: float = field(
        default=2.0, metadata={"doc": "blow-up: cell volume outside [V0/r, V0·r] of the start cell's V0 (ratio > 1)"})
    max_cell_length_ratio: float = field(
        default=2.0, metadata={"doc": "blow-up: a cell vector's length outside [L0/r, L0·r] of the start cell's "
                                      "(ratio > 1; with max_volume_ratio it bounds the cell's shape); 0: off"})
    max_temperature_ratio: float = field(
        default=5.0, metadata={"doc": "blow-up: kinetic temperature (3N − 3 degrees of freedom) above this "
                                      "multiple of the state point's temperature_K (> 1); 0: off"})
    max_step_displacement_A: float = field(
        default=0.5, metadata={"doc": "blow-up: an atom moved more than this per MD step (Å) since the last "
                                      "check, the cell's own change taken out; 0: off"})
    check_every: int = field(default=10, metadata={"doc": "MD steps between blow-up checks"})
    seed: int = field(
        default=0, metadata={"doc": "seed of every replica's random stream (with state point and replica index)"})
    skin_A: float = field(
        default=1.0, metadata={"doc": "batched sampler only: Verlet skin added to the potential's cut-off (Å)"})
    noise_block_steps: int = field(
        default=32, metadata={"doc": "batched sampler only: MD steps of Gaussian noise drawn per replica at once"})
    compile_step: bool = field(
        default=False, metadata={"doc": "batched sampler only: torch.compile the integrator's step (fused "
                                        "kernels, for a launch-bound step on a GPU; compiles once per batch "
                                        "shape, tens of seconds on a CPU)"})
    deferred_checks: bool = field(
        default=False, metadata={"doc": "batched sampler only: read the per-step flags (Verlet list stale, state "
                                        "non-finite) on the host only at the blow-up checks, not every step; a "
                                        "window in which a flag was raised runs again from its start with the "
                                        "same noise, checking every step"})
    progress: bool = field(default=True, metadata={"doc": "a progress bar of the MD steps on stderr"})
    max_blow_ups: int = field(
        default=20, metadata={"doc": "blow-ups one replica may have in one equilibration or production "
                                     "segment before an MDBlowUpError stops the run"})

    def __post_init__(self) -> None:
        for name, kind, test, expected in _SAMPLER_CHECKS:
            value = getattr(self, name)
            if kind is int:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and test(value)
                expected = f"an integer {expected}"
            else:
                ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
                      and test(float(value)))
                expected = f"a number {expected}"
            if not ok:
                raise ValueError(f"SamplerConfig.{name}: expected {expected}, got {value!r}")
        for name in ("hydrostatic", "progress", "compile_step", "deferred_checks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SamplerConfig.{name}: expected true or false, got {getattr(self, name)!r}")


_SAMPLER_CHECKS = (  # (field, type, test, what the message says is expected); NaN fails every test
    ("timestep_fs", float, lambda v: v > 0, "> 0"),
    ("friction_per_fs", float, lambda v: v > 0, "> 0"),
    ("barostat_tau_fs", float, lambda v: v > 0, "> 0"),
    ("equilibration_steps", int, lambda v: v >= 0, ">= 0"),
    ("reequilibration_steps", int, lambda v: v >= 0, ">= 0"),
    ("snapshots_per_replica", int, lambda v: v >= 1, ">= 1"),
    ("stride", int, lambda v: v >= 1, ">= 1"),
    ("min_distance_A", float, lambda v: v >= 0, ">= 0"),
    ("max_volume_ratio", float, lambda v: v > 1, "> 1"),
    ("max_cell_length_ratio", float, lambda v: v == 0 or v > 1, "> 1, or 0 (off)"),
    ("max_temperature_ratio", float, lambda v: v == 0 or v > 1, "> 1, or 0 (off)"),
    ("max_step_displacement_A", float, lambda v: v >= 0, ">= 0"),
    ("check_every", int, lambda v: v >= 1, ">= 1"),
    ("seed", int, lambda v: v >= 0, ">= 0"),
    ("skin_A", float, lambda v: v >= 0, ">= 0"),
    ("noise_block_steps", int, lambda v: v >= 1, ">= 1"),
    ("max_blow_ups", int, lambda v: v >= 0, ">= 0"),
)


@dataclass
class RawSamples:
    """Snapshots of one state point from one round.

    positions: [S, N, 3] Å; cells: [S, 3, 3] Å (rows); replica: [S] int64, the replica index
    within the state point of each snapshot (snapshots of one replica in time order); stats:
    the round's statistics (``wall_s``, ``discarded_frames``, ``kinetic_temperature_K``, …).
    """

    state_point: StatePoint
    positions: torch.Tensor
    cells: torch.Tensor
    replica: torch.Tensor
    stats: dict = field(default_factory=dict)


@runtime_checkable
class Sampler(Protocol):
    """What the trainer (:class:`~difftre_torch.trainer.DiffTReTrainer`) and the comparison
    (:func:`~difftre_torch.compare.sample_and_compare`) need of a sampler.

    state_points: the state points it samples, in the order of :meth:`sample`'s result.
    blow_ups: one message per blow-up so far (``"<state point>/replica <r>: step <k>: <reason>"``).
    sample(potential): one round of every replica of every state point with ``potential``
    driving the MD; one :class:`RawSamples` per state point. Replicas carry over between rounds.
    state_dict() / load_state_dict(state): everything needed to continue bit for bit (integrator
    states, random streams, round counter, blow-ups), as plain tensors, arrays and containers.
    """

    state_points: list[StatePoint]
    blow_ups: list[str]

    def sample(self, potential: Potential) -> list[RawSamples]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def owned_replicas(point: StatePoint, index: int, owned, sampler: str) -> list[int]:
    """The replica indices of state point ``index`` a sampler advances: ``owned[index]`` (checked:
    distinct indices in 0 … replicas − 1, at least one) or, when ``owned`` is None, all of them."""
    if owned is None:
        return list(range(point.replicas))
    if index >= len(owned):
        raise ValueError(f"{sampler}: owned lists the replicas of {len(owned)} state point(s), not of "
                         f"{point.name!r}")
    mine = [int(r) for r in owned[index]]
    if not mine or len(set(mine)) != len(mine) or not all(0 <= r < point.replicas for r in mine):
        raise ValueError(f"{sampler}: owned replicas of {point.name!r} must be distinct indices in 0 … "
                         f"{point.replicas - 1}, at least one; got {mine}")
    return mine


def progress_bar(config: SamplerConfig, total: int, description: str):
    """A tqdm bar of ``total`` MD steps on stderr (inner bar: it disappears when done); a
    disabled one when ``config.progress`` is false. At most one refresh every 2 s on a terminal,
    every 60 s into a log file."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False, disable=not config.progress,
                mininterval=2.0 if sys.stderr.isatty() else 60.0, dynamic_ncols=True)
