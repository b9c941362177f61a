"""Thermodynamic and cell observables: pressure and stress from the virial; lattice and density.

Conventions: ASE units (Å, eV, K, amu); pressure and stress in eV/Å³ (1 GPa = 6.2415e-3 eV/Å³,
``ase.units.GPa``); stress with ASE's sign (positive = tensile), so pressure is −tr σ / 3.
Cell vectors are rows.

Pressure and stress depend on the potential (θ-dependent observables): with
``create_graph=True`` they stay differentiable in θ, which the DiffTRe gradient needs for its
⟨∂O/∂θ⟩ term. The kinetic part uses its canonical average, since snapshots store no momenta:

    σ_total = σ_conf − (n_dof k_B T / (3V)) 𝟙,   P = n_dof k_B T / (3V) − tr σ_conf / 3,

with σ_conf = (1/V) ∂U/∂ε and n_dof = 3N − 3 by default (centre of mass fixed, as the samplers
do), matching the kinetic term ASE's barostats control.

Lattice lengths, interlayer spacing and density depend on the snapshot's cell alone
(θ-independent): they are computed once per snapshot and reweighted like an RDF.
"""

from __future__ import annotations

import torch
from ase import units

from difftre_torch.potentials.base import Potential, cell_volume, evaluate

AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660  # 1 amu/Å³ in g/cm³


def kinetic_pressure(n_atoms: int, volume: torch.Tensor, temperature_K: float,
                     degrees_of_freedom: int | None = None) -> torch.Tensor:
    """Canonical kinetic pressure n_dof k_B T / (3V), [B] eV/Å³ (n_dof = 3N − 3 by default)."""
    n_dof = 3 * n_atoms - 3 if degrees_of_freedom is None else degrees_of_freedom
    return n_dof * units.kB * temperature_K / (3.0 * volume)


def total_stress(configurational_stress: torch.Tensor, volume: torch.Tensor, n_atoms: int,
                 temperature_K: float, degrees_of_freedom: int | None = None) -> torch.Tensor:
    """σ_total = σ_conf − (n_dof k_B T / 3V) 𝟙 from σ_conf [B, 3, 3] and V [B] → [B, 3, 3]."""
    kinetic = kinetic_pressure(n_atoms, volume, temperature_K, degrees_of_freedom)
    eye = torch.eye(3, dtype=configurational_stress.dtype, device=configurational_stress.device)
    return configurational_stress - kinetic[:, None, None] * eye


def pressure_from_stress(stress: torch.Tensor) -> torch.Tensor:
    """P = −tr σ / 3 for stress [B, 3, 3] → [B] (same units)."""
    return -torch.diagonal(stress, dim1=-2, dim2=-1).sum(-1) / 3.0


def stress_tensor(
    potential: Potential,
    positions: torch.Tensor,
    cell: torch.Tensor,
    numbers: torch.Tensor,
    temperature_K: float,
    *,
    degrees_of_freedom: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Total stress σ_total = σ_conf − (n_dof k_B T / 3V) 𝟙, [B, 3, 3] eV/Å³ (ASE sign)."""
    ev = evaluate(potential, positions, cell, numbers, forces=False, stress=True,
                  create_graph=create_graph)
    return total_stress(ev.stress, ev.volume, positions.shape[1], temperature_K, degrees_of_freedom)


def pressure(
    potential: Potential,
    positions: torch.Tensor,
    cell: torch.Tensor,
    numbers: torch.Tensor,
    temperature_K: float,
    *,
    degrees_of_freedom: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Instantaneous virial pressure P = n_dof k_B T/(3V) − tr σ_conf / 3, [B] eV/Å³."""
    return pressure_from_stress(
        stress_tensor(potential, positions, cell, numbers, temperature_K,
                      degrees_of_freedom=degrees_of_freedom, create_graph=create_graph)
    )


def lattice_lengths(cell: torch.Tensor) -> torch.Tensor:
    """|a|, |b|, |c| of cells [B, 3, 3] (rows) → [B, 3] Å."""
    return cell.norm(dim=-1)


def lattice_angles(cell: torch.Tensor) -> torch.Tensor:
    """α (b,c), β (a,c), γ (a,b) in degrees, [B, 3]."""
    a, b, c = cell[:, 0], cell[:, 1], cell[:, 2]

    def angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
        return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))

    return torch.stack([angle(b, c), angle(a, c), angle(a, b)], dim=-1)


def interlayer_spacing(cell: torch.Tensor, layers_per_cell: int) -> torch.Tensor:
    """Mean layer spacing of a layered crystal stacked along the third cell vector, [B] Å.

    The height of the cell normal to the (a, b) plane, V / |a × b|, divided by the number of
    layers in the cell (2 for AB stacking in one c repeat).
    """
    normal = torch.linalg.cross(cell[:, 0], cell[:, 1])
    return cell_volume(cell) / normal.norm(dim=-1) / layers_per_cell


def mass_density(cell: torch.Tensor, masses_amu: torch.Tensor) -> torch.Tensor:
    """Mass density Σm / V in g/cm³, [B]; ``masses_amu``: [N]."""
    return masses_amu.sum() / cell_volume(cell) * AMU_PER_A3_TO_G_PER_CM3
