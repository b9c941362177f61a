"""Per-replica blow-up checks of a batch of MD states (the batched sampler's; the ASE sampler's
single-system check is :func:`~difftre_torch.sampling.ase_md.blow_up_reason`)."""

from __future__ import annotations

import torch

from difftre_torch.neighbors import VerletList, det3, pair_vectors
from difftre_torch.sampling.integrators import LangevinState


def blow_up_reasons(
    state: LangevinState,
    reference_volume_A3: float,
    min_distance_A: float,
    max_volume_ratio: float,
    verlet: VerletList | None,
) -> list[str | None]:
    """Why each replica's state is unphysical, or None where it looks healthy, [R] (one host sync).

    Checks, as :func:`~difftre_torch.sampling.ase_md.blow_up_reason`: non-finite positions,
    momenta or cell; volume outside [V₀/r, V₀·r]; two atoms closer than ``min_distance_A``
    (from ``verlet``, which must be valid at ``state``'s positions and reach that distance).
    """
    x, p, h = state.positions, state.momenta, state.cells
    finite = (torch.isfinite(x).flatten(1).all(1) & torch.isfinite(p).flatten(1).all(1)
              & torch.isfinite(h).flatten(1).all(1))
    volume = det3(torch.where(finite[:, None, None], h, torch.eye(3, dtype=h.dtype, device=h.device)))
    ratio = volume.abs() / reference_volume_A3
    closest = torch.full_like(ratio, float("inf"))
    if verlet is not None and min_distance_A > 0 and len(verlet.pairs):
        pairs = verlet.pairs
        safe_x = torch.where(finite[:, None, None], x, torch.zeros_like(x))
        safe_h = torch.where(finite[:, None, None], h, torch.eye(3, dtype=h.dtype, device=h.device).expand_as(h))
        r = pair_vectors(safe_x, safe_h, pairs).norm(dim=-1)
        closest = closest.scatter_reduce(0, pairs.batch, r, reduce="amin")
    finite, ratio, closest = finite.tolist(), ratio.tolist(), closest.tolist()
    reasons: list[str | None] = []
    for ok, v, d in zip(finite, ratio, closest):
        if not ok:
            reasons.append("non-finite positions, momenta or cell")
        elif not (1.0 / max_volume_ratio <= v <= max_volume_ratio):
            reasons.append(f"cell volume is {v:.2f}× the reference")
        elif d < min_distance_A:
            reasons.append(f"two atoms {d:.3f} Å apart, closer than {min_distance_A} Å")
        else:
            reasons.append(None)
    return reasons
