"""The force-matching regulariser: labelled reference frames (DFT-like) and the gradient of L_FM.

L_FM = w_E · mean_m[((U_θ(S_m) − E_m)/N_m)²] + w_F · mean_{m,i,α}[(F_θ − F_ref)²]
(:func:`difftre_torch.loss.energy_force_loss`), evaluated on a random minibatch of frames per
update. Frames of different systems (atom counts or species order) are grouped and evaluated
system by system, since the potential contract batches snapshots of one system; the terms are
averaged with each group weighted by its share of the minibatch. Across several ranks every
rank draws the same minibatch (same seed), evaluates its own block of it
(:func:`rank_minibatch`), weights its terms by its frames' share of the whole minibatch, and the
loss and gradient are all-reduced (SUM): the same numbers as one process evaluating it all.

Units: energies eV, forces eV/Å, positions and cells Å (rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from difftre_torch.loss import energy_force_loss
from difftre_torch.potentials.base import Potential, evaluate

if TYPE_CHECKING:
    from difftre_torch.distributed import Ranks


@dataclass
class ReferenceFrames:
    """M labelled frames, grouped by system.

    groups: list of (numbers [N] int64, positions [M_g, N, 3] Å, cells [M_g, 3, 3] Å,
    energies [M_g] eV, forces [M_g, N, 3] eV/Å) as float64 CPU tensors.
    source: where the frames were read from (for messages).
    """

    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    source: str = ""

    def __len__(self) -> int:
        return sum(int(g[1].shape[0]) for g in self.groups)

    @classmethod
    def from_atoms(cls, frames: Sequence, source: str = "") -> "ReferenceFrames":
        """From ASE Atoms carrying energy and forces (e.g. read from extxyz)."""
        buckets: dict[tuple[int, ...], list] = {}
        for k, atoms in enumerate(frames):
            try:
                energy = atoms.get_potential_energy()
                forces = atoms.get_forces(apply_constraint=False)
            except Exception as exc:  # noqa: BLE001 - ASE raises several types here
                raise ValueError(f"{source or 'reference frames'}: frame {k} has no energy/forces "
                                 f"labels ({exc}); expected a labelled file such as extxyz") from None
            if not atoms.pbc.all():
                raise ValueError(f"{source}: frame {k} is not periodic in 3D (pbc={atoms.pbc.tolist()})")
            key = tuple(int(z) for z in atoms.numbers)
            buckets.setdefault(key, []).append(
                (atoms.get_positions(), atoms.cell.array.copy(), float(energy), forces))
        if not buckets:
            raise ValueError(f"{source or 'reference frames'}: no frames")
        groups = []
        for key, items in buckets.items():
            groups.append((
                torch.tensor(key, dtype=torch.long),
                torch.tensor(np.stack([i[0] for i in items]), dtype=torch.float64),
                torch.tensor(np.stack([i[1] for i in items]), dtype=torch.float64),
                torch.tensor([i[2] for i in items], dtype=torch.float64),
                torch.tensor(np.stack([i[3] for i in items]), dtype=torch.float64),
            ))
        return cls(groups, source)

    @classmethod
    def read(cls, path: str | Path, index: str = ":") -> "ReferenceFrames":
        """Read labelled frames with ``ase.io.read`` (extxyz or any format ASE reads with labels)."""
        from ase.io import read

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"reference frames: {path} does not exist")
        return cls.from_atoms(read(path, index=index), source=str(path))


@dataclass
class ForceMatchingResult:
    """loss: scalar L_FM (detached); parts: energy_mse (eV²/atom²), force_mse (eV²/Å²);
    grads: dL_FM/dθ per parameter; hessian: ∂²L_FM/∂θ² [P, P] float64 over the flattened
    parameters (with ``curvature=True``, else None)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    grads: tuple[torch.Tensor, ...]
    hessian: torch.Tensor | None = None


def sample_minibatch(frames: ReferenceFrames, size: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(group index, frame indices) of ``size`` frames drawn without replacement."""
    sizes = [int(g[1].shape[0]) for g in frames.groups]
    flat = rng.choice(sum(sizes), size=min(size, sum(sizes)), replace=False)
    offsets = np.cumsum([0] + sizes)
    out = []
    for g in range(len(sizes)):
        pick = np.sort(flat[(flat >= offsets[g]) & (flat < offsets[g + 1])] - offsets[g])
        if len(pick):
            out.append((g, pick))
    return out


def rank_minibatch(batch: list[tuple[int, np.ndarray]], rank: int, world_size: int) -> list[tuple[int, np.ndarray]]:
    """This rank's block of ``batch`` (the frames in batch order, split into ``world_size``
    consecutive blocks, the first ranks one frame more); empty when there are more ranks than frames."""
    flat = [(g, int(i)) for g, idx in batch for i in idx]
    base, extra = divmod(len(flat), world_size)
    start = rank * base + min(rank, extra)
    mine = flat[start:start + base + (1 if rank < extra else 0)]
    out: list[tuple[int, np.ndarray]] = []
    for g, i in mine:
        if out and out[-1][0] == g:
            out[-1] = (g, np.append(out[-1][1], i))
        else:
            out.append((g, np.array([i])))
    return out


def force_matching_gradient(potential: Potential, frames: ReferenceFrames,
                            batch: list[tuple[int, np.ndarray]], params: Sequence[torch.nn.Parameter],
                            *, energy_weight: float = 1.0, force_weight: float = 1.0,
                            device: torch.device | str = "cpu",
                            dtype: torch.dtype = torch.float64,
                            ranks: Ranks | None = None, curvature: bool = False) -> ForceMatchingResult:
    """L_FM on the minibatch and its gradient in θ (double backward through F = −∂U/∂x).

    ranks: several processes; ``batch`` is then the whole minibatch (the same on every rank),
    each rank evaluates :func:`rank_minibatch` of it and the result is all-reduced.
    curvature: also the exact Hessian ∂²L_FM/∂θ² (one more backward per parameter entry through
    the gradient's graph; for models with few parameters)."""
    params = list(params)
    n_params = sum(p.numel() for p in params)
    hessian = torch.zeros(n_params, n_params, dtype=torch.float64) if curvature else None
    total_frames = sum(len(idx) for _, idx in batch)
    if ranks is not None and ranks.active:
        batch = rank_minibatch(batch, ranks.rank, ranks.world_size)
    grads = [torch.zeros_like(p) for p in params]
    loss = torch.zeros((), dtype=torch.float64)
    parts = {"energy_mse": torch.zeros((), dtype=torch.float64),
             "force_mse": torch.zeros((), dtype=torch.float64)}
    for g, idx in batch:
        numbers, positions, cells, energies, forces = frames.groups[g]
        sel = torch.as_tensor(idx, dtype=torch.long)
        to = dict(device=device, dtype=dtype)
        share = len(idx) / total_frames
        with torch.enable_grad():
            ev = evaluate(potential, positions[sel].to(**to), cells[sel].to(**to), numbers.to(device),
                          forces=True, create_graph=True)
            term, term_parts = energy_force_loss(
                ev.energy, energies[sel].to(**to), ev.forces, forces[sel].to(**to), int(numbers.numel()),
                energy_weight=energy_weight, force_weight=force_weight)
            group_grads = torch.autograd.grad(share * term, params, allow_unused=True, create_graph=curvature)
            if curvature:
                hessian += _hessian_rows(group_grads, params)
        for acc, gg in zip(grads, group_grads):
            if gg is not None:
                acc.add_(gg.detach())
        loss = loss + share * term.detach().double().cpu()
        for key in parts:
            parts[key] = parts[key] + share * term_parts[key].double().cpu()
    if ranks is not None and ranks.active:
        keys = list(parts)
        extra = [hessian] if curvature else []
        summed = ranks.sum_list([loss, *parts.values(), *grads, *extra], "force matching")
        if curvature:
            hessian = summed.pop()
        loss, parts, grads = summed[0], dict(zip(keys, summed[1:1 + len(keys)])), summed[1 + len(keys):]
    return ForceMatchingResult(loss=loss, parts=parts, grads=tuple(grads), hessian=hessian)


def _hessian_rows(grads: Sequence[torch.Tensor | None], params: list[torch.nn.Parameter]) -> torch.Tensor:
    """∂(grads)/∂θ [P, P] float64: one backward per entry of the flattened gradient (its graph kept)."""
    n = sum(p.numel() for p in params)
    rows = torch.zeros(n, n, dtype=torch.float64)
    k = 0
    for g, p in zip(grads, params):
        if g is None or not g.requires_grad:
            k += p.numel()
            continue
        flat_g = g.reshape(-1)
        for i in range(flat_g.numel()):
            second = torch.autograd.grad(flat_g[i], params, retain_graph=True, allow_unused=True)
            rows[k + i] = torch.cat([torch.zeros(q.numel(), dtype=torch.float64) if s is None
                                     else s.reshape(-1).double().cpu() for s, q in zip(second, params)])
        k += p.numel()
    return rows
