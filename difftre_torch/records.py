"""What a fit reports: one :class:`UpdateRecord` per optimiser update and one :class:`RunSummary`
at the end, the canonical names of the keys that callbacks, plots, the workflow and
checkpoints read (as nequip's ``data/_keys.py`` keeps its keys in one place).

Each is a ``@dataclass`` whose ``to_json()`` gives the plain dict written to files (the
checkpoint's ``history``, ``summary.json``) with the keys in field order, and whose
``from_json(data)`` reads it back. Timings are not compared by ``==`` (``field(compare=False)``):
two records of the same update are equal when every number but the wall clock is.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping


def _floats(mapping: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in mapping.items()}


def _check_keys(cls: type, data: Mapping[str, Any]) -> None:
    """Every field without a default present, no unknown key (fields with defaults were added
    later and may be missing in older files)."""
    names = [f.name for f in fields(cls)]
    optional = {f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
    missing = [n for n in names if n not in data and n not in optional]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        raise ValueError(f"{cls.__name__}.from_json: missing keys {missing}, unknown keys {unknown}")


@dataclass
class UpdateRecord:
    """One optimiser update of :class:`~difftre_torch.trainer.DiffTReTrainer`, as evaluated before
    its step.

    update: the update's number, 1 for the first.
    loss: the loss in its own dimensionless units: "total" and each term by target name, plus
    with force matching "force_matching" (λ · L_FM, in the total), "fm_energy_mse" (eV²/atom²)
    and "fm_force_mse" (eV²/Å²), the last two unweighted and not in the total.
    n_eff: per state point, the effective sample size N_eff = exp(−Σ w ln w) of the weights
    (snapshots). n_eff_ratio: per state point, N_eff / N (dimensionless, in (0, 1]).
    resampled: whether this update sampled again because N_eff/N fell below ``resample_ratio``.
    grad_norm: the total gradient norm before clipping (loss units per parameter unit).
    lr: the learning rate of this step (parameter units).
    time: wall-clock seconds of this update, "sample" (sampling and caching) and "update" (the
    rest); not compared by ``==``.
    state: per state point, the reweighted lattice lengths "a_A", "b_A", "c_A" (Å) and
    "volume_A3" (Å³), and "pressure_GPa" (virial pressure of the last sample, GPa).
    parameters: scalar trainable parameters θ by name at which ``loss`` was evaluated (before
    the step; :func:`~difftre_torch.monitor.scalar_parameters`), in their own units.
    step: the optimiser's step: "norm" (|δθ|); for Levenberg–Marquardt also
    "damping", "tries", "predicted" and "realised" (the reweighted loss change, loss units) and
    "n_eff_ratio_after", "gain" (:class:`~difftre_torch.curvature.StepReport`).
    noise: "loss_se", the jackknife standard error of the target loss
    (:mod:`difftre_torch.convergence`); "converged": 1.0 once the stopping rule holds.
    pool: per state point, "trajectories" (K kept), "snapshots" (pooled, every rank) and
    "n_eff_<round>", the pooled N_eff attributed to each kept trajectory by the sampling round
    that made it (:mod:`difftre_torch.sampling.pool`).
    """

    update: int
    loss: dict[str, float]
    n_eff: dict[str, float]
    n_eff_ratio: dict[str, float]
    resampled: bool
    grad_norm: float
    lr: float
    time: dict[str, float] = field(compare=False)
    state: dict[str, dict[str, float]]
    parameters: dict[str, float]
    step: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    pool: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A plain dict of the fields, in field order (the checkpoint's ``history`` entries)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpdateRecord:
        """The record of ``to_json()``'s dict (or one loaded from JSON); every key required."""
        _check_keys(cls, data)
        return cls(update=int(data["update"]), loss=_floats(data["loss"]), n_eff=_floats(data["n_eff"]),
                   n_eff_ratio=_floats(data["n_eff_ratio"]), resampled=bool(data["resampled"]),
                   grad_norm=float(data["grad_norm"]), lr=float(data["lr"]), time=_floats(data["time"]),
                   state={str(k): _floats(v) for k, v in data["state"].items()},
                   parameters=_floats(data["parameters"]), step=_floats(data.get("step", {})),
                   noise=_floats(data.get("noise", {})),
                   pool={str(k): _floats(v) for k, v in data.get("pool", {}).items()})


@dataclass
class RunSummary:
    """The result of :meth:`~difftre_torch.trainer.DiffTReTrainer.fit` (``summary.json``).

    updates: optimiser updates done. loss_initial: the first update's ``loss``
    (:class:`UpdateRecord`; None without updates). loss_final: "total" and each target's term at
    the selected θ (dimensionless), from ``final_from``: "fresh sample with the refined
    potential" or "reweighted store". n_eff_history: each update's N_eff per state point.
    resamples: how many updates sampled again. time_s: seconds spent sampling ("sample"), in the
    rest of the updates ("update") and in the final sample ("final_sample"), rounded to 1 ms;
    not compared by ``==``. parameters_final, parameters_initial: scalar θ by name after
    selection and at the first update's evaluation. state_points: per state point, its
    :class:`~difftre_torch.sampling.base.StatePoint` fields and the last sample's statistics
    (pressure_GPa, kinetic_temperature_K, discarded_frames, snapshots, sampled_with).
    refined_potential: the path of the written potential. selected: which θ it is: {"rule":
    "best" or "last…", "update", "loss" (the total at that θ; None for "last"),
    "min_n_eff_ratio" (for "best")}. figures, tables: paths of the PNGs and CSVs written.
    blow_ups: the sampler's messages about replicas that blew up and were restarted.
    config: the :class:`~difftre_torch.trainer.TrainerConfig` as a dict.
    stopped: why the updates ended before ``config["updates"]`` ("" if they did not), e.g. the
    stopping rule (:func:`~difftre_torch.convergence.converged`). parameter_errors: scalar θ by name
    → its standard error from the sampling noise (and the targets' σ), for Gauss–Newton steps
    (:func:`~difftre_torch.curvature.parameter_errors`); empty otherwise.
    """

    updates: int
    loss_initial: dict[str, float] | None
    loss_final: dict[str, float]
    final_from: str
    n_eff_history: list[dict[str, float]]
    resamples: int
    time_s: dict[str, float] = field(compare=False)
    parameters_final: dict[str, float]
    parameters_initial: dict[str, float]
    state_points: dict[str, dict[str, Any]]
    refined_potential: str
    selected: dict[str, Any]
    figures: list[str]
    tables: list[str]
    blow_ups: list[str]
    config: dict[str, Any]
    stopped: str = ""
    parameter_errors: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A plain dict of the fields, in field order (what ``summary.json`` holds)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        """The summary of ``to_json()``'s dict or of a loaded ``summary.json``; every key required."""
        _check_keys(cls, data)
        return cls(**{f.name: copy.deepcopy(data[f.name]) for f in fields(cls) if f.name in data})
