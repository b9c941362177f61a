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


def det3(matrices: torch.Tensor) -> torch.Tensor:
    """Determinants of [..., 3, 3] matrices as a₀·(a₁ × a₂) of the rows, [...]. Element-wise
    arithmetic only: unlike ``torch.linalg.det`` on a batch (LAPACK, threaded), it costs
    microseconds even when the CPU cores are oversubscribed."""
    return (matrices[..., 0, :] * torch.linalg.cross(matrices[..., 1, :], matrices[..., 2, :])).sum(-1)


def inv3(matrices: torch.Tensor) -> torch.Tensor:
    """Inverses of [..., 3, 3] matrices from the adjugate (columns a₁×a₂, a₂×a₀, a₀×a₁ over the
    determinant); element-wise arithmetic, like :func:`det3`."""
    a0, a1, a2 = matrices[..., 0, :], matrices[..., 1, :], matrices[..., 2, :]
    adjugate = torch.stack([torch.linalg.cross(a1, a2), torch.linalg.cross(a2, a0),
                            torch.linalg.cross(a0, a1)], dim=-1)
    return adjugate / det3(matrices)[..., None, None]


def pair_vectors(positions: torch.Tensor, cell: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """r_ij = x_j − x_i + S·cell for every pair, [P, 3] Å, differentiable in positions and cell."""
    offsets = torch.einsum("pk,pkl->pl", pairs.shifts, cell[pairs.batch])
    return positions[pairs.batch, pairs.j] - positions[pairs.batch, pairs.i] + offsets


# ---------------------------------------------------------------------------------------------
# Pair caches: each fixed snapshot's list, searched once


PAIR_BYTES = 4 + 4 + 3 * 2
"""Bytes one cached pair takes: i and j as int32, the cell shift as three int16."""


@dataclass
class PairCache:
    """The exact pair lists (|r_ij| < ``cutoff_A``) of S fixed snapshots, searched once and kept
    compactly, so that every later pass over the same snapshots skips the search.

    Snapshot s owns rows ``offsets[s]:offsets[s + 1]`` of ``i``, ``j`` (int32 atom indices) and
    ``shifts`` (int16 integer cell shifts), which stay on the snapshots' device; ``offsets``
    [S + 1] int64 stays on the CPU, so slicing never waits for the device. The rows of a snapshot
    are vesin's, in vesin's order: :meth:`pairs` gives what :func:`neighbor_pairs` would.
    full: both (i, j) and (j, i) are listed.
    """

    cutoff_A: float
    full: bool
    offsets: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor

    @classmethod
    def build(cls, positions: torch.Tensor, cell: torch.Tensor, cutoff_A: float, full: bool,
              group: int = 64) -> "PairCache":
        """Search positions [S, N, 3] Å in cells [S, 3, 3] Å (rows), one snapshot at a time.
        Each ``group`` of snapshots is packed into one block before the next is searched, so the
        many small per-snapshot tensors never outnumber one group's: interleaved with the kept
        pieces they would leave the heap fragmented in proportion to S (measured: the update's
        peak RSS then grew with the number of snapshots)."""
        from vesin.torch import NeighborList

        search = NeighborList(cutoff=float(cutoff_A), full_list=full)
        pos, box = positions.detach(), cell.detach()
        counts, blocks = [0], []
        for start in range(0, pos.shape[0], group):
            first, second, shifts = [], [], []
            for b in range(start, min(start + group, pos.shape[0])):
                i, j, s = search.compute(points=pos[b], box=box[b], periodic=True, quantities="ijS")
                if s.numel() and int(s.abs().max()) > torch.iinfo(torch.int16).max:
                    raise ValueError(f"PairCache: a cell shift beyond the int16 range (cut-off {cutoff_A} Å "
                                     "against a cell far smaller)")
                counts.append(int(i.shape[0]))
                first.append(i)
                second.append(j)
                shifts.append(s)
            blocks.append((torch.cat(first).to(torch.int32), torch.cat(second).to(torch.int32),
                           torch.cat(shifts).to(torch.int16)))
            del first, second, shifts
        return cls(cutoff_A=float(cutoff_A), full=full,
                   offsets=torch.tensor(counts, dtype=torch.int64).cumsum(0),
                   i=torch.cat([b[0] for b in blocks]), j=torch.cat([b[1] for b in blocks]),
                   shifts=torch.cat([b[2] for b in blocks]))

    @classmethod
    def concatenate(cls, caches: list["PairCache"]) -> "PairCache | None":
        """One cache of the snapshots of ``caches`` in order (a merged store's), or None unless
        every one is present with the same cut-off and list kind."""
        if not caches or any(c is None for c in caches) or \
                len({(c.cutoff_A, c.full) for c in caches}) != 1:
            return None
        counts = torch.cat([c.offsets[1:] - c.offsets[:-1] for c in caches])
        return cls(cutoff_A=caches[0].cutoff_A, full=caches[0].full,
                   offsets=torch.cat([counts.new_zeros(1), counts]).cumsum(0),
                   i=torch.cat([c.i for c in caches]), j=torch.cat([c.j for c in caches]),
                   shifts=torch.cat([c.shifts for c in caches]))

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def nbytes(self) -> int:
        """Bytes the cached pairs hold (indices and shifts)."""
        return sum(t.numel() * t.element_size() for t in (self.i, self.j, self.shifts))

    def pairs(self, snapshots: slice, dtype: torch.dtype) -> Pairs:
        """The :class:`Pairs` of ``snapshots`` (a slice with step 1), batch indices from 0,
        shifts in ``dtype`` (the positions')."""
        start, stop, step = snapshots.indices(len(self))
        if step != 1:
            raise ValueError(f"PairCache.pairs: expected a contiguous slice, got step {step}")
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        counts = (self.offsets[start + 1:stop + 1] - self.offsets[start:stop]).to(self.i.device)
        batch = torch.repeat_interleave(torch.arange(stop - start, device=self.i.device), counts,
                                        output_size=hi - lo)
        return Pairs(batch=batch, i=self.i[lo:hi].long(), j=self.j[lo:hi].long(),
                     shifts=self.shifts[lo:hi].to(dtype), full=self.full)


# ---------------------------------------------------------------------------------------------
# Verlet lists: pairs within cutoff + skin, reused while no pair can have crossed the cutoff


@dataclass
class VerletList:
    """Pairs within ``cutoff_A + skin_A`` of B snapshots, kept while they cover every pair within
    ``cutoff_A`` (see :func:`verlet_displacement`).

    pairs: the concatenated :class:`Pairs` of all snapshots (pass it to a potential's forward).
    per_snapshot: B tuples (i [P_b], j [P_b], shifts [P_b, 3]), the part of each snapshot, so
        that one snapshot can be rebuilt without searching the others.
    reference_positions: [B, N, 3] Å and reference_cells: [B, 3, 3] Å (rows) at each snapshot's
        last build.
    cutoff_A, skin_A: the interaction cut-off and the skin (Å); full: both (i, j) and (j, i).
    builds: [B] int64, how many times each snapshot's list was built (diagnostics).
    """

    pairs: Pairs
    per_snapshot: list
    reference_positions: torch.Tensor
    reference_cells: torch.Tensor
    cutoff_A: float
    skin_A: float
    full: bool
    builds: torch.Tensor


def _search_snapshot(search, positions: torch.Tensor, cell: torch.Tensor):
    i, j, s = search.compute(points=positions, box=cell, periodic=True, quantities="ijS")
    return i.long(), j.long(), s.to(positions.dtype)


def _concatenate(per_snapshot: list, full: bool, device) -> Pairs:
    batch = [torch.full_like(i, b) for b, (i, _, _) in enumerate(per_snapshot)]
    return Pairs(
        batch=torch.cat(batch) if batch else torch.zeros(0, dtype=torch.long, device=device),
        i=torch.cat([p[0] for p in per_snapshot]),
        j=torch.cat([p[1] for p in per_snapshot]),
        shifts=torch.cat([p[2] for p in per_snapshot]),
        full=full,
    )


def verlet_list(
    positions: torch.Tensor, cell: torch.Tensor, cutoff_A: float, skin_A: float, full: bool = False
) -> VerletList:
    """Build the Verlet list of every snapshot: pairs with |r_ij| < cutoff_A + skin_A.

    positions: [B, N, 3] Å; cell: [B, 3, 3] Å (rows). The search is vesin's, on the tensors'
    device, as in :func:`neighbor_pairs`.
    """
    from vesin.torch import NeighborList

    if skin_A < 0:
        raise ValueError(f"verlet_list: skin_A must be >= 0, got {skin_A}")
    search = NeighborList(cutoff=float(cutoff_A + skin_A), full_list=full)
    pos, box = positions.detach(), cell.detach()
    per_snapshot = [_search_snapshot(search, pos[b], box[b]) for b in range(pos.shape[0])]
    return VerletList(
        pairs=_concatenate(per_snapshot, full, pos.device),
        per_snapshot=per_snapshot,
        reference_positions=pos.clone(),
        reference_cells=box.clone(),
        cutoff_A=float(cutoff_A),
        skin_A=float(skin_A),
        full=full,
        builds=torch.ones(pos.shape[0], dtype=torch.long),
    )


def verlet_displacement(vl: VerletList, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Upper bound on how much any pair distance may have shrunk since each snapshot's build, [B] Å.

    With M = h₀⁻¹ h (the affine map of the cell since the build, rows) and the non-affine
    displacements u_i = x_i − x_i⁰ M, a pair vector is r = r⁰ M + u_j − u_i, so
    |r| ≥ |r⁰| (1 − ‖M − 1‖_F) − 2 max_i |u_i|. A pair missing from the list had
    |r⁰| ≥ r_c + skin, so the list still holds every pair within r_c while

        2 max_i |u_i| + (r_c + skin) ‖M − 1‖_F < skin.

    Returns the left-hand side per snapshot (for a fixed cell, twice the largest displacement).
    A non-finite snapshot gives NaN (compare with ``>=`` so that it is not rebuilt from NaN).
    """
    x0, h0 = vl.reference_positions, vl.reference_cells
    strain = torch.bmm(inv3(h0), cell.detach() - h0)  # M − 1
    u = positions.detach() - x0 - torch.bmm(x0, strain)
    return 2.0 * u.norm(dim=-1).amax(dim=-1) + (vl.cutoff_A + vl.skin_A) * strain.flatten(1).norm(dim=-1)


def verlet_list_is_stale(vl: VerletList, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """[B] bool: the snapshot's list may miss a pair within the cut-off (and its positions and
    cell are finite, so it can be searched again). Stays on the device."""
    pos, box = positions.detach(), cell.detach()
    finite = torch.isfinite(pos).flatten(1).all(dim=1) & torch.isfinite(box).flatten(1).all(dim=1)
    return (verlet_displacement(vl, pos, box) >= vl.skin_A) & finite


def refresh_verlet_list(
    vl: VerletList,
    positions: torch.Tensor,
    cell: torch.Tensor,
    rebuild: torch.Tensor | None = None,
    *,
    stale: torch.Tensor | None = None,
) -> VerletList:
    """Rebuild, in place, the snapshots whose list may have gone stale
    (:func:`verlet_list_is_stale`, or the precomputed ``stale`` [B] bool) and those flagged in
    ``rebuild`` [B] bool; returns ``vl``. Snapshots with non-finite positions or cell are never
    searched (their list is left as it was: the caller discards such a snapshot). Deciding
    which snapshots to search is one host transfer of B booleans."""
    from vesin.torch import NeighborList

    pos, box = positions.detach(), cell.detach()
    if stale is None:
        stale = verlet_list_is_stale(vl, pos, box)
    if rebuild is not None:
        finite = torch.isfinite(pos).flatten(1).all(dim=1) & torch.isfinite(box).flatten(1).all(dim=1)
        stale = stale | (rebuild.to(stale.device) & finite)
    which = torch.nonzero(stale).flatten().tolist()
    if not which:
        return vl
    search = NeighborList(cutoff=vl.cutoff_A + vl.skin_A, full_list=vl.full)
    for b in which:
        vl.per_snapshot[b] = _search_snapshot(search, pos[b], box[b])
        vl.reference_positions[b] = pos[b]
        vl.reference_cells[b] = box[b]
        vl.builds[b] += 1
    vl.pairs = _concatenate(vl.per_snapshot, vl.full, pos.device)
    return vl
