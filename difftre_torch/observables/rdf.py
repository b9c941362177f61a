"""Partial and total radial distribution functions of periodic snapshots.

Definition (per snapshot, species a and b, bin k = [r_lo, r_hi) of width Δr):

    g_ab(r_k) = V / (N_a N_b') · n_ab(r_k) / V_k,      V_k = (4π/3)(r_hi³ − r_lo³),
    N_b' = N_b − δ_ab,

where n_ab(r_k) counts ordered pairs (i of species a, j of species b, j ≠ i or a periodic image
of i) whose minimum-free distance |x_j − x_i + S·cell| lies in the bin, over all lattice shifts
S (vesin returns every image within the cut-off, so r_max may exceed half the cell width), V is
the cell volume and N_a the number of atoms of species a. With N_b' = N_b − δ_ab a finite ideal
gas (N independent uniform points) gives exactly E[g_ab] = 1 for any r_max below the shortest
lattice vector (beyond it, each atom also sees its own images at the lattice vectors, which
adds the genuine lattice peaks of the periodic system). ASE's ``get_rdf`` (3.27+) uses N_a N_b
instead, so ASE = ours · N_b'/N_b; for a ≠ b the two agree. A species with a single atom has
no defined g_aa (N_a' = 0): that partial is NaN.

Binning: n_bins bins of equal width Δr = (r_max − r_min)/n_bins, left-closed [r_lo, r_hi)
(ASE's are right-closed (r_lo, r_hi], which only matters for distances exactly on an edge);
r is returned at the bin centres, as in ASE.

Smoothing (optional, ``smoothing_A`` = σ in Å): each pair at distance d contributes to bin k
the probability mass of a normalised Gaussian N(d, σ²) in that bin,
½[erf((r_hi − d)/(√2σ)) − erf((r_lo − d)/(√2σ))], instead of 1 to the bin containing d. This
conserves the pair count (for pairs farther than ~6σ from r_min and r_max, whose tails would
leave the range), and makes g differentiable in positions and cell. Pairs up to r_max + 6σ are
found so that the last bins are smoothed correctly. Without smoothing the histogram is hard
(gradient zero in positions; still differentiable in the cell through V).

Total: the Faber–Ziman sum of the partials, see :mod:`difftre_torch.observables.scattering`.
"""

from __future__ import annotations

import math

import torch

from ..neighbors import neighbor_pairs, pair_vectors
from .scattering import Composition, faber_ziman_weights

GAUSSIAN_TAIL_SIGMAS = 6.0  # a Gaussian's mass beyond 6σ is 2e-9


def partial_rdfs(
    positions: torch.Tensor,
    cell: torch.Tensor,
    numbers,
    r_max: float,
    n_bins: int,
    *,
    r_min: float = 0.0,
    smoothing_A: float | None = None,
    snapshots_per_chunk: int = 8,
) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """Partial RDFs g_ab(r) of each snapshot, normalised so that an ideal gas gives 1.

    positions: [B, N, 3] Å; cell: [B, 3, 3] Å, lattice vectors as rows (any triclinic cell,
    periodic in 3D); numbers: [N] atomic numbers (any integer labels work).
    r_max, r_min: range of the histogram in Å (0 ≤ r_min < r_max); n_bins: number of bins.
    smoothing_A: Gaussian width σ in Å, or None for a hard histogram (see the module docstring).
    snapshots_per_chunk: snapshots whose pairs are held in memory at once.

    Returns (r, partials): r [n_bins] bin centres in Å, and {(Z_a, Z_b): g_ab [B, n_bins]} for
    every pair of species present with Z_a ≤ Z_b (g_ab = g_ba), in the dtype and on the device
    of positions. The pair search runs without gradient (vesin); distances are recomputed in
    torch, so smoothed partials are differentiable in positions and cell.
    """
    positions, cell, numbers = _check_inputs(positions, cell, numbers)
    if not (n_bins >= 1 and int(n_bins) == n_bins):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    if not 0.0 <= r_min < r_max:
        raise ValueError(f"need 0 <= r_min < r_max, got r_min={r_min}, r_max={r_max}")
    if smoothing_A is not None and not smoothing_A > 0:
        raise ValueError(f"smoothing_A must be positive (Å) or None, got {smoothing_A}")
    n_bins = int(n_bins)
    volume = torch.linalg.det(cell).abs()  # [B] Å³
    if bool((volume < 1e-10).any()):
        raise ValueError("cell: a snapshot has zero volume; the RDF needs a 3D periodic cell")

    species, species_index = torch.unique(numbers, sorted=True, return_inverse=True)
    n_species = len(species)
    n_per_species = torch.bincount(species_index, minlength=n_species).to(positions)
    species_index = species_index.to(positions.device)

    bin_width = (r_max - r_min) / n_bins
    edges = r_min + bin_width * torch.arange(n_bins + 1, dtype=positions.dtype, device=positions.device)
    reach = 0.0 if smoothing_A is None else GAUSSIAN_TAIL_SIGMAS * smoothing_A
    cutoff = r_max + reach

    counts = []  # ordered pair counts [b, K, K, n_bins] per chunk
    n_batch = positions.shape[0]
    for start in range(0, n_batch, max(1, int(snapshots_per_chunk))):
        pos, box = positions[start : start + snapshots_per_chunk], cell[start : start + snapshots_per_chunk]
        pairs = neighbor_pairs(pos, box, cutoff, full=False)
        distance = pair_vectors(pos, box, pairs).norm(dim=-1)
        type_i, type_j = species_index[pairs.i], species_index[pairs.j]
        lo, hi = torch.minimum(type_i, type_j), torch.maximum(type_i, type_j)
        # A half list holds each unordered pair once; an a–a pair is two ordered pairs with
        # centre of species a, an a–b pair (a < b) one ordered pair with centre a.
        multiplicity = torch.where(lo == hi, 2.0, 1.0).to(positions.dtype)
        row = (pairs.batch * n_species + lo) * n_species + hi  # [P]
        if smoothing_A is None:
            bins = torch.floor((distance.detach() - r_min) / bin_width).long()
            keep = (bins >= 0) & (bins < n_bins) & (distance.detach() >= r_min)
            flat, mass = row[keep] * n_bins + bins[keep], multiplicity[keep]
        else:
            flat, mass = _gaussian_bin_masses(distance, row, multiplicity, edges, smoothing_A)
        n_rows = pos.shape[0] * n_species * n_species
        hist = torch.zeros(n_rows * n_bins, dtype=positions.dtype, device=positions.device)
        hist = hist.index_add(0, flat, mass)
        counts.append(hist.reshape(pos.shape[0], n_species, n_species, n_bins))
    counts = torch.cat(counts)

    shell_volume = (4.0 * math.pi / 3.0) * (edges[1:] ** 3 - edges[:-1] ** 3)  # [n_bins] Å³
    eye = torch.eye(n_species, dtype=positions.dtype, device=positions.device)
    n_pairs = n_per_species[:, None] * (n_per_species[None, :] - eye)  # N_a (N_b − δ_ab)
    defined = n_pairs > 0
    g = counts * volume[:, None, None, None] / (torch.where(defined, n_pairs, 1.0)[..., None] * shell_volume)
    g = torch.where(defined[..., None], g, torch.nan)

    centres = 0.5 * (edges[1:] + edges[:-1])
    zs = [int(z) for z in species.tolist()]
    partials = {(zs[a], zs[b]): g[:, a, b] for a in range(n_species) for b in range(a, n_species)}
    return centres, partials


def total_rdf(
    partials: dict[tuple[int, int], torch.Tensor],
    composition: Composition,
    weighting="neutron",
    *,
    q: float | None = None,
) -> torch.Tensor:
    """Faber–Ziman total g(r) = Σ_ab c_a c_b w_a w_b g_ab(r) / (Σ_a c_a w_a)², [B, n_bins].

    The sum runs over ordered pairs (a ≠ b counts twice; g_ab = g_ba), i.e. Σ_{a≤b} W_ab g_ab
    with W from :func:`~difftre_torch.observables.scattering.faber_ziman_weights`.
    partials: {(Z_a, Z_b): g_ab [B, n_bins]} from :func:`partial_rdfs`.
    composition: {Z: count or fraction} or an array of atomic numbers (e.g. ``numbers``).
    weighting: "neutron" (b_c, fm), "xray" (Z; with a scalar q, f(q) at that Q in Å⁻¹),
    "number" (w = 1) or {Z: w}.

    With the N_b − δ_ab normalisation of the partials, Σ c_a c_b g_ab (weighting="number")
    equals the species-blind g of :func:`partial_rdfs` up to O(1/N): the exact identity is
    g = Σ_ab [N_a (N_b − δ_ab) / (N (N − 1))] g_ab. An ideal gas gives exactly 1 in expectation
    in both.
    """
    if q is not None and torch.as_tensor(q).numel() != 1:
        raise ValueError("total_rdf takes a single Q; for S(Q) on a grid use total_structure_factor")
    weights = faber_ziman_weights(composition, weighting, q=None if q is None else float(q))
    total = None
    for pair, weight in weights.items():
        if pair not in partials:
            raise KeyError(f"no partial for species pair {pair}; have {sorted(partials)}")
        g_ab = partials[pair]
        if bool(torch.isnan(g_ab).all()):
            raise ValueError(f"partial {pair} is undefined (a species with a single atom has no g_aa)")
        term = weight.reshape(()).to(g_ab) * g_ab
        total = term if total is None else total + term
    unused = set(partials) - set(weights)
    if unused:
        raise ValueError(f"partials {sorted(unused)} involve species absent from the composition")
    return total


def _gaussian_bin_masses(distance, row, multiplicity, edges, sigma):
    """Flat histogram indices and masses of each pair's Gaussian over the bins it reaches."""
    n_bins = edges.shape[0] - 1
    bin_width = float(edges[1] - edges[0])
    r_min = float(edges[0])
    half_window = math.ceil(GAUSSIAN_TAIL_SIGMAS * sigma / bin_width) + 1
    centre_bin = torch.floor((distance.detach() - r_min) / bin_width).long()
    bins = centre_bin[:, None] + torch.arange(-half_window, half_window + 1, device=distance.device)
    inside = (bins >= 0) & (bins < n_bins)
    bins = bins.clamp(0, n_bins - 1)
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    d = distance[:, None]
    mass = 0.5 * (torch.erf((edges[bins + 1] - d) * scale) - torch.erf((edges[bins] - d) * scale))
    mass = mass * multiplicity[:, None]
    flat = row[:, None] * n_bins + bins
    return flat[inside], mass[inside]


def _check_inputs(positions, cell, numbers):
    if not isinstance(positions, torch.Tensor) or positions.ndim != 3 or positions.shape[-1] != 3:
        shape = tuple(positions.shape) if hasattr(positions, "shape") else type(positions).__name__
        raise ValueError(f"positions: expected a tensor of shape [B, N, 3], got {shape}")
    if not positions.is_floating_point():
        raise ValueError(f"positions: expected a floating-point tensor, got {positions.dtype}")
    cell = torch.as_tensor(cell, dtype=positions.dtype, device=positions.device)
    if cell.shape != (positions.shape[0], 3, 3):
        raise ValueError(f"cell: expected shape [{positions.shape[0]}, 3, 3] (rows), got {tuple(cell.shape)}")
    numbers = torch.as_tensor(numbers)
    if numbers.ndim != 1 or numbers.shape[0] != positions.shape[1]:
        raise ValueError(f"numbers: expected shape [{positions.shape[1]}], got {tuple(numbers.shape)}")
    if numbers.is_floating_point():
        raise ValueError("numbers: expected integer atomic numbers")
    if positions.shape[1] < 2:
        raise ValueError("an RDF needs at least two atoms")
    return positions, cell, numbers.cpu().long()
