"""DiffTReTrainer: the loop sample → cache → reweighted optimiser steps → resample when stale.

One update (Thaler & Zavadlav, Nat. Commun. 12, 6884 (2021), doi:10.1038/s41467-021-27241-4):

1. if there is no snapshot store yet, sample every state point with the current potential (θ̃)
   and cache U_θ̃(S_i) and the θ-independent observables (:func:`~difftre_torch.objective.fill_store`);
   the trajectories may come from a ``sampling_potential`` (e.g. a compiled copy,
   :class:`~difftre_torch.potentials.compiled.CompiledSampling`) that is the same function at θ̃,
   but U_θ̃ always comes from the trainable potential, so the reweighting stays exact;
2. reweight to the current θ and take the chunked gradient of the loss
   (:func:`~difftre_torch.gradient.difftre_gradient`); if N_eff/N < ``resample_ratio`` at any
   state point, sample again at θ and recompute (the step is never taken on stale weights).
   Each state point's trajectories go into a :class:`~difftre_torch.sampling.pool.SnapshotPool`
   that keeps the last ``pool_size`` of them, reweighted together by MBAR (N: one trajectory's
   snapshots); with ``pool_size`` 1 it holds the last trajectory only;
3. add λ · ∇L_FM on a minibatch of labelled reference frames (force matching);
4. step: Adam (clipped, with its learning-rate schedule, optionally a line search on the
   reweighted loss) or a Levenberg–Marquardt step from the reweighting Jacobian
   (:mod:`difftre_torch.curvature`); the loss's jackknife noise is recorded and the fit stops
   early when the stopping rule holds (:mod:`difftre_torch.convergence`);
5. hand the update's record to the callbacks (:mod:`difftre_torch.callbacks`; by default
   TensorBoard, target figures, ``train.log``, the tqdm bar and the checkpoint, written
   atomically).

The trainer owns no physics: observables live in :mod:`difftre_torch.observables`, the loss in
:mod:`difftre_torch.objective` / :mod:`difftre_torch.loss`, the gradient in
:mod:`difftre_torch.gradient`, sampling in :mod:`difftre_torch.sampling`.

A checkpoint (``<out_dir>/checkpoint.pt``) holds the parameters, optimiser, scheduler, RNG
states (torch, NumPy, Python, the minibatch generator, every replica's integrator), the
snapshot stores, the history (each :class:`~difftre_torch.records.UpdateRecord` as its
``to_json()`` dict) and the update counter; ``fit(resume=True)`` continues exactly
(bit-identical parameters on CPU). At the end the refined potential, the final observables
against the targets (PNG and CSV, from a fresh sample with the refined model) and
``summary.json`` are written, each atomically.

On several ranks (``ranks``, :mod:`difftre_torch.distributed`) each rank samples its share of the
replicas into its own stores; the weights, averages, loss, N_eff, the resampling decision and the
gradient are global, so every rank takes the same step. Rank 0 writes the logs, figures, the
refined model and ``checkpoint.pt`` (parameters, optimiser, history: the shared state); every
rank writes ``ranks/rank<r>.update<u>.pt`` (its sampler, stores and random states) first, and
``checkpoint.pt`` names the update whose rank files are complete, so a resume with the same
number of ranks continues exactly.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms, units

from difftre_torch.callbacks import Callback, CheckpointCallback, default_callbacks
from difftre_torch.checkpoint import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temp_files,
    run_lock,
)
from difftre_torch.convergence import block_labels, converged, jackknife_loss_error, jackknife_replicates
from difftre_torch.curvature import (LevenbergMarquardt, Trial, flat, parameter_errors, residual_vector,
                                     snapshot_jacobians, target_residuals, unflat)
from difftre_torch.distributed import SINGLE, Ranks, replica_share
from difftre_torch.experiment.target import Target
from difftre_torch.force_matching import ReferenceFrames, force_matching_gradient, sample_minibatch
from difftre_torch.gradient import difftre_gradient, forward_outputs, reweight
from difftre_torch.monitor import history_figure, save_figure, scalar_parameters, target_figure
from difftre_torch.objective import (assign_targets, fill_store, make_chunk_fn, make_loss_fn, reference_energies,
                                     reweighted_predictions, theta_dependent)
from difftre_torch.observables.thermo import lattice_lengths, pressure
from difftre_torch.pair_reuse import DEFAULT_LIMIT_MB, chunk_calls, store_pairs
from difftre_torch.potentials.ase_calculator import potential_device_dtype
from difftre_torch.potentials.base import Potential, parameters_at
from difftre_torch.potentials.io import save_potential
from difftre_torch.records import RunSummary, UpdateRecord
from difftre_torch.reweighting import boltzmann_weights, effective_sample_size, reweighted_mean
from difftre_torch.sampling.base import Sampler, SamplerConfig, StatePoint
from difftre_torch.sampling.pool import RETENTION_RULES, SnapshotPool
from difftre_torch.sampling.sampler import AseSampler
from difftre_torch.sampling.store import SnapshotStore

CHECKPOINT_FORMAT = 1
OPTIMIZERS = ("adam", "levenberg_marquardt")


@dataclass
class TrainerConfig:
    """Optimisation settings (each field's meaning and unit in its ``metadata["doc"]``).

    tensorboard, figure_every, progress configure the default callbacks
    (:func:`~difftre_torch.callbacks.default_callbacks`). select: "last" is θ after the last
    step (that step's effect is never itself evaluated); "best" is the θ at which the lowest
    loss was evaluated among the updates whose N_eff/N ≥ ``select_min_n_eff_ratio`` at every
    state point (estimates close to a fresh sample's), "last" if no update qualifies.
    """

    updates: int = field(default=30, metadata={"doc": "optimiser steps in total (0: no refinement; a job "
                                                      "then only compares and evaluates the base model)"})
    learning_rate: float = field(default=1e-3, metadata={"doc": "Adam's step size (units of θ)"})
    adam_betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata={"doc": "Adam's (β1, β2); a small β1 damps the overshoot of momentum "
                                                "when the gradient shrinks by orders of magnitude"})
    lr_schedule: str = field(default="constant", metadata={"doc": "constant, exponential (× lr_decay per update) "
                                                                  "or cosine (to lr_min_factor · learning_rate)"})
    lr_decay: float = field(default=0.95, metadata={"doc": "exponential schedule: factor per update"})
    lr_min_factor: float = field(default=0.1, metadata={"doc": "cosine schedule: final rate / learning_rate"})
    grad_clip_norm: float | None = field(default=None, metadata={"doc": "adam: clip the total gradient norm (null: never)"})
    resample_ratio: float = field(default=0.9, metadata={"doc": "sample again when N_eff/N falls below it, in (0, 1]"})
    chunk_size: int = field(default=64, metadata={"doc": "snapshots per chunk of the gradient (bounds memory)"})
    pair_cache_mb: float = field(default=DEFAULT_LIMIT_MB, metadata={
        "doc": "MiB per state point for the snapshots' pair lists, searched once per sample and reused by "
               "every update (14 bytes per pair; 0: search in every pass)"})
    force_matching_weight: float = field(default=0.0, metadata={"doc": "λ of L_FM (eV⁻² Å²: L_FM is an MSE in "
                                                                       "eV²/Å²); 0: no force matching"})
    fm_energy_weight: float = field(default=1.0, metadata={"doc": "w_E, the energy term's weight inside L_FM"})
    fm_force_weight: float = field(default=1.0, metadata={"doc": "w_F, the force term's weight inside L_FM"})
    fm_batch_frames: int = field(default=16, metadata={"doc": "labelled frames per update in L_FM"})
    figure_every: int = field(default=5, metadata={"doc": "target figures to TensorBoard every so many updates"})
    tensorboard: bool = field(default=True, metadata={"doc": "write TensorBoard events"})
    progress: bool = field(default=True, metadata={"doc": "a tqdm bar of the updates (else plain log lines)"})
    final_sample: bool = field(default=True, metadata={"doc": "sample once more with the refined model for the "
                                                              "final comparison (difftre refine: off, its "
                                                              "comparison step samples)"})
    seed: int = field(default=0, metadata={"doc": "seed of the force-matching minibatch draws"})
    select: str = field(default="last", metadata={"doc": "the refined θ: last (after the last step) or best (the "
                                                         "lowest loss evaluated with N_eff/N ≥ select_min_n_eff_ratio)"})
    select_min_n_eff_ratio: float = field(default=0.9, metadata={"doc": "select: best: the N_eff/N an update "
                                                                         "needs to count, in (0, 1]"})
    optimizer: str = field(default="adam", metadata={
        "doc": "adam (first-order steps, learning_rate and its schedule) or levenberg_marquardt (damped "
               "Gauss-Newton steps from the reweighting Jacobian; for models with few parameters)"})
    lm_damping: float = field(default=1e-3, metadata={"doc": "levenberg_marquardt: the first damping mu "
                                                             "(then /3 after an accepted step, raised after a "
                                                             "rejected try)"})
    lm_min_n_eff_ratio: float = field(default=0.1, metadata={
        "doc": "levenberg_marquardt: the trust region; a step whose N_eff/N at the new parameters falls below "
               "it leaves what the samples cover and is shortened, in (0, 1] (N: one trajectory's snapshots)"})
    lm_max_tries: int = field(default=12, metadata={"doc": "levenberg_marquardt: damped tries per update"})
    lm_max_parameters: int = field(default=2000, metadata={
        "doc": "levenberg_marquardt: refuse models with more trainable entries (the Jacobian is "
               "snapshots x parameters)"})
    line_search: bool = field(default=False, metadata={
        "doc": "adam: scale each step by the factor (1/4 ... line_search_max_scale, powers of 2) with the lowest "
               "reweighted loss inside the trust region lm_min_n_eff_ratio (any number of parameters)"})
    line_search_max_scale: float = field(default=8.0, metadata={"doc": "line_search: the largest factor tried, >= 1"})
    pool_size: int = field(default=1, metadata={
        "doc": "K: trajectories kept per state point and reweighted together (MBAR); 1: only the last "
               "one (single-trajectory DiffTRe)"})
    pool_retention: str = field(default="recent", metadata={
        "doc": "recent (keep the pool_size most recent) or share (also drop a trajectory whose share of "
               "the pooled weight falls below pool_min_share)"})
    pool_min_share: float = field(default=0.05, metadata={"doc": "pool_retention: share: the smallest share of "
                                                                 "the pooled weight a kept trajectory has"})
    stop_patience: int = field(default=0, metadata={
        "doc": "stop once this many consecutive updates changed the target loss (and predicted a decrease) "
               "within stop_noise_factor x its sampling noise; 0: run all updates"})
    stop_noise_factor: float = field(default=1.0, metadata={"doc": "the stopping rule's multiple of the "
                                                                    "loss's standard error"})
    noise_blocks: int = field(default=4, metadata={"doc": "blocks per replica and trajectory in the jackknife "
                                                          "of the loss's noise"})

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "exponential", "cosine"):
            raise ValueError(f"TrainerConfig.lr_schedule: expected 'constant', 'exponential' or "
                             f"'cosine', got {self.lr_schedule!r}")
        if self.select not in ("last", "best"):
            raise ValueError(f"TrainerConfig.select: expected 'last' or 'best', got {self.select!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainerConfig.optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.pool_retention not in RETENTION_RULES:
            raise ValueError(f"TrainerConfig.pool_retention: expected one of {RETENTION_RULES}, "
                             f"got {self.pool_retention!r}")
        checks = (("updates", self.updates >= 0, ">= 0"), ("chunk_size", self.chunk_size >= 1, ">= 1"),
                  ("pair_cache_mb", self.pair_cache_mb >= 0, ">= 0"),
                  ("learning_rate", self.learning_rate > 0, "> 0"),
                  ("resample_ratio", 0.0 < self.resample_ratio <= 1.0, "in (0, 1]"),
                  ("force_matching_weight", self.force_matching_weight >= 0, ">= 0"),
                  ("fm_batch_frames", self.fm_batch_frames >= 1, ">= 1"),
                  ("figure_every", self.figure_every >= 1, ">= 1"),
                  ("select_min_n_eff_ratio", 0.0 < self.select_min_n_eff_ratio <= 1.0, "in (0, 1]"),
                  ("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1]"),
                  ("lr_min_factor", 0 <= self.lr_min_factor <= 1, "in [0, 1]"),
                  ("grad_clip_norm", self.grad_clip_norm is None or self.grad_clip_norm > 0, "> 0 or null"),
                  ("adam_betas", len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
                   "two numbers in [0, 1)"),
                  ("fm_energy_weight", self.fm_energy_weight >= 0, ">= 0"),
                  ("fm_force_weight", self.fm_force_weight >= 0, ">= 0"),
                  ("seed", self.seed >= 0, ">= 0"),
                  ("lm_damping", self.lm_damping > 0, "> 0"),
                  ("lm_min_n_eff_ratio", 0.0 < self.lm_min_n_eff_ratio <= 1.0, "in (0, 1]"),
                  ("lm_max_tries", self.lm_max_tries >= 1, ">= 1"),
                  ("lm_max_parameters", self.lm_max_parameters >= 1, ">= 1"),
                  ("pool_size", self.pool_size >= 1, ">= 1"),
                  ("line_search_max_scale", self.line_search_max_scale >= 1, ">= 1"),
                  ("pool_min_share", 0.0 <= self.pool_min_share < 1.0, "in [0, 1)"),
                  ("stop_patience", self.stop_patience >= 0, ">= 0"),
                  ("stop_noise_factor", self.stop_noise_factor > 0, "> 0"),
                  ("noise_blocks", self.noise_blocks >= 2, ">= 2"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"TrainerConfig.{name}: expected {expected}, got {getattr(self, name)!r}")
        if self.force_matching_weight > 0 and self.fm_energy_weight == 0 and self.fm_force_weight == 0:
            raise ValueError("fm_energy_weight and fm_force_weight are both 0, so force matching "
                             f"(force_matching_weight = {self.force_matching_weight:g}) would add nothing")


def _merge(shared: dict, own: dict) -> dict:
    """A checkpoint's shared part and a rank's part as one state (the random states merged)."""
    return {**shared, **{k: v for k, v in own.items() if k not in ("rng", "update", "rank")},
            "rng": {**shared["rng"], **own["rng"]}}


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainerConfig):
    if config.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, config.updates), eta_min=config.learning_rate * config.lr_min_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class DiffTReTrainer:
    """Refines ``potential`` so that its ensemble averages match ``targets``.

    potential: any potential of the contract (:mod:`difftre_torch.potentials.base`), an
    ``nn.Module`` whose trainable parameters (or ``params``) are θ. atoms: the simulated system
    (positions, cell rows, numbers; ASE Atoms). state_points: (T, P) points, each with replicas.
    targets: the loss terms. reference_frames: labelled frames for force matching (used when
    ``config.force_matching_weight > 0``). sampler: any
    :class:`~difftre_torch.sampling.base.Sampler` over ``state_points`` (default: an AseSampler
    with ``sampler_config``).
    sampling_potential: what the sampler integrates, an object whose ``for_sampling()`` returns
    a potential equal to ``potential`` at the current θ (e.g.
    :class:`~difftre_torch.potentials.compiled.CompiledSampling`, which returns its compiled
    model only while θ is unchanged); default: ``potential`` itself. callbacks: the outputs
    (:mod:`difftre_torch.callbacks`), called in order; default:
    :func:`~difftre_torch.callbacks.default_callbacks` of ``config``; ``trainer.callbacks`` is a
    list, append to it for more. ranks: this process's place among several
    (:mod:`difftre_torch.distributed`; default one process); a ``sampler`` given with several
    ranks must sample this rank's share only (``owned=replica_share(...)``), the default one does;
    ranks other than 0 get only the checkpoint callback by default.
    """

    def __init__(
        self,
        potential: Potential,
        atoms: Atoms,
        state_points: Sequence[StatePoint],
        targets: Sequence[Target],
        *,
        sampler_config: SamplerConfig | None = None,
        config: TrainerConfig | None = None,
        out_dir: str | Path = "outputs/difftre",
        reference_frames: ReferenceFrames | None = None,
        params: Sequence[torch.nn.Parameter] | None = None,
        sampler: Sampler | None = None,
        sampling_potential=None,
        callbacks: Sequence[Callback] | None = None,
        ranks: Ranks = SINGLE,
    ) -> None:
        if sampling_potential is not None and not callable(getattr(sampling_potential, "for_sampling", None)):
            raise TypeError("DiffTReTrainer: sampling_potential must have for_sampling() -> the potential to "
                            "sample with at the current parameters (e.g. CompiledSampling); a frozen "
                            "potential would sample the wrong ensemble after the first update")
        self.potential = potential
        self.sampling_potential = sampling_potential
        self.config = config or TrainerConfig()
        self.state_points = list(state_points)
        self.point_names = [s.name for s in self.state_points]
        self.targets = list(targets)
        self.grouped = assign_targets(self.targets, self.point_names)
        self.ranks = ranks
        owned = (replica_share([s.replicas for s in self.state_points], ranks.rank, ranks.world_size,
                               self.point_names) if ranks.active else None)
        self.sampler: Sampler = sampler or AseSampler(atoms, self.state_points, sampler_config or SamplerConfig(),
                                                      owned=owned)
        self.numbers = torch.as_tensor(atoms.numbers, dtype=torch.long)
        self.device, self.dtype = potential_device_dtype(potential)
        self.params = list(params) if params is not None else [
            p for p in potential.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("DiffTReTrainer: the potential has no trainable parameters")
        entries = sum(p.numel() for p in self.params)
        if self.config.optimizer == "levenberg_marquardt" and entries > self.config.lm_max_parameters:
            raise ValueError(f"TrainerConfig.optimizer: levenberg_marquardt needs at most lm_max_parameters = "
                             f"{self.config.lm_max_parameters} trainable entries, the potential has {entries}; "
                             "use adam (or raise lm_max_parameters: the Jacobian is snapshots x parameters)")
        if self.config.force_matching_weight > 0 and reference_frames is None:
            raise ValueError("DiffTReTrainer: force_matching_weight > 0 needs reference_frames")
        self.reference_frames = reference_frames
        self.out_dir = Path(out_dir)
        self.optimizer = torch.optim.Adam(self.params, lr=self.config.learning_rate,
                                          betas=tuple(self.config.adam_betas))
        self.scheduler = _scheduler(self.optimizer, self.config)
        self.fm_rng = np.random.default_rng([self.config.seed, 17])
        self.chunk_fn = make_chunk_fn(self.grouped)
        self.loss_fn = make_loss_fn(self.grouped, self.point_names, ranks)
        self.stores: list[SnapshotStore] | None = None  # per state point: the pool's merged store
        self._known: tuple[list[torch.Tensor], list[dict | None]] | None = None  # (θ, outputs at θ) after a sample
        self.pools: list[SnapshotPool] | None = None
        self.sizes: list[int] = []  # snapshots per state point over every rank, of the newest trajectory
        self.rounds_sampled = 0
        self.lm = LevenbergMarquardt(self.config.lm_damping, self.config.lm_min_n_eff_ratio, self.config.lm_max_tries)
        self.parameter_errors: dict[str, float] = {}
        self.update = 0
        self.resamples = 0
        self.history: list[UpdateRecord] = []
        self.sample_stats: dict[str, dict] = {}
        self.initial_predictions: dict[str, torch.Tensor] | None = None
        self.times = {"sample": 0.0, "update": 0.0}
        self.best: dict | None = None  # {"update", "loss", "params": [θ tensors, CPU]} (select="best")
        self.last_predictions: dict[str, torch.Tensor] | None = None  # the last update's ⟨O⟩ per target
        self.resuming = False  # fit()'s resume, for the callbacks
        if callbacks is None:
            callbacks = default_callbacks(self.config) if ranks.is_main else [CheckpointCallback()]
        self.callbacks: list[Callback] = list(callbacks)

    # ------------------------------------------------------------------ sampling and caching

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def _sample(self, fresh: bool = False) -> float:
        """Sample every state point with the current potential and add the trajectories to the
        pools (``fresh``: to new, empty pools); seconds. The stores' U_θ̃ come from
        ``self.potential`` whatever ``sampling_potential`` sampled."""
        t0 = time.perf_counter()
        source = self.sampling_potential
        raw = self.sampler.sample(self.potential if source is None else source.for_sampling())
        sampled_with = "trainable potential" if source is None else str(getattr(source, "description", source))
        stores = []
        for r in raw:
            point = r.state_point
            positions = r.positions.to(self.device, self.dtype)
            cells = r.cells.to(self.device, self.dtype)
            numbers = self.numbers.to(self.device)
            stores.append(fill_store(point.name, positions, cells, numbers, self.potential,
                                     self.grouped[point.name], temperature_K=point.temperature_K,
                                     pressure_GPa=point.pressure_GPa, replica=r.replica,
                                     chunk_size=self.config.chunk_size,
                                     pair_cache_mb=self.config.pair_cache_mb))
            p = torch.cat([pressure(call, positions[sl], cells[sl], numbers, point.temperature_K)
                           for sl, call in chunk_calls(self.potential, positions.shape[0], self.config.chunk_size,
                                                       stores[-1].pair_cache, positions.dtype)])
            self.sample_stats[point.name] = self._round_stats(p, r.stats, sampled_with)
        cfg = self.config
        if self.pools is None or fresh:
            self.pools = [SnapshotPool(cfg.pool_size, cfg.pool_retention, cfg.pool_min_share, self.ranks)
                          for _ in stores]
        theta = [p.detach().cpu().clone() for p in self.params]
        for pool, store in zip(self.pools, stores):
            pool.add(store, theta, self._energies_at, self.rounds_sampled)
        self.rounds_sampled += 1
        self.stores = [pool.merged for pool in self.pools]
        self.sizes = [self.sample_stats[s.name]["snapshots"] for s in stores]
        known = [{"energy": pool.newest_energies()} if not theta_dependent(self.grouped, store.name) else None
                 for pool, store in zip(self.pools, self.stores)]
        self._known = ([p.detach().clone() for p in self.params], known)
        return time.perf_counter() - t0

    def _known_outputs(self) -> list[dict | None] | None:
        """The stores' outputs at θ known since the last sample (the energies at the parameters
        it sampled with, where no target depends on θ), if θ has not moved since; else None."""
        if self._known is None:
            return None
        theta, known = self._known
        if len(theta) != len(self.params) or not all(torch.equal(t, p.detach()) for t, p in zip(theta, self.params)):
            self._known = None
            return None
        return known

    def _forward(self) -> list[dict[str, torch.Tensor]]:
        """Step 1 of the gradient at the current θ over the current stores (no graph)."""
        return forward_outputs(self.potential, self.stores, chunk_fn=self.chunk_fn, chunk_size=self.config.chunk_size,
                               pair_cache_mb=self.config.pair_cache_mb, known=self._known_outputs())

    def _n_eff(self, forward: Sequence[dict[str, torch.Tensor]]) -> list[float]:
        """N_eff per state point of the stores reweighted to θ from step 1's energies."""
        return [float(effective_sample_size(boltzmann_weights(out["energy"], store.reference_energies,
                                                              store.kT_eV, self.ranks), self.ranks))
                for store, out in zip(self.stores, forward)]

    def _energies_at(self, store: SnapshotStore, theta: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """U(S_j) [S] eV of a store's snapshots at parameters ``theta`` (None: the current ones);
        θ is restored bit for bit afterwards (the pools' energy matrix)."""
        with parameters_at(self.params, theta):
            return reference_energies(self.potential, store.positions, store.cells, store.numbers,
                                      self.config.chunk_size,
                                      store_pairs(self.potential, store, self.config.pair_cache_mb))

    def _round_stats(self, pressures: torch.Tensor, stats: dict, sampled_with: str) -> dict:
        """A state point's sampling statistics over every rank: the mean virial pressure (GPa),
        the snapshot-weighted mean kinetic temperature (K), discarded frames and snapshots."""
        n = int(pressures.shape[0])
        temperature = float(stats.get("kinetic_temperature_K", math.nan))
        discarded = int(stats.get("discarded_frames", 0))
        if not self.ranks.active:
            mean_p = float(pressures.mean())
        else:
            total = self.ranks.sum(torch.tensor([float(pressures.sum()), n, temperature * n, discarded],
                                                dtype=torch.float64), "the sampling statistics")
            mean_p, n, temperature, discarded = (float(total[0] / total[1]), int(total[1]),
                                                 float(total[2] / total[1]), int(total[3]))
        return {"pressure_GPa": mean_p / units.GPa, "kinetic_temperature_K": temperature,
                "discarded_frames": discarded, "snapshots": n, "sampled_with": sampled_with}

    def _stale(self, n_eff: Sequence[float]) -> bool:
        return any(n / size < self.config.resample_ratio for n, size in zip(n_eff, self.sizes))

    def _state_values(self, weights: Sequence[torch.Tensor]) -> dict[str, dict[str, float]]:
        out = {}
        for store, w in zip(self.stores, weights):
            lengths = reweighted_mean(w.to(store.cells), lattice_lengths(store.cells), self.ranks)
            volume = reweighted_mean(w.to(store.cells), torch.linalg.det(store.cells).abs(), self.ranks)
            out[store.name] = {"a_A": float(lengths[0]), "b_A": float(lengths[1]),
                               "c_A": float(lengths[2]), "volume_A3": float(volume),
                               "pressure_GPa": self.sample_stats[store.name]["pressure_GPa"]}
        return out

    # ------------------------------------------------------------------ one update

    def step(self) -> UpdateRecord:
        """One optimiser update (sampling first if needed); returns its record (also appended to
        ``history``)."""
        cfg = self.config
        t0 = time.perf_counter()
        sample_s = 0.0
        resampled = False
        if self.stores is None:
            sample_s += self._sample()
        forward = self._forward()
        if self._stale(self._n_eff(forward)):
            sample_s += self._sample()
            resampled = True
            self.resamples += 1
            forward = self._forward()
        result = difftre_gradient(self.potential, self.stores, self.loss_fn, self.params,
                                  chunk_fn=self.chunk_fn, chunk_size=cfg.chunk_size, ranks=self.ranks,
                                  pair_cache_mb=cfg.pair_cache_mb, forward=forward)
        values = [{**s.observables, **v} for s, v in zip(self.stores, result.values)]
        labels = [block_labels(store, pool.segments, cfg.noise_blocks, point.replicas)
                  for store, pool, point in zip(self.stores, self.pools, self.state_points)]
        noise = {"target_loss": float(result.loss),
                 "loss_se": jackknife_loss_error(self.loss_fn, result.weights, values, labels, self.ranks)}
        predictions = reweighted_predictions(result.weights, values, self.grouped, self.point_names, self.ranks)
        if self.initial_predictions is None:
            self.initial_predictions = {k: v.detach().cpu().double() for k, v in predictions.items()}
        grads = [g.detach().clone() for g in result.grads]
        loss = {"total": float(result.loss)}
        loss.update({name: float(v) for name, v in result.parts.items()})
        lm = cfg.optimizer == "levenberg_marquardt"
        fm = batch = None
        if cfg.force_matching_weight > 0:
            batch = sample_minibatch(self.reference_frames, cfg.fm_batch_frames, self.fm_rng)
            fm = force_matching_gradient(self.potential, self.reference_frames, batch, self.params,
                                         energy_weight=cfg.fm_energy_weight,
                                         force_weight=cfg.fm_force_weight,
                                         device=self.device, dtype=self.dtype, ranks=self.ranks, curvature=lm)
            for g, fg in zip(grads, fm.grads):
                g.add_(cfg.force_matching_weight * fg)
            loss["force_matching"] = cfg.force_matching_weight * float(fm.loss)
            loss["fm_energy_mse"] = float(fm.parts["energy_mse"])
            loss["fm_force_mse"] = float(fm.parts["force_mse"])
            loss["total"] += loss["force_matching"]
        grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"update {self.update + 1}: the gradient is not finite")
        if cfg.grad_clip_norm is not None and grad_norm > cfg.grad_clip_norm and not lm:  # LM: g must match H
            grads = [g * (cfg.grad_clip_norm / grad_norm) for g in grads]
        self._remember_if_best(loss["total"], [n / size for size, n in zip(self.sizes, result.n_eff)])
        lr = float(self.optimizer.param_groups[0]["lr"])
        theta = scalar_parameters(self.potential) if isinstance(self.potential, torch.nn.Module) else {}
        if lm:
            step = self._lm_step(result, values, labels, grads, fm, batch, loss["total"])
        else:
            before = [p.detach().clone() for p in self.params]
            for p, g in zip(self.params, grads):
                p.grad = g.to(p)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            scale = self._line_search(before, fm, batch, loss["total"]) if cfg.line_search else 1.0
            step = {"norm": float(torch.sqrt(sum(((p.detach() - b).double() ** 2).sum()
                                                 for p, b in zip(self.params, before)))), "scale": scale}
        pool_info = self._pool_info(result)
        self.update += 1
        update_s = time.perf_counter() - t0 - sample_s
        self.times["sample"] += sample_s
        self.times["update"] += update_s
        record = UpdateRecord(
            update=self.update,
            loss=loss,
            n_eff={s.name: n for s, n in zip(self.stores, result.n_eff)},
            n_eff_ratio={s.name: n / size for s, size, n in zip(self.stores, self.sizes, result.n_eff)},
            resampled=resampled,
            grad_norm=grad_norm,
            lr=lr,
            time={"sample": sample_s, "update": update_s},
            state=self._state_values(result.weights),
            parameters=theta,  # θ at which this record's loss was evaluated (before the step)
            step=step,
            noise=noise,
            pool=pool_info,
        )
        self.history.append(record)
        if converged(self.history, cfg.stop_patience, cfg.stop_noise_factor):
            record.noise["converged"] = 1.0
        self.last_predictions = predictions
        return record

    def _trial(self, theta: Sequence[torch.Tensor], fm, batch) -> Trial:
        """The reweighted loss (plus λ·L_FM on this update's minibatch) and the smallest N_eff/N
        at parameters ``theta``, on the current pools; θ is restored afterwards."""
        cfg = self.config
        with parameters_at(self.params, theta):
            _, losses, n_eff = self.evaluate_targets()
            value = losses["total"]
            if fm is not None:
                value += cfg.force_matching_weight * float(force_matching_gradient(
                    self.potential, self.reference_frames, batch, self.params,
                    energy_weight=cfg.fm_energy_weight, force_weight=cfg.fm_force_weight,
                    device=self.device, dtype=self.dtype, ranks=self.ranks).loss)
        return Trial(value, min(n / size for n, size in zip(n_eff, self.sizes)))

    def _line_search(self, before: list[torch.Tensor], fm, batch, total: float) -> float:
        """Scale the optimiser's step δ = θ − θ_before by the power of 2 in [1/4, line_search_max_scale]
        whose reweighted loss is lowest among those inside the trust region (N_eff/N ≥
        lm_min_n_eff_ratio); 0 if none is below the loss at θ_before. Moves θ; returns the factor."""
        cfg = self.config
        delta = [p.detach() - b for p, b in zip(self.params, before)]
        at = {}

        def loss_at(scale: float) -> float:
            trial = self._trial([b + scale * d for b, d in zip(before, delta)], fm, batch)
            at[scale] = trial.loss if trial.n_eff_ratio >= cfg.lm_min_n_eff_ratio else math.inf
            return at[scale]

        scale = 1.0
        if loss_at(1.0) < total:
            while 2 * scale <= cfg.line_search_max_scale and loss_at(2 * scale) < at[scale]:
                scale *= 2
        else:
            while scale > 0.25 and loss_at(scale / 2) >= total:
                scale /= 2
            scale = scale / 2 if at.get(scale / 2, math.inf) < total else 0.0
        with torch.no_grad():
            for p, b, d in zip(self.params, before, delta):
                p.copy_(b + scale * d)
        return scale

    def _lm_step(self, result, values, labels, grads, fm, batch, total: float) -> dict[str, float]:
        """One Levenberg–Marquardt step (:mod:`difftre_torch.curvature`) from the update's weights:
        the Jacobian of the averages, the Gauss–Newton matrix plus λ times force matching's
        Hessian, trials reweighted on the pools (and force matching on the same minibatch); θ is
        moved by the accepted step. Also updates :attr:`parameter_errors`."""
        cfg = self.config
        jacobians = [snapshot_jacobians(self.potential, store, self.chunk_fn, self.params, cfg.chunk_size,
                                        cfg.pair_cache_mb)
                     for store in self.stores]
        residuals = target_residuals(self.grouped, self.point_names, result.weights, values, jacobians,
                                     [store.kT_eV for store in self.stores], self.ranks)
        gradient = flat(grads)
        hessian = residuals.gauss_newton()
        if fm is not None:
            hessian = hessian + cfg.force_matching_weight * fm.hessian

        def trial(delta: torch.Tensor) -> Trial:
            return self._trial([p.detach() + d for p, d in zip(self.params, unflat(delta, self.params))], fm, batch)

        report = self.lm.propose(total, gradient, hessian, trial)
        with torch.no_grad():
            for p, d in zip(self.params, unflat(report.step, self.params)):
                p.add_(d)
        replicates = jackknife_replicates(
            lambda w: residual_vector(self.grouped, self.point_names, w, values, self.ranks),
            result.weights, labels, self.ranks)
        errors = parameter_errors(residuals, hessian, replicates, self.grouped, self.point_names)
        self.parameter_errors = self._named_entries(errors)
        return report.to_json()

    def _named_entries(self, vector: torch.Tensor, limit: int = 64) -> dict[str, float]:
        """A flat [P] vector over ``params`` by parameter name (``name`` or ``name[i]``), at most ``limit``."""
        names = {id(p): n for n, p in self.potential.named_parameters()} if isinstance(
            self.potential, torch.nn.Module) else {}
        out, k = {}, 0
        for i, p in enumerate(self.params):
            name = names.get(id(p), f"param{i}")
            for j in range(p.numel()):
                if len(out) < limit:
                    out[name if p.numel() == 1 else f"{name}[{j}]"] = float(vector[k + j])
            k += p.numel()
        return out

    def _pool_info(self, result) -> dict[str, dict[str, float]]:
        """Per state point: trajectories kept, pooled snapshots, and each kept trajectory's part of
        N_eff (its share of the weight times N_eff), by the round that sampled it."""
        out = {}
        for store, pool, w, n_eff in zip(self.stores, self.pools, result.weights, result.n_eff):
            shares = pool.shares(w) if len(pool) > 1 else [1.0]
            out[store.name] = {"trajectories": float(len(pool)), "snapshots": float(pool.size),
                               **{f"n_eff_{r}": s * n_eff for r, s in zip(pool.rounds, shares)}}
        return out

    def _remember_if_best(self, loss: float, n_eff_ratios: list[float]) -> None:
        """Keep θ (as evaluated by the update now running, before its step) if its loss is the
        lowest so far among reliable estimates (``select="best"``)."""
        cfg = self.config
        if cfg.select != "best" or min(n_eff_ratios) < cfg.select_min_n_eff_ratio:
            return
        if self.best is None or loss < self.best["loss"]:
            self.best = {"update": self.update + 1, "loss": loss,
                         "params": [p.detach().cpu().clone() for p in self.params]}

    def _apply_selection(self) -> dict:
        """Set θ to the selected parameters (``select="best"``); returns what was selected."""
        if self.config.select == "best" and self.best is not None:
            with torch.no_grad():
                for p, kept in zip(self.params, self.best["params"]):
                    p.copy_(kept.to(p))
            return {"rule": "best", "update": self.best["update"], "loss": self.best["loss"],
                    "min_n_eff_ratio": self.config.select_min_n_eff_ratio}
        reason = "" if self.config.select == "last" else " (no update had N_eff/N high enough for 'best')"
        return {"rule": "last" + reason, "update": self.update, "loss": None}

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Everything a resume needs; on several ranks, the shared part only (:meth:`rank_state_dict`
        holds the rest)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "update": self.update,
            "potential": self.potential.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"fm": self.fm_rng.bit_generator.state},
            "history": [r.to_json() for r in self.history],
            "resamples": self.resamples,
            "sample_stats": self.sample_stats,
            "initial_predictions": self.initial_predictions,
            "times": self.times,
            "best": self.best,
            "lm": self.lm.state_dict(),
            "rounds_sampled": self.rounds_sampled,
            "parameter_errors": self.parameter_errors,
        }
        if self.ranks.active:
            return {**state, "world_size": self.ranks.world_size}
        return _merge(state, self.rank_state_dict())

    def rank_state_dict(self) -> dict:
        """This rank's part of a checkpoint: its sampler, stores and random states."""
        return {
            "update": self.update,
            "rank": self.ranks.rank,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "sampler": self.sampler.state_dict(),
            "stores": None,  # kept for the format; the pools hold the stores
            "pools": None if self.pools is None else [p.state_dict() for p in self.pools],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; on several ranks (shared part) together with this rank's
        file, read from ``ranks/`` beside the checkpoint."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}")
        self._known = None
        written_by = int(state.get("world_size", 1))
        if written_by != self.ranks.world_size:
            raise ValueError(f"{self.checkpoint_path}: written by a run on {written_by} rank(s), this run has "
                             f"{self.ranks.world_size}; resume with the same number of ranks (torchrun "
                             f"--nproc-per-node {written_by}, or no launcher for 1)")
        if self.ranks.active:
            path = self._rank_checkpoint(int(state["update"]))
            if not path.exists():
                raise FileNotFoundError(f"{path}: rank {self.ranks.rank}'s part of the checkpoint of update "
                                        f"{state['update']} is missing (the output folder must be one that "
                                        "every rank sees)")
            state = _merge(state, load_checkpoint(path))
        self.potential.load_state_dict(state["potential"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.fm_rng.bit_generator.state = state["rng"]["fm"]
        self.sampler.load_state_dict(state["sampler"])
        cfg = self.config
        self.stores = self.pools = None
        if state.get("pools") is not None:
            self.pools = []
            for ps in state["pools"]:
                pool = SnapshotPool(cfg.pool_size, cfg.pool_retention, cfg.pool_min_share, self.ranks)
                pool.load_state_dict(ps, self._store_from)
                self.pools.append(pool)
        elif state["stores"] is not None:  # a checkpoint from before pools: one trajectory, θ unknown
            self.pools = [SnapshotPool.of_store(self._store_from(s), self.sample_stats_of(state, s["name"]),
                                                capacity=cfg.pool_size, retention=cfg.pool_retention,
                                                min_share=cfg.pool_min_share, ranks=self.ranks)
                          for s in state["stores"]]
        if self.pools is not None:
            self.stores = [pool.merged for pool in self.pools]
        if "lm" in state:
            self.lm.load_state_dict(state["lm"])
        self.rounds_sampled = int(state.get("rounds_sampled", 0))
        self.parameter_errors = dict(state.get("parameter_errors", {}))
        self.update = int(state["update"])
        self.history = [UpdateRecord.from_json(r) for r in state["history"]]
        self.resamples = int(state["resamples"])
        self.sample_stats = dict(state["sample_stats"])
        self.initial_predictions = state["initial_predictions"]
        self.times = dict(state["times"])
        self.best = state.get("best")  # absent in checkpoints written before select="best" existed
        if self.stores is not None:
            self.sizes = [self.sample_stats[s.name]["snapshots"] for s in self.stores]

    @staticmethod
    def sample_stats_of(state: dict, name: str) -> int:
        """The global snapshot count of state point ``name``'s last sample in a checkpoint ``state``."""
        return int(state["sample_stats"][name]["snapshots"])

    def _store_from(self, s: dict) -> SnapshotStore:
        """A store from its checkpoint dict, on the potential's device and dtype."""
        s = dict(s)
        for key in ("positions", "cells", "reference_energies"):
            s[key] = s[key].to(self.device, self.dtype)
        s["numbers"] = s["numbers"].to(self.device)
        s["observables"] = {k: v.to(self.device, self.dtype) for k, v in s["observables"].items()}
        return SnapshotStore.from_state_dict(s)

    def _rank_checkpoint(self, update: int) -> Path:
        return self.out_dir / "ranks" / f"rank{self.ranks.rank}.update{update}.pt"

    def save_checkpoint(self) -> Path:
        """``checkpoint.pt``, atomically. On several ranks: every rank writes its part
        (``ranks/rank<r>.update<u>.pt``), all wait, then rank 0 writes ``checkpoint.pt``, which
        therefore only ever names an update whose rank parts are complete; a rank's parts older
        than the previous update are removed (the checkpoint names one of the last two)."""
        if not self.ranks.active:
            return atomic_torch_save(self.state_dict(), self.checkpoint_path)
        atomic_torch_save(self.rank_state_dict(), self._rank_checkpoint(self.update))
        self.ranks.barrier("writing the checkpoint")
        if self.ranks.is_main:
            atomic_torch_save(self.state_dict(), self.checkpoint_path)
        for old in self._rank_checkpoint(0).parent.glob(f"rank{self.ranks.rank}.update*.pt"):
            number = old.name[len(f"rank{self.ranks.rank}.update"):-len(".pt")]
            if number.isdigit() and int(number) < self.update - 1:
                old.unlink(missing_ok=True)
        return self.checkpoint_path

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> RunSummary:
        """Run updates until ``config.updates``; with ``resume`` continue from the checkpoint.
        Returns the summary (also written to ``summary.json``). Holds ``run.lock`` in the output
        directory meanwhile (:func:`~difftre_torch.checkpoint.run_lock`), and first removes the
        temporary files of writes that a killed run left there."""
        if not self.ranks.is_main:  # rank 0 holds the lock and tidies for all
            return self._fit(resume)
        with run_lock(self.out_dir):
            remove_stale_temp_files(self.out_dir, recursive=True)
            return self._fit(resume)

    def _fit(self, resume: bool) -> RunSummary:
        cfg = self.config
        if resume and self.checkpoint_path.exists():
            self.load_state_dict(load_checkpoint(self.checkpoint_path))
        elif self.checkpoint_path.exists() and not resume:
            raise FileExistsError(f"{self.checkpoint_path} exists: pass resume=True (--resume) to "
                                  f"continue it, or choose another output directory")
        self.resuming = resume
        started: list[Callback] = []
        try:
            for callback in self.callbacks:
                callback.on_fit_start(self)
                started.append(callback)
            while self.update < cfg.updates and not self.converged:
                record = self.step()
                for callback in self.callbacks:
                    callback.on_update_end(self, record)
            summary = self.finalize()
        except BaseException:
            for callback in started:  # release files and bars; the exception goes on
                try:
                    callback.on_fit_end(self, None)
                except Exception as exc:  # noqa: BLE001 (must not hide the original error)
                    warnings.warn(f"{type(callback).__name__}.on_fit_end failed: {exc}", RuntimeWarning)
            raise
        for callback in self.callbacks:
            callback.on_fit_end(self, summary)
        return summary

    @property
    def converged(self) -> bool:
        """Whether the stopping rule held at the last update (:func:`~difftre_torch.convergence.converged`)."""
        return bool(self.history and self.history[-1].noise.get("converged"))

    # ------------------------------------------------------------------ results

    def evaluate_targets(self) -> tuple[dict[str, torch.Tensor], dict[str, float], list[float]]:
        """⟨O_k⟩ at the current θ over the current stores; (predictions, loss parts, N_eff)."""
        rw = reweight(self.potential, self.stores, chunk_fn=self.chunk_fn, chunk_size=self.config.chunk_size,
                      pair_cache_mb=self.config.pair_cache_mb, ranks=self.ranks, known=self._known_outputs())
        with torch.no_grad():
            total, parts = self.loss_fn(rw.weights, rw.values)
        predictions = reweighted_predictions(rw.weights, rw.values, self.grouped, self.point_names, self.ranks)
        losses = {"total": float(total), **{k: float(v) for k, v in parts.items()}}
        return predictions, losses, rw.n_eff

    def finalize(self) -> RunSummary:
        """Write the refined potential, final observables vs targets (PNG, CSV) and summary.json
        (:meth:`RunSummary.to_json <difftre_torch.records.RunSummary.to_json>`); returns the summary.
        On several ranks every rank samples and evaluates, rank 0 alone writes (the other ranks'
        summaries name no files)."""
        out = self.out_dir
        selected = self._apply_selection()
        final_sample_s = 0.0
        if self.stores is None or self.config.final_sample:
            final_sample_s = self._sample(fresh=True)
        predictions, final_loss, n_eff = self.evaluate_targets()
        blow_ups = list(getattr(self.sampler, "blow_ups", []))
        if self.ranks.active:
            blow_ups = [b for part in self.ranks.gather(blow_ups, "collecting the blow-ups") for b in part]
        writes = self.ranks.is_main
        model_path = save_potential(self.potential, out / "refined_potential") if writes else ""
        figures, tables = [], []
        for t in self.targets if writes else []:
            pred = predictions[t.name].detach().cpu().double().numpy()
            init = None if self.initial_predictions is None else self.initial_predictions[t.name].numpy()
            figures.append(str(save_figure(target_figure(t, pred, init), out / f"{t.name}.png")))
            tables.append(str(self._write_table(t, pred, init)))
        if self.history and writes:
            figures.append(str(save_figure(history_figure(self.history), out / "history.png")))
        first = self.history[0].loss if self.history else None
        summary = RunSummary(
            updates=self.update,
            loss_initial=first,
            loss_final=final_loss,
            final_from="fresh sample with the refined potential" if self.config.final_sample else "reweighted store",
            n_eff_history=[r.n_eff for r in self.history],
            resamples=self.resamples,
            time_s={**{k: round(v, 3) for k, v in self.times.items()}, "final_sample": round(final_sample_s, 3)},
            parameters_final=scalar_parameters(self.potential) if isinstance(self.potential, torch.nn.Module) else {},
            parameters_initial=self.history[0].parameters if self.history else {},
            state_points={s.name: {**asdict(s), **self.sample_stats.get(s.name, {})} for s in self.state_points},
            refined_potential=str(model_path),
            selected=selected,
            figures=figures,
            tables=tables,
            blow_ups=blow_ups,
            config=asdict(self.config),
            stopped=(f"converged at update {self.update}: the target loss changed by less than "
                     f"{self.config.stop_noise_factor:g} x its sampling noise for {self.config.stop_patience} "
                     "updates" if self.converged and self.update < self.config.updates else ""),
            parameter_errors=dict(self.parameter_errors),
        )
        if writes:
            atomic_write_json(out / "summary.json", summary.to_json())
        return summary

    def _write_table(self, target: Target, prediction: np.ndarray, initial: np.ndarray | None) -> Path:
        n = target.values.shape[0]
        x = target.x.numpy() if target.x is not None else np.arange(n, dtype=float)
        sigma = target.sigma.numpy() if target.sigma is not None else np.full(n, np.nan)
        init = initial if initial is not None else np.full(n, np.nan)
        rows = ["x,target,sigma,initial,final"]
        rows += [f"{a:.6g},{b:.6g},{c:.6g},{d:.6g},{e:.6g}"
                 for a, b, c, d, e in zip(x, target.values.numpy(), sigma, init, prediction)]
        path = self.out_dir / f"{target.name}.csv"
        atomic_write_text(path, "\n".join(rows) + "\n")
        return path

