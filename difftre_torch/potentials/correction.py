"""A learnable pair correction added to a fixed (or jointly trained) potential.

    U(x, h) = U_base(x, h) + ΔU(x, h),
    ΔU = Σ_{i<j, r_ij<r_c} Σ_k c_{k,t(i,j)} b_k(r_ij) + Σ_i (m_{Z_i} + e_{Z_i}),
    b_k(r) = exp(−((r − μ_k)/w)²) · f_c(r),   f_c(r) = ½ [1 + cos(π r / r_c)]  (r < r_c),
    m_s = −½ Σ_{s'} ρ_{s'} Σ_k c_{k,t(s,s')} I_k,   I_k = ∫₀^{r_c} 4π r² b_k(r) dr,

with t(i, j) the unordered species pair of atoms i, j, c_{k,t} in eV (zero at start, so U = U_base
before refinement) and e_Z a per-species energy shift in eV (zero at start). The pair sum runs over
every periodic image within r_c (Å); f_c takes energy and force smoothly to zero at r_c. m_s is
the pair terms' mean-field energy per atom at reference partial densities ρ_{s'} (Å⁻³, the
spec's ``reference_densities_per_A3``; none: m = 0): a constant that removes the bulk of the
offset the pair terms add to every energy (a dense solid has hundreds of pairs within r_c), so
the shifts e_Z only take the rest. It moves no force, no stress and no reweighting weight.

Why it exists: an ensemble average such as a total G(r) and the lattice parameters constrain a
few radial degrees of freedom. Refining a handful of pair coefficients against them is a
well-posed problem that leaves the many-body model as it was trained on DFT; refining every
weight of an equivariant network from the same data is not (see the recipe's README section).
The functional form is generic (no C₆/r⁶ assumed): whatever radial interaction the reference
method lacks (dispersion in PBE, for one), within r_c. The shifts e_Z take the constant energy
offset the pair terms add, so force matching on DFT energies does not fight the pair terms over a
constant; a structural experiment cannot fix them (they move no force and no average).

Units: Å, eV. Cells are rows. The pair list is a half list searched here, or a precomputed one
(half or full, e.g. the sampler's Verlet list) passed as ``pairs=``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from difftre_torch.neighbors import Pairs, neighbor_pairs, pair_vectors
from difftre_torch.potentials.base import takes_pairs


@dataclass
class PairCorrectionSpec:
    """What defines a :class:`PairCorrection` (saved beside its coefficients).

    species: atomic numbers it knows, e.g. [6, 7]. cutoff_A: r_c. centers_A: μ_k. width_A: w.
    reference_densities_per_A3: ρ_s of each species (same order), or None (no mean-field offset).
    """

    species: list[int]
    cutoff_A: float = 8.0
    centers_A: list[float] = field(default_factory=lambda: [3.0, 3.75, 4.5, 5.25, 6.0, 6.75, 7.5])
    width_A: float = 0.75
    reference_densities_per_A3: list[float] | None = None

    def __post_init__(self) -> None:
        if not self.species or len(set(self.species)) != len(self.species):
            raise ValueError(f"PairCorrectionSpec.species: expected distinct atomic numbers, got {self.species}")
        if self.cutoff_A <= 0 or self.width_A <= 0:
            raise ValueError(f"PairCorrectionSpec: cutoff_A and width_A must be > 0, got {self.cutoff_A}, {self.width_A}")
        if self.reference_densities_per_A3 is not None and (
                len(self.reference_densities_per_A3) != len(self.species)
                or min(self.reference_densities_per_A3) < 0):
            raise ValueError("PairCorrectionSpec.reference_densities_per_A3: expected one density ≥ 0 per "
                             f"species {self.species}, got {self.reference_densities_per_A3}")
        if not self.centers_A or max(self.centers_A) >= self.cutoff_A:
            raise ValueError(f"PairCorrectionSpec.centers_A: expected centres below cutoff_A={self.cutoff_A}, "
                             f"got {self.centers_A}")


def cosine_cutoff(r: torch.Tensor, cutoff_A: float) -> torch.Tensor:
    """f_c(r) = ½ [1 + cos(π r / r_c)] for r < r_c, else 0 (dimensionless, same shape as r)."""
    inside = r < cutoff_A
    value = 0.5 * (1.0 + torch.cos(math.pi * torch.clamp(r, max=cutoff_A) / cutoff_A))
    return torch.where(inside, value, torch.zeros_like(value))


def gaussian_basis(r: torch.Tensor, centers_A: torch.Tensor, width_A: float, cutoff_A: float) -> torch.Tensor:
    """b_k(r) = exp(−((r − μ_k)/w)²) f_c(r): r [P] Å, μ [K] Å → [P, K] (dimensionless)."""
    gauss = torch.exp(-(((r[:, None] - centers_A[None, :]) / width_A) ** 2))
    return gauss * cosine_cutoff(r, cutoff_A)[:, None]


def basis_volume_integrals(centers_A: torch.Tensor, width_A: float, cutoff_A: float,
                           points: int = 4001) -> torch.Tensor:
    """I_k = ∫₀^{r_c} 4π r² b_k(r) dr (Å³), [K], by the trapezoid rule on ``points`` points."""
    r = torch.linspace(0.0, cutoff_A, points, dtype=torch.float64)
    integrand = 4.0 * math.pi * r[:, None] ** 2 * gaussian_basis(r, centers_A.double().cpu(), width_A, cutoff_A)
    return torch.trapezoid(integrand, r, dim=0)


def species_densities(numbers, volume_A3: float, species: list[int]) -> list[float]:
    """Number density of each species (Å⁻³) in a cell of ``volume_A3`` holding atoms ``numbers``."""
    numbers = [int(z) for z in numbers]
    return [numbers.count(z) / float(volume_A3) for z in species]


def pair_type_index(species: list[int]) -> torch.Tensor:
    """[S, S] table of the unordered species-pair channel of species indices (s, s'), S(S+1)/2 channels."""
    n = len(species)
    table = torch.empty(n, n, dtype=torch.long)
    channel = 0
    for a in range(n):
        for b in range(a, n):
            table[a, b] = table[b, a] = channel
            channel += 1
    return table


class PairCorrection(nn.Module):
    """ΔU of the module docstring: ``coefficients`` [channels, K] eV, ``shifts`` [S] eV."""

    def __init__(self, spec: PairCorrectionSpec, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.spec = spec
        self.cutoff_A = float(spec.cutoff_A)
        species = torch.as_tensor(spec.species, dtype=torch.long)
        lookup = torch.full((int(species.max()) + 1,), -1, dtype=torch.long)
        lookup[species] = torch.arange(len(species))
        self.register_buffer("species_index", lookup.to(device), persistent=False)
        self.register_buffer("channel", pair_type_index(spec.species).to(device), persistent=False)
        self.register_buffer("centers", torch.as_tensor(spec.centers_A, dtype=dtype, device=device),
                             persistent=False)
        densities = spec.reference_densities_per_A3 or [0.0] * len(spec.species)
        self.register_buffer("reference_densities", torch.as_tensor(densities, dtype=dtype, device=device),
                             persistent=False)
        integrals = basis_volume_integrals(torch.as_tensor(spec.centers_A), spec.width_A, spec.cutoff_A)
        self.register_buffer("integrals", integrals.to(dtype=dtype, device=device), persistent=False)
        channels = len(spec.species) * (len(spec.species) + 1) // 2
        self.coefficients = nn.Parameter(torch.zeros(channels, len(spec.centers_A), dtype=dtype, device=device))
        self.shifts = nn.Parameter(torch.zeros(len(spec.species), dtype=dtype, device=device))

    def species_of(self, numbers: torch.Tensor) -> torch.Tensor:
        """Species index of each atom, [N]; an unknown element is an error naming it. The answer
        for the last ``numbers`` tensor is kept: an MD run passes the same one every step, and the
        check for unknown elements is a device-to-host sync."""
        cached = getattr(self, "_species_cache", None)
        if cached is not None and cached[0] is numbers:
            return cached[1]
        species = self._species_index_of(numbers)
        self._species_cache = (numbers, species)
        return species

    def _species_index_of(self, numbers: torch.Tensor) -> torch.Tensor:
        numbers = numbers.to(self.species_index.device)
        known = (numbers < self.species_index.shape[0]) & (numbers >= 0)
        index = torch.where(known, self.species_index[numbers.clamp(0, self.species_index.shape[0] - 1)], -1)
        if bool((index < 0).any()):
            missing = sorted(set(numbers[index < 0].tolist()))
            raise ValueError(f"PairCorrection: atomic numbers {missing} are not among its species {self.spec.species}")
        return index

    def mean_field(self) -> torch.Tensor:
        """m_s = −½ Σ_{s'} ρ_{s'} Σ_k c_{k,t(s,s')} I_k, eV per atom of each species, [S]."""
        per_channel = self.coefficients @ self.integrals  # [channels] eV Å³
        return -0.5 * (per_channel[self.channel] * self.reference_densities[None, :]).sum(-1)

    def pair_energy(self, r: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """Σ_k c_{k,t} b_k(r) for distances r [P] Å of pair channels t [P] → [P] eV."""
        basis = gaussian_basis(r, self.centers, self.spec.width_A, self.cutoff_A)
        return (basis * self.coefficients[channel]).sum(-1)

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor,
                pairs: Pairs | None = None) -> torch.Tensor:
        """ΔU [B] eV for positions [B, N, 3] Å, cell [B, 3, 3] Å (rows), numbers [N]; ``pairs``
        must cover every pair within r_c (pairs beyond it contribute zero; a full list is halved)."""
        B = positions.shape[0]
        species = self.species_of(numbers)
        if pairs is None:
            pairs = neighbor_pairs(positions, cell, self.cutoff_A, full=False)
        r = pair_vectors(positions, cell, pairs).norm(dim=-1)
        pair = self.pair_energy(r, self.channel[species[pairs.i], species[pairs.j]])
        if pairs.full:
            pair = 0.5 * pair
        energy = torch.zeros(B, dtype=pair.dtype, device=pair.device).index_add(0, pairs.batch, pair)
        return energy + (self.shifts + self.mean_field())[species].sum()


class CorrectedPotential(nn.Module):
    """U = U_base + ΔU (:class:`PairCorrection`). With ``train_base=False`` the base's parameters
    are frozen (``requires_grad=False``) and only ΔU is refined.

    ``r_max_A`` is the larger of the two cut-offs, so a sampler that builds one full pair list for
    it (``pairs=``) serves both: the base drops the pairs beyond its own cut-off.
    """

    def __init__(self, base: nn.Module, correction: PairCorrection, train_base: bool = False) -> None:
        super().__init__()
        self.base = base
        self.correction = correction
        self.train_base = bool(train_base)
        for p in base.parameters():
            p.requires_grad_(self.train_base)
        base_cut = getattr(base, "r_max_A", None) or getattr(base, "cutoff_A", None)
        self.base_takes_pairs = base_cut is not None and takes_pairs(base)
        self.r_max_A = max(float(base_cut or 0.0), correction.cutoff_A)
        self.data_dtype = getattr(base, "data_dtype", None)
        if hasattr(base, "evaluate_native"):  # the base derives its own forces (DeePMD-kit)
            self.evaluate_native = self._evaluate_native

    def _evaluate_native(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, *,
                         forces: bool = True, stress: bool = False, create_graph: bool = False,
                         pairs: Pairs | None = None):
        """The base's own energy, forces and stress plus the correction's by autograd (over
        ``pairs`` where a sampler keeps a list)."""
        import functools

        from difftre_torch.potentials.base import evaluate

        base = self.base.evaluate_native(positions, cell, numbers, forces=forces, stress=stress,
                                         create_graph=create_graph)
        correction = self.correction if pairs is None else functools.partial(self.correction, pairs=pairs)
        corr = evaluate(correction, positions, cell, numbers, forces=forces, stress=stress,
                        create_graph=create_graph)
        add = lambda a, b: None if a is None else a + b.to(a.dtype)  # noqa: E731
        return replace(base, energy=base.energy + corr.energy.to(base.energy.dtype),
                       forces=add(base.forces, corr.forces), stress=add(base.stress, corr.stress))

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor,
                pairs: Pairs | None = None) -> torch.Tensor:
        if pairs is None and self.base_takes_pairs:
            pairs = neighbor_pairs(positions, cell, self.r_max_A, full=True)
        base = self.base(positions, cell, numbers, pairs=pairs) if self.base_takes_pairs and pairs is not None \
            else self.base(positions, cell, numbers)
        return base + self.correction(positions, cell, numbers, pairs=pairs).to(base.dtype)

    def spec_json(self) -> dict:
        return {"correction": asdict(self.correction.spec), "train_base": self.train_base}


def force_jacobian(correction: PairCorrection, positions: torch.Tensor, cell: torch.Tensor,
                   numbers: torch.Tensor) -> torch.Tensor:
    """∂F/∂c of one snapshot: the forces (eV/Å) of each pair coefficient at value 1, [N·3, channels·K].

    The pair terms are linear in c, so F_ΔU = J c (the shifts move no force). positions [N, 3] Å,
    cell [3, 3] Å rows. Leaves the correction's coefficients unchanged."""
    x = positions.detach()[None].to(correction.coefficients.dtype).requires_grad_(True)
    h = cell.detach()[None].to(x.dtype)
    pairs = neighbor_pairs(x, h, correction.cutoff_A, full=False)
    species = correction.species_of(numbers)
    r = pair_vectors(x, h, pairs).norm(dim=-1)
    basis = gaussian_basis(r, correction.centers, correction.spec.width_A, correction.cutoff_A)  # [P, K]
    channel = correction.channel[species[pairs.i], species[pairs.j]]
    n_channels, K = correction.coefficients.shape
    columns = []
    for t in range(n_channels):
        mine = (channel == t).to(basis.dtype)[:, None]
        for k in range(K):
            (g,) = torch.autograd.grad((basis[:, k] * mine[:, 0]).sum(), x, retain_graph=True)
            columns.append(-g[0].reshape(-1))
    return torch.stack(columns, dim=1)


def energy_gradient(correction: PairCorrection, positions: torch.Tensor, cell: torch.Tensor,
                    numbers: torch.Tensor) -> torch.Tensor:
    """∂ΔU/∂c of one snapshot, [channels·K] eV per unit coefficient.

    ΔU is linear in c (the pair sum and the mean field), so ΔU = e · c + Σ_i shift_{s(i)}.
    positions [N, 3] Å, cell [3, 3] Å rows. Leaves the correction's coefficients unchanged."""
    x = positions.detach()[None].to(correction.coefficients.dtype)
    h = cell.detach()[None].to(x.dtype)
    (g,) = torch.autograd.grad(correction(x, h, numbers).sum(), correction.coefficients)
    return g.reshape(-1).detach()
