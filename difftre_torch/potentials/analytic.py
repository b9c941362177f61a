"""Analytic potentials with trainable parameters, for tests, examples and the default job.

Both follow the contract of :mod:`difftre_torch.potentials.base`:
``energy = potential(positions [B,N,3] Å, cell [B,3,3] Å rows, numbers [N]) -> [B] eV``.
"""

from __future__ import annotations

import torch
from torch import nn

from difftre_torch.neighbors import Pairs, neighbor_pairs, pair_vectors


class LennardJones(nn.Module):
    """Truncated and shifted Lennard-Jones pair potential, one species (all pairs alike).

    U = Σ_{i<j, r_ij<r_c} φ(r_ij) − φ(r_c),  φ(r) = 4ε[(σ/r)¹² − (σ/r)⁶]

    σ (Å) and ε (eV) are trainable parameters; the cutoff r_c (Å) is fixed (default 3σ₀ for
    the initial σ₀), so a change of σ does not move the cutoff. The energy shift matches ASE's
    ``LennardJones(smooth=False)``; forces are not shifted (a small jump at r_c).
    """

    def __init__(
        self,
        sigma_A: float = 1.0,
        epsilon_eV: float = 1.0,
        cutoff_A: float | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.sigma = nn.Parameter(torch.tensor(float(sigma_A), dtype=dtype))
        self.epsilon = nn.Parameter(torch.tensor(float(epsilon_eV), dtype=dtype))
        self.cutoff_A = float(cutoff_A if cutoff_A is not None else 3.0 * sigma_A)

    def pair_energy(self, r: torch.Tensor) -> torch.Tensor:
        """φ(r) − φ(r_c) for distances r (Å), eV."""
        def phi(x: torch.Tensor) -> torch.Tensor:
            s6 = (self.sigma / x) ** 6
            return 4.0 * self.epsilon * (s6 * s6 - s6)

        return phi(r) - phi(torch.as_tensor(self.cutoff_A, dtype=r.dtype, device=r.device))

    def forward(
        self,
        positions: torch.Tensor,
        cell: torch.Tensor,
        numbers: torch.Tensor,
        pairs: Pairs | None = None,
    ) -> torch.Tensor:
        """Energy [B] eV. ``pairs``: optional precomputed pairs (e.g. a Verlet list with a skin,
        half or full) covering every pair within the cut-off; pairs beyond it contribute zero,
        a full list is counted once per unordered pair. Without it the pairs are searched here."""
        energy = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
        if pairs is None:
            pairs = neighbor_pairs(positions, cell, self.cutoff_A, full=False)
            r = pair_vectors(positions, cell, pairs).norm(dim=-1)
            return energy.index_add(0, pairs.batch, self.pair_energy(r))
        r = pair_vectors(positions, cell, pairs).norm(dim=-1)
        inside = r.detach() < self.cutoff_A
        batch = pairs.batch
        if r.device.type == "cpu":  # drop the skin's pairs (on a GPU a mask avoids the host sync)
            keep = inside.nonzero().squeeze(1)
            r, batch = r[keep], batch[keep]
            pair = self.pair_energy(r)
        else:  # pairs beyond r_c are evaluated at r_c (finite) and zeroed, so no NaN enters the graph
            pair = self.pair_energy(torch.where(inside, r, torch.full_like(r, self.cutoff_A)))
            pair = torch.where(inside, pair, torch.zeros_like(pair))
        if pairs.full:
            pair = 0.5 * pair
        return energy.index_add(0, batch, pair)


class HarmonicOscillators(nn.Module):
    """Independent 3D harmonic oscillators tethered to fixed anchors.

    U = ½ k Σ_i |x_i − a_i|²  with trainable stiffness k (eV/Å²), anchors a: [N, 3] Å.
    Positions are used as given (not wrapped): ASE MD keeps unwrapped coordinates. In the
    canonical ensemble each Cartesian component has ⟨(x − a)²⟩ = k_B T / k.
    """

    def __init__(self, anchors_A: torch.Tensor, stiffness_eV_A2: float = 1.0) -> None:
        super().__init__()
        anchors = torch.as_tensor(anchors_A)
        self.register_buffer("anchors", anchors.clone())
        self.stiffness = nn.Parameter(torch.tensor(float(stiffness_eV_A2), dtype=anchors.dtype,
                                                   device=anchors.device))

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        displacement = positions - self.anchors
        return 0.5 * self.stiffness * (displacement * displacement).sum(dim=(-1, -2))
