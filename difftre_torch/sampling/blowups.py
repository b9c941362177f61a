"""The health check of both samplers: is a batch of MD states still physical?

One function on tensors, replica (batch) dimension first. The batched sampler calls it on its
whole batch with its Verlet list; the ASE sampler on one replica (R = 1, through
:func:`~difftre_torch.sampling.ase_md.blow_up_reason`), where the close pairs come from a vesin
search. Same state, same reason, whichever sampler asks.

Checks, in this order (the first that fails is the reason; a check whose setting is 0 or whose
inputs are not given is skipped):

1. non-finite positions, momenta or cell;
2. cell volume V outside [V₀/r_V, V₀·r_V] (V₀: the start cell's volume, r_V: ``max_volume_ratio``);
3. a cell vector's length |a_k| outside [|a_k⁰|/r_L, |a_k⁰|·r_L] (a_k⁰: the start cell's rows,
   r_L: ``max_cell_length_ratio``). With check 2 this bounds the shape: the angle factor
   V/(|a||b||c|) (1 for a rectangular cell, → 0 as the cell flattens) stays ≥ its start value
   / (r_V r_L³), so a cell that collapses at constant volume is caught as well as one that
   swells. Layers sliding in a full-cell NPT run tilt c; |c| reaches r_L = 2 only when the
   slide is √3 times the layer stack's height;
4. kinetic temperature T = Σᵢ|pᵢ|²/mᵢ / (n_dof k_B), n_dof = 3N − 3 (the samplers' centre of
   mass is fixed; :func:`~difftre_torch.sampling.integrators.kinetic_temperature_K`), above
   r_T·T₀ (T₀: the replica's thermostat temperature, r_T: ``max_temperature_ratio``). In
   equilibrium n_dof·T/T₀ is χ² with n_dof degrees of freedom: T fluctuates by √(2/n_dof)
   (8 % for N = 100) and exceeds 5 T₀ with probability below 1e-6 per check for N ≥ 4 atoms
   (1.8e-3 for N = 2). Skipped for N < 2. It comes before the close pairs because a runaway
   atom's wrapped position (10¹⁸ Å after a few 500 fs steps) gives a meaningless pair;
5. two atoms closer than ``min_distance_A`` (minimum image; the closest such pair is named);
6. an atom displaced by more than b·k since the previous check, k MD steps ago (b:
   ``max_step_displacement_A`` per step). The displacement is measured against where the
   atom would be had it only followed the cell, Δᵢ = xᵢ − xᵢ' h'⁻¹ h (x', h': positions and
   cell at the previous check; rows), so an NPT cell change is not counted; positions are
   unwrapped in both samplers, so crossing the cell boundary is no jump. A thermal atom moves
   v·Δt per step with v_rms = √(3k_BT/m): 0.017 Å per 5 fs step for argon at 181 K, 0.054 Å
   per 2 fs step for hydrogen at 300 K, so b = 0.5 Å is 9–30 v_rms·Δt. Between checks the net
   displacement is at most the sum of the steps', so this catches runaway atoms, not every
   large step.

Units: Å, amu, K; momenta in amu·Å/t_ASE (ASE's, so |p|²/m is in eV); cells as rows.
:class:`MDBlowUpError` is what both samplers raise when a replica cannot be kept healthy.
"""

from __future__ import annotations

import torch

from difftre_torch.neighbors import Pairs, det3, inv3, pair_vectors


class MDBlowUpError(RuntimeError):
    """A replica's MD could not be kept physical: its start structure already fails the health
    check (nothing earlier to roll back to), or it blew up more than ``max_blow_ups`` times in
    one segment. state_point: its name; replica: the replica's index within the state point;
    reason: the check's reason (:func:`blow_up_reasons`); step: the MD step of the last blow-up
    (None for a bad start)."""

    def __init__(self, message: str, *, state_point: str, replica: int, reason: str,
                 step: int | None = None) -> None:
        super().__init__(message)
        self.state_point = state_point
        self.replica = replica
        self.reason = reason
        self.step = step


def blow_up_advice(reason: str, timestep_fs: float) -> str:
    """What to change for a replica that keeps failing with ``reason`` (one sentence)."""
    smaller = f"a smaller SamplerConfig.timestep_fs (now {timestep_fs:g} fs)"
    if reason.startswith("cell "):
        return ("Check the state point's pressure_GPa, a longer SamplerConfig.barostat_tau_fs damps "
                "the cell, hydrostatic: true keeps a liquid's cell shape; max_volume_ratio and "
                "max_cell_length_ratio set the bounds.")
    if reason.startswith("atoms "):
        return (f"Try {smaller}; lower SamplerConfig.min_distance_A only if the potential is meant "
                "for such distances.")
    if reason.startswith("kinetic temperature"):
        return (f"Try {smaller}, and a start structure without overlapping atoms; "
                "SamplerConfig.max_temperature_ratio sets the bound.")
    if reason.startswith("atom "):
        return (f"Try {smaller}, and a start structure without overlapping atoms; "
                "SamplerConfig.max_step_displacement_A sets the bound.")
    return f"Try {smaller}, and check that the potential is finite at the replica's structures."


def too_many_blow_ups(state_point: str, replica: int, segment: str, step: int, reason: str,
                      count: int, max_blow_ups: int, timestep_fs: float) -> MDBlowUpError:
    """The error both samplers raise when one replica blew up more than ``max_blow_ups`` times
    in one segment (the budget is per replica, per equilibration or production segment)."""
    return MDBlowUpError(
        f"MD of state point {state_point!r}, replica {replica} blew up {count} times in its {segment} "
        f"segment, more than SamplerConfig.max_blow_ups = {max_blow_ups} (counted per replica and "
        f"segment); last at step {step}: {reason}. {blow_up_advice(reason, timestep_fs)}",
        state_point=state_point, replica=replica, reason=reason, step=step)


def bad_start(state_point: str, replica: int, reason: str) -> MDBlowUpError:
    """The error both samplers raise when a replica's start state fails the check."""
    return MDBlowUpError(
        f"state point {state_point!r}, replica {replica}: the start structure fails the MD health "
        f"check before the first step: {reason}. There is no earlier state to roll back to: fix the "
        "structure (relax it, remove overlapping atoms), or change the SamplerConfig bound if the "
        "potential is meant for it.",
        state_point=state_point, replica=replica, reason=reason)


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
    reference_cell: torch.Tensor | None = None,
    max_cell_length_ratio: float = 0.0,
    masses: torch.Tensor | None = None,
    temperature_K: torch.Tensor | None = None,
    max_temperature_ratio: float = 0.0,
    previous_positions: torch.Tensor | None = None,
    previous_cells: torch.Tensor | None = None,
    steps_since: torch.Tensor | None = None,
    max_step_displacement_A: float = 0.0,
) -> list[str | None]:
    """Why each replica's state is unphysical, or None where it looks healthy; a list of R.
    The checks and their order are the module docstring's; only reads its inputs.

    positions, momenta: [R, N, 3] (Å; amu·Å/t_ASE); cells: [R, 3, 3] Å (rows);
    reference_volume_A3: V₀ (Å³). min_distance_A: closest allowed approach (0: not checked);
    max_volume_ratio: r_V > 1. pairs: a pair list of the batch that holds every pair closer than
    ``min_distance_A`` (the batched sampler's Verlet list, valid at ``positions``); None: vesin
    searches each replica that passed checks 1–4 (one host round trip first). periodic: minimum
    image in 3D (the vesin search only; a pair list carries its own shifts).
    reference_cell: [3, 3] Å, the start cell; max_cell_length_ratio: r_L > 1 (0 or no
    reference_cell: not checked). masses: [N] amu; temperature_K: [R] K, each replica's T₀;
    max_temperature_ratio: r_T (0 or no masses/temperature_K: not checked).
    previous_positions: [R, N, 3] Å and previous_cells: [R, 3, 3] Å at the previous check;
    steps_since: [R] MD steps since then (None: 1); max_step_displacement_A: b, Å per step (0 or no
    previous_positions: not checked).

    Reasons: ``"non-finite positions, momenta or cell"``, ``"cell volume <V> Å³ is <V/V₀>× the
    reference"``, ``"cell vector <a|b|c> is <|a_k|/|a_k⁰|>× its start length"``, ``"kinetic
    temperature <T> K is <T/T₀>× the target <T₀> K"``, ``"atoms <i> and <j> are <d> Å apart,
    closer than <min_distance_A> Å"`` (i < j, the closest pair), ``"atom <i> moved <Δ> Å in
    <k> step(s), more than <b> Å per step"`` (the atom that moved most). The tensors are read
    back to the host once (with a pair list).
    """
    x, p, h = positions.detach(), momenta.detach(), cells.detach()
    R, N = x.shape[0], x.shape[1]
    dtype, device = h.dtype, h.device
    eye = torch.eye(3, dtype=dtype, device=device)
    zeros = torch.zeros(R, dtype=dtype, device=device)
    finite = (torch.isfinite(x).flatten(1).all(1) & torch.isfinite(p).flatten(1).all(1)
              & torch.isfinite(h).flatten(1).all(1))
    safe_h = torch.where(finite[:, None, None], h, eye)
    safe_x = torch.where(finite[:, None, None], x, torch.zeros_like(x))
    volume = det3(safe_h).abs()
    ratio = volume / reference_volume_A3
    # 3: the cell vector whose length changed most, as a ratio ≥ 1 either way
    length_ratio, length_axis, length = zeros, torch.zeros(R, dtype=torch.long, device=device), zeros
    if reference_cell is not None and max_cell_length_ratio > 0:
        lengths = safe_h.norm(dim=-1) / reference_cell.to(device, dtype).norm(dim=-1)
        length_ratio, length_axis = torch.maximum(lengths, 1.0 / lengths).max(dim=1)
        length = lengths.gather(1, length_axis[:, None])[:, 0]
    # 4: kinetic temperature with n_dof = 3N − 3
    temperature, target = zeros, torch.ones_like(zeros)
    if masses is not None and temperature_K is not None and max_temperature_ratio > 0 and N >= 2:
        from difftre_torch.sampling.integrators import kinetic_temperature_K

        safe_p = torch.where(finite[:, None, None], p, torch.zeros_like(p))
        temperature = kinetic_temperature_K(safe_p, masses.to(device, dtype))
        target = torch.as_tensor(temperature_K, dtype=dtype, device=device).expand(R)
    # 5: the closest pair
    closest = torch.full_like(ratio, float("inf"))
    first = second = zeros
    if min_distance_A > 0:
        if pairs is None:
            in_range = finite & (ratio >= 1.0 / max_volume_ratio) & (ratio <= max_volume_ratio)
            if reference_cell is not None and max_cell_length_ratio > 0:
                in_range &= length_ratio <= max_cell_length_ratio
            if max_temperature_ratio > 0:  # a runaway atom's position is no use to a search
                in_range &= temperature <= max_temperature_ratio * target
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
            first, second = torch.minimum(i, j).to(dtype), torch.maximum(i, j).to(dtype)
    # 6: the largest displacement since the previous check, the cell's own change taken out
    moved, mover, steps = zeros, zeros, torch.ones_like(zeros)
    if previous_positions is not None and max_step_displacement_A > 0:
        x_prev = previous_positions.detach().to(device, dtype)
        h_prev = previous_cells.detach().to(device, dtype)
        same_cell = (h_prev == safe_h).flatten(1).all(1)
        follow = torch.where(same_cell[:, None, None], eye, torch.bmm(inv3(h_prev), safe_h))
        displacement = (safe_x - torch.bmm(x_prev, follow)).norm(dim=-1)
        moved, index = displacement.max(dim=1)
        mover = index.to(dtype)
        steps = torch.as_tensor(1 if steps_since is None else steps_since, device=device)
        steps = steps.to(dtype).expand(R).clamp(min=1)
    host = torch.stack([finite.to(dtype), volume, ratio, length_ratio, length_axis.to(dtype), length,
                        closest, first, second, temperature, target, moved, mover, steps]).tolist()
    reasons: list[str | None] = []
    for ok, v, v_ratio, l_ratio, axis, l_k, d, a, b, t, t0, dx, atom, k in zip(*host):
        if not ok:
            reasons.append("non-finite positions, momenta or cell")
        elif not (1.0 / max_volume_ratio <= v_ratio <= max_volume_ratio):
            reasons.append(f"cell volume {v:.1f} Å³ is {v_ratio:.2f}× the reference")
        elif max_cell_length_ratio > 0 and l_ratio > max_cell_length_ratio:
            reasons.append(f"cell vector {'abc'[int(axis)]} is {l_k:.2f}× its start length")
        elif max_temperature_ratio > 0 and t > max_temperature_ratio * t0:
            reasons.append(f"kinetic temperature {t:.4g} K is {t / t0:.3g}× the target {t0:g} K")
        elif d < min_distance_A:
            reasons.append(f"atoms {int(a)} and {int(b)} are {d:.3f} Å apart, closer than {min_distance_A} Å")
        elif max_step_displacement_A > 0 and dx > max_step_displacement_A * k:
            reasons.append(f"atom {int(atom)} moved {dx:.4g} Å in {int(k)} step(s), "
                           f"more than {max_step_displacement_A} Å per step")
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
