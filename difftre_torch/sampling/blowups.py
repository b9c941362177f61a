"""The blow-up check of both samplers: is a batch of MD states still physical?

One function on tensors, replica (batch) dimension first. The batched sampler calls it on its
whole batch with its Verlet list; the ASE sampler on one replica (R = 1, through
:func:`~difftre_torch.sampling.ase_md.blow_up_reason`), where the close pairs come from a vesin
search. Same state, same reason, whichever sampler asks.

Checks, in this order (the first that fails is the reason):

1. non-finite positions, momenta or cell;
2. cell volume V outside [V₀/r, V₀·r] (V₀: the start cell's volume, r: ``max_volume_ratio``);
3. two atoms closer than ``min_distance_A`` (minimum image; the closest such pair is named).

Units: Å, cells as rows; momenta in any unit (only their finiteness is checked).
"""

from __future__ import annotations

import torch

from difftre_torch.neighbors import Pairs, det3, pair_vectors


def blow_up_reasons(
    positions: torch.Tensor,
    momenta: torch.Tensor,
    cells: torch.Tensor,
    reference_volume_A3: float,
    *,
    min_distance_A: float,
    max_volume_ratio: float,
    pairs: Pairs | None = None,
    periodic: bool = True,
) -> list[str | None]:
    """Why each replica's state is unphysical, or None where it looks healthy; a list of R.

    positions, momenta: [R, N, 3]; cells: [R, 3, 3] Å (rows); reference_volume_A3: V₀ (Å³).
    min_distance_A: closest allowed approach (0: not checked); max_volume_ratio: r > 1.
    pairs: a pair list of the batch that holds every pair closer than ``min_distance_A`` (the
    batched sampler's Verlet list, valid at ``positions``); None: vesin searches each replica
    that passed checks 1–2 (one host round trip first). periodic: minimum image in 3D (the
    vesin search only; a pair list carries its own shifts).

    Reasons: ``"non-finite positions, momenta or cell"``, ``"cell volume <V> Å³ is <V/V₀>× the
    reference"``, ``"atoms <i> and <j> are <d> Å apart, closer than <min_distance_A> Å"`` (i < j,
    the closest pair). The tensors are read back to the host once (with a pair list).
    """
    x, p, h = positions.detach(), momenta.detach(), cells.detach()
    R = x.shape[0]
    eye = torch.eye(3, dtype=h.dtype, device=h.device)
    finite = (torch.isfinite(x).flatten(1).all(1) & torch.isfinite(p).flatten(1).all(1)
              & torch.isfinite(h).flatten(1).all(1))
    safe_h = torch.where(finite[:, None, None], h, eye)
    volume = det3(safe_h).abs()
    ratio = volume / reference_volume_A3
    closest = torch.full_like(ratio, float("inf"))
    first = second = torch.zeros(R, dtype=h.dtype, device=h.device)
    if min_distance_A > 0:
        safe_x = torch.where(finite[:, None, None], x, torch.zeros_like(x))
        if pairs is None:
            in_range = finite & (ratio >= 1.0 / max_volume_ratio) & (ratio <= max_volume_ratio)
            pairs = _search(safe_x, safe_h, min_distance_A, in_range.tolist(), periodic)
        if len(pairs):
            r = pair_vectors(safe_x, safe_h, pairs).norm(dim=-1)
            closest = closest.scatter_reduce(0, pairs.batch, r, reduce="amin")
            # the closest pair of each replica: the lowest pair index at its minimum distance
            index = torch.arange(len(pairs), device=r.device)
            at_min = r == closest[pairs.batch]
            which = torch.full((R,), len(pairs), dtype=torch.long, device=r.device).scatter_reduce(
                0, pairs.batch[at_min], index[at_min], reduce="amin").clamp(max=len(pairs) - 1)
            i, j = pairs.i[which], pairs.j[which]
            first, second = torch.minimum(i, j).to(h.dtype), torch.maximum(i, j).to(h.dtype)
    host = torch.stack([finite.to(h.dtype), volume, ratio, closest, first, second]).tolist()
    reasons: list[str | None] = []
    for ok, v, v_ratio, d, a, b in zip(*host):
        if not ok:
            reasons.append("non-finite positions, momenta or cell")
        elif not (1.0 / max_volume_ratio <= v_ratio <= max_volume_ratio):
            reasons.append(f"cell volume {v:.1f} Å³ is {v_ratio:.2f}× the reference")
        elif d < min_distance_A:
            reasons.append(f"atoms {int(a)} and {int(b)} are {d:.3f} Å apart, closer than {min_distance_A} Å")
        else:
            reasons.append(None)
    return reasons


def _search(positions: torch.Tensor, cells: torch.Tensor, cutoff_A: float, rows: list[bool],
            periodic: bool) -> Pairs:
    """Every pair closer than ``cutoff_A`` in the replicas where ``rows`` is True: vesin's
    half-list search on the host, one replica at a time."""
    from vesin import NeighborList

    search = NeighborList(cutoff=float(cutoff_A), full_list=False)
    device, dtype = positions.device, positions.dtype
    batch, first, second, shifts = [], [], [], []
    for b, wanted in enumerate(rows):
        if not wanted:
            continue
        i, j, s = search.compute(points=positions[b].cpu().numpy(), box=cells[b].cpu().numpy(),
                                 periodic=periodic, quantities="ijS")
        batch.append(torch.full((len(i),), b, dtype=torch.long))
        first.append(torch.as_tensor(i, dtype=torch.long))
        second.append(torch.as_tensor(j, dtype=torch.long))
        shifts.append(torch.as_tensor(s, dtype=dtype).reshape(-1, 3))
    if not batch:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Pairs(empty, empty, empty, torch.zeros(0, 3, dtype=dtype, device=device), False)
    to = lambda parts: torch.cat(parts).to(device)
    return Pairs(to(batch), to(first), to(second), to(shifts), False)
