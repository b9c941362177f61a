"""Neighbour pairs for batches of periodic snapshots (vesin), and differentiable pair vectors.

Convention: cell vectors are rows (``cell[b, k]`` is lattice vector k of snapshot b, Å); a pair
(i, j, S) with integer shift S ∈ ℤ³ has vector r_ij = x_j − x_i + S · cell (Å). Indices come
from vesin's cell-list search (no N² distance matrix) and carry no gradient; vectors are
recomputed in torch from the positions and the cell, so they are differentiable in both.
Cutoffs larger than half the cell are fine: vesin returns every periodic image within the
cutoff.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Pairs:
    """Pairs of a batch of B snapshots of one N-atom system, flattened over the batch.

    batch: [P] int64, snapshot index b of each pair.
    i, j: [P] int64, atom indices within the snapshot (0..N-1).
    shifts: [P, 3] same dtype as positions, integer cell shifts S (r_ij = x_j − x_i + S·cell).
    full: True if both (i, j) and (j, i) are listed; False if each unordered pair once.
    """

    batch: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor
    full: bool

    def __len__(self) -> int:
        return int(self.i.shape[0])


def neighbor_pairs(
    positions: torch.Tensor, cell: torch.Tensor, cutoff_A: float, full: bool = False
) -> Pairs:
    """All pairs with |r_ij| < ``cutoff_A`` in each snapshot (periodic in 3D).

    positions: [B, N, 3] Å; cell: [B, 3, 3] Å, rows are lattice vectors.
    Runs on the tensors' device (vesin-torch supports CPU and CUDA); no gradient flows through
    the search.
    """
    from vesin.torch import NeighborList

    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise ValueError(f"positions: expected shape [B, N, 3], got {tuple(positions.shape)}")
    if cell.shape != (positions.shape[0], 3, 3):
        raise ValueError(f"cell: expected shape [{positions.shape[0]}, 3, 3], got {tuple(cell.shape)}")
    search = NeighborList(cutoff=float(cutoff_A), full_list=full)
    batch, first, second, shifts = [], [], [], []
    pos = positions.detach()
    box = cell.detach()
    for b in range(pos.shape[0]):
        i, j, s = search.compute(points=pos[b], box=box[b], periodic=True, quantities="ijS")
        batch.append(torch.full_like(i, b))
        first.append(i)
        second.append(j)
        shifts.append(s)
    return Pairs(
        batch=torch.cat(batch).long(),
        i=torch.cat(first).long(),
        j=torch.cat(second).long(),
        shifts=torch.cat(shifts).to(positions.dtype),
        full=full,
    )


def pair_vectors(positions: torch.Tensor, cell: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """r_ij = x_j − x_i + S·cell for every pair, [P, 3] Å, differentiable in positions and cell."""
    offsets = torch.einsum("pk,pkl->pl", pairs.shifts, cell[pairs.batch])
    return positions[pairs.batch, pairs.j] - positions[pairs.batch, pairs.i] + offsets
