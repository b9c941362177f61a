"""A model's ensemble averages against experiment: sample, average with block errors, score.

What a user asks first ("how far is my MLIP's G(r) from the measured one?"), for any material and
any registered observable (:mod:`difftre_torch.observables.registry`): the same targets a
refinement would fit are evaluated as plain frame means of a fresh sample, so the comparison runs
through exactly the Q range, window and weighting the experiment's file states.

Agreement measures (x: bins of one target; o: observed = experiment, c: calculated = model):

* R_w = sqrt( Σ w (o − c)² / Σ w o² ) with w = 1/σ_o² (the weighted residual of the PDF
  community, Egami & Billinge, *Underneath the Bragg Peaks*, 2nd ed., Eq. 5.19; PDFgui reports it
  with these weights); with no σ, w = 1;
* χ²/bin = mean( (o − c)² / (σ_o² + σ_c²) ), σ_c the model's own statistical error (block
  standard error of the frame mean), so sampling noise is not counted as disagreement; over the
  bins where σ_o² + σ_c² > 0 (a bin that never fluctuates and states no error, such as g = 0
  inside the closest approach, carries no information on the scale of a χ²).

Block errors: each replica's frames are cut into ``n_blocks`` contiguous blocks (leading frames
that do not fill a block are dropped); σ of the mean = std(block means)/sqrt(M) over all M blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from difftre_torch import statistics
from difftre_torch.experiment.target import Target
from difftre_torch.observables.registry import static_observables
from difftre_torch.sampling.base import RawSamples


def r_weighted(observed, calculated, sigma=None) -> float:
    """R_w = sqrt(Σ w (o − c)² / Σ w o²), w = 1/σ² (or 1), dimensionless."""
    o, c = np.asarray(observed, dtype=np.float64), np.asarray(calculated, dtype=np.float64)
    w = np.ones_like(o) if sigma is None else 1.0 / np.asarray(sigma, dtype=np.float64) ** 2
    return float(np.sqrt(np.sum(w * (o - c) ** 2) / np.sum(w * o**2)))


def chi2_per_bin(observed, calculated, sigma_observed=None, sigma_calculated=None) -> float:
    """mean((o − c)² / (σ_o² + σ_c²)) over bins with σ_o² + σ_c² > 0 (a bin that never
    fluctuates and states no error, e.g. g = 0 at contact, is left out); σ's of ``None`` count
    as 0; both ``None``: the mean squared error. :func:`difftre_torch.statistics.chi2_per_bin`."""
    o = torch.as_tensor(np.asarray(observed, dtype=np.float64))
    c = torch.as_tensor(np.asarray(calculated, dtype=np.float64))
    if sigma_observed is None and sigma_calculated is None:
        return float(((o - c) ** 2).mean())
    zero = torch.zeros_like(o)
    s_o, s_c = (zero if s is None else torch.as_tensor(np.asarray(s, dtype=np.float64))
                for s in (sigma_observed, sigma_calculated))
    return statistics.chi2_per_bin(o, s_o, c, s_c)[0]


def block_mean_sem(values: torch.Tensor, replica: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over frames and its block standard error. values: [S, ...]; replica: [S] ids.

    Each replica's frames (in time order) form ``n_blocks`` contiguous blocks (fewer if it has
    fewer frames); σ = std(block means, ddof=1)/sqrt(M) over all M blocks. One block: σ = NaN."""
    blocks = []
    for r in torch.unique(replica):
        v = values[replica == r]
        blocks.append(statistics.block_means(v, min(n_blocks, v.shape[0])))
    b = torch.cat(blocks)
    mean = values.mean(0)
    if b.shape[0] < 2:
        return mean, torch.full_like(mean, float("nan"))
    return mean, statistics.mean_sem(b)[1]


@dataclass
class TargetComparison:
    """One target against one model sample. x [n]; experiment, sigma_experiment [n] (σ may be
    None); model, sigma_model [n]; r_w, chi2_per_bin (see module docstring)."""

    name: str
    observable: str
    x: np.ndarray | None
    experiment: np.ndarray
    sigma_experiment: np.ndarray | None
    model: np.ndarray
    sigma_model: np.ndarray
    r_w: float
    chi2_per_bin: float

    def to_json(self) -> dict:
        as_list = lambda a: None if a is None else np.asarray(a, dtype=float).tolist()
        return {"observable": self.observable, "x": as_list(self.x), "experiment": as_list(self.experiment),
                "sigma_experiment": as_list(self.sigma_experiment), "model": as_list(self.model),
                "sigma_model": as_list(self.sigma_model), "r_w": self.r_w,
                "chi2_per_bin": self.chi2_per_bin}


@dataclass
class Comparison:
    """Every target of one state point against one sample; ``stats`` from the sampler."""

    state_point: str
    frames: int
    targets: dict[str, TargetComparison] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"state_point": self.state_point, "frames": self.frames, "stats": self.stats,
                "targets": {k: v.to_json() for k, v in self.targets.items()}}


def compare_samples(samples: RawSamples, numbers: torch.Tensor, targets: Sequence[Target], *,
                    n_blocks: int = 10, chunk_size: int = 32) -> Comparison:
    """Frame means of ``targets``' (θ-independent) observables over ``samples`` against the
    targets' values: :class:`Comparison`. numbers: [N] atomic numbers."""
    positions, cells = samples.positions, samples.cells
    values = static_observables(positions, cells, numbers.to(positions.device), list(targets), chunk_size)
    out = Comparison(samples.state_point.name, int(positions.shape[0]), stats=dict(samples.stats))
    for t in targets:
        if t.name not in values:
            raise ValueError(f"Target {t.name!r}: observable {t.observable!r} depends on θ; "
                             "compare_samples takes structural observables only")
        mean, sem = block_mean_sem(values[t.name].detach().cpu().double(), samples.replica.cpu(), n_blocks)
        out.targets[t.name] = _target_comparison(t, mean, sem)
    return out


class BlockAccumulator:
    """Frame mean and block means of one replica's time series, fed in chunks: the same numbers
    as :func:`block_mean_sem` on the whole series (its first F mod M frames are left out of the
    blocks, not of the mean), holding one chunk at a time. frames: F, known in advance."""

    def __init__(self, frames: int, n_blocks: int) -> None:
        if frames < 1:
            raise ValueError("BlockAccumulator: no frames")
        self.frames, self.n_blocks = frames, min(n_blocks, frames)
        self.size = frames // self.n_blocks
        self.skip = frames - self.size * self.n_blocks
        self.seen = 0
        self.total: torch.Tensor | None = None
        self.block_sums: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        """values: [C, ...] of the next C frames, in time order (float64 on the CPU)."""
        c = values.shape[0]
        if self.seen + c > self.frames:
            raise ValueError(f"BlockAccumulator: more than the {self.frames} frames announced")
        if self.total is None:
            self.total = torch.zeros(values.shape[1:], dtype=torch.float64)
            self.block_sums = torch.zeros((self.n_blocks, *values.shape[1:]), dtype=torch.float64)
        self.total += values.sum(0)
        index = torch.arange(self.seen, self.seen + c)
        inside = index >= self.skip
        block = (index[inside] - self.skip) // self.size
        self.block_sums.index_add_(0, block, values[inside])
        self.seen += c

    def block_means(self) -> torch.Tensor:
        if self.seen != self.frames:
            raise ValueError(f"BlockAccumulator: {self.seen} of the {self.frames} frames announced were added")
        return self.block_sums / self.size


def stream_mean_sem(accumulators: Sequence[BlockAccumulator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over every frame of every replica and σ = std(block means, ddof=1)/sqrt(M) over all
    M blocks (NaN with one block), as :func:`block_mean_sem`."""
    total = sum(a.total for a in accumulators)
    mean = total / sum(a.frames for a in accumulators)
    blocks = torch.cat([a.block_means() for a in accumulators])
    if blocks.shape[0] < 2:
        return mean, torch.full_like(mean, float("nan"))
    return mean, statistics.mean_sem(blocks)[1]


def compare_stream(chunks: Iterable[tuple[int, torch.Tensor, torch.Tensor]], frames_per_replica: Sequence[int],
                   numbers: torch.Tensor, targets: Sequence[Target], state_point: str, *, n_blocks: int = 10,
                   stats: dict | None = None) -> Comparison:
    """:func:`compare_samples` of frames that arrive in chunks (replica k, positions [C, N, 3] Å,
    cells [C, 3, 3] Å rows), each replica's chunks in time order and ``frames_per_replica[k]``
    frames in all: memory holds one chunk and the block sums."""
    targets = list(targets)
    acc = {t.name: [BlockAccumulator(f, n_blocks) for f in frames_per_replica] for t in targets}
    for replica, positions, cells in chunks:
        values = static_observables(positions, cells, numbers.to(positions.device), targets, positions.shape[0])
        for t in targets:
            if t.name not in values:
                raise ValueError(f"Target {t.name!r}: observable {t.observable!r} depends on θ; "
                                 "a comparison of frames takes structural observables only")
            acc[t.name][replica].add(values[t.name].detach().cpu().double())
    out = Comparison(state_point, int(sum(frames_per_replica)), stats=dict(stats or {}))
    for t in targets:
        mean, sem = stream_mean_sem(acc[t.name])
        out.targets[t.name] = _target_comparison(t, mean, sem)
    return out


def _target_comparison(t: Target, mean: torch.Tensor, sem: torch.Tensor) -> TargetComparison:
    exp = t.values.numpy()
    sig = None if t.sigma is None else t.sigma.numpy()
    model = mean.numpy().reshape(exp.shape)
    sigma_model = sem.numpy().reshape(exp.shape)
    return TargetComparison(
        name=t.name, observable=t.observable, x=None if t.x is None else t.x.numpy(),
        experiment=exp, sigma_experiment=sig, model=model, sigma_model=sigma_model,
        r_w=r_weighted(exp, model, sig), chi2_per_bin=chi2_per_bin(exp, model, sig, np.nan_to_num(sigma_model)))


def sample_and_compare(potential, sampler, numbers: torch.Tensor, targets: Sequence[Target], *,
                       n_blocks: int = 10) -> dict[str, Comparison]:
    """One round of ``sampler`` (AseSampler or BatchedSampler) with ``potential``, each state
    point compared with its targets (a target without ``state_point`` goes to every point)."""
    out = {}
    for samples in sampler.sample(potential):
        name = samples.state_point.name
        mine = [t for t in targets if t.state_point in (None, name)]
        out[name] = compare_samples(samples, numbers, mine, n_blocks=n_blocks)
    return out
