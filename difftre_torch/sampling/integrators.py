"""Batched Langevin integrator steps for R replicas of one system: pure functions on tensors
(plus the force pass they need, :func:`forces_and_stress`, and ASE's barostat-mass heuristic).

Units are ASE's: Å, eV, amu, time in ASE units (1 fs = ``ase.units.fs``), so momenta are in
amu·Å/t_ASE and p²/m is in eV. Cells are rows (ASE and nequip convention; torch-sim stores
columns). Batch dimension first: positions and momenta [R, N, 3], cells and cell momenta
[R, 3, 3], per-replica scalars [R]; masses [N] are shared by all replicas.

The step is BAOAB Langevin dynamics for the atoms (Leimkuhler & Matthews, J. Chem. Phys. 138,
174102 (2013), doi:10.1063/1.4802990) with, for replicas under pressure, Langevin–Hoover
dynamics of the cell (Quigley & Probert, J. Chem. Phys. 120, 11432 (2004),
doi:10.1063/1.1755657) — the scheme of ASE's ``LangevinBAOAB``, rewritten for a batch. With
friction γ (1/t), temperature kT (eV), barostat mass W (eV·t²), cell friction γ_c = 1/P_tau and
n_dof = 3N − 3 (centre of mass fixed):

    B   p_ε += ½Δt f_ε;          p += ½Δt F
    A   h ← h E, x ← x E with E = exp(½Δt p_ε/W)ᵀ;     x += ½Δt p/m
    O   p ← p exp(−(γ·1 + G)Δt)ᵀ + √(m kT (1 − e^{−2γΔt})) ξ,  G = (p_ε + tr(p_ε)/n_dof · 1)/W
        p_ε ← e^{−γ_cΔt} p_ε + √(W kT (1 − e^{−2γ_cΔt})) sym(ξ_c),  sym(a) = (a + aᵀ)/2
    A   x += ½Δt p/m;     h ← h E, x ← x E
    (new forces F = −∂U/∂x and stress σ at t + Δt)
        f_ε = K − Vσ − P V·1 + tr(K)/n_dof · 1,  K = Σ_i p_i ⊗ p_i / m_i
    B   p += ½Δt F;     p_ε += ½Δt f_ε

After every change of p the centre-of-mass momentum is removed (P_com = 0: the FixCom
constraint, 3 fewer degrees of freedom). Hydrostatic cells keep their shape: p_ε = s·1, the
scalar s is driven by tr f_ε and by one Gaussian number, exactly ASE's hydrostatic branch
(V ← V e^{3Δt s/(2W)}). NVT replicas (``barostat`` False) have p_ε = 0 throughout and their
step is plain BAOAB, which samples the same canonical ensemble as ASE's ``Langevin`` (the
Vanden-Eijnden–Ciccotti discretisation of the same SDE, dp = F dt − γp dt + √(2γmkT) dW).
The drag G carries tr(p_ε)/n_dof on its diagonal only, as in Quigley–Probert; ASE 3.29's
``LangevinBAOAB`` adds it to all nine elements (a NumPy broadcast), so full-cell runs differ
from ASE's there and only there (see :mod:`difftre_torch.sampling.batched`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from difftre_torch.neighbors import det3
from difftre_torch.potentials.base import Potential


@dataclass
class LangevinState:
    """Dynamic state of R replicas.

    positions: [R, N, 3] Å, unwrapped (as ASE keeps them). momenta: [R, N, 3] amu·Å/t_ASE.
    cells: [R, 3, 3] Å, rows. cell_momenta: [R, 3, 3] eV·t_ASE (p_ε; zero for NVT replicas).
    forces: [R, N, 3] eV/Å at the current positions. cell_force: [R, 3, 3] eV (f_ε, computed
    from the mid-step momenta of the last step, as ASE does; zero for NVT replicas).
    """

    positions: torch.Tensor
    momenta: torch.Tensor
    cells: torch.Tensor
    cell_momenta: torch.Tensor
    forces: torch.Tensor
    cell_force: torch.Tensor

    FIELDS = ("positions", "momenta", "cells", "cell_momenta", "forces", "cell_force")

    def clone(self) -> "LangevinState":
        return LangevinState(*(getattr(self, name).clone() for name in self.FIELDS))


@dataclass
class LangevinParameters:
    """Constants of the step, per replica where they may differ.

    timestep: Δt in ASE time units. friction: γ in 1/t_ASE (ASE's ``friction``).
    kT: [R] eV. masses: [N] amu. pressure: [R] eV/Å³ (external hydrostatic pressure).
    barostat: [R] bool, replica's cell is dynamic (NPT). barostat_mass: [R] W in eV·t_ASE².
    cell_friction: γ_c = 1/P_tau in 1/t_ASE. hydrostatic: cell shape fixed (volume only).
    Derived on creation: n_dof = 3N − 3; any_barostat (a Python bool).
    """

    timestep: float
    friction: float
    kT: torch.Tensor
    masses: torch.Tensor
    pressure: torch.Tensor
    barostat: torch.Tensor
    barostat_mass: torch.Tensor
    cell_friction: float
    hydrostatic: bool

    def __post_init__(self) -> None:
        self.n_dof = 3 * int(self.masses.shape[0]) - 3  # the centre of mass is fixed
        self.any_barostat = bool(self.barostat.any())  # host-side, decided once


def barostat_mass(barostat_tau_fs: float, n_atoms: int) -> float:
    """ASE LangevinBAOAB's heuristic cell mass W = ((P_tau/4)/C · N^(1/6))², C = 1.66 fs (a cell
    fluctuation period of about P_tau/4)."""
    return float(((barostat_tau_fs / 4.0) / 1.66 * n_atoms ** (1.0 / 6.0)) ** 2)


def forces_and_stress(
    potential: Potential,
    positions: torch.Tensor,
    cells: torch.Tensor,
    numbers: torch.Tensor,
    stress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """F = −∂U/∂x [R, N, 3] eV/Å and, if asked, σ = (1/V) ∂U/∂ε [R, 3, 3] eV/Å³ (ASE sign), both
    float64 and detached: :func:`~difftre_torch.potentials.base.evaluate`'s definitions (strain
    x → x(1 + ε), h → h(1 + ε), rows) in one energy + backward pass, with the volume from
    :func:`~difftre_torch.neighbors.det3` (``torch.linalg.det`` on a batch stalls on busy CPUs).
    A potential with ``evaluate_native`` (its own forces and stress) gives them instead."""
    target = getattr(potential, "func", potential)  # functools.partial(potential, pairs=...)
    native = getattr(target, "evaluate_native", None)
    if native is not None:  # a model that derives its own forces (DeePMD-kit): no second backward
        ev = native(positions.detach(), cells.detach(), numbers, stress=stress, **getattr(potential, "keywords", {}))
        return ev.forces.detach().to(torch.float64), None if not stress else ev.stress.detach().to(torch.float64)
    x = positions.detach().requires_grad_(True)
    h = cells.detach()
    with torch.enable_grad():
        if stress:
            strain = torch.zeros_like(h, requires_grad=True)
            deform = torch.eye(3, dtype=h.dtype, device=h.device) + strain
            energy = potential(torch.bmm(x, deform), torch.bmm(h, deform), numbers)
            grad_x, grad_strain = torch.autograd.grad(energy.sum(), [x, strain])
        else:
            energy = potential(x, h, numbers)
            (grad_x,) = torch.autograd.grad(energy.sum(), [x])
    if energy.shape != (positions.shape[0],):
        raise ValueError(f"potential returned energy of shape {tuple(energy.shape)}, expected [{positions.shape[0]}]")
    forces = -grad_x.detach().to(torch.float64)
    if not stress:
        return forces, None
    return forces, (grad_strain.detach() / det3(h).abs()[:, None, None]).to(torch.float64)


def remove_com_momentum(momenta: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """p_i − m_i Σ_j p_j / Σ_j m_j: zero total momentum per replica. [R, N, 3] → [R, N, 3]."""
    total = momenta.sum(dim=1, keepdim=True)
    return momenta - masses[None, :, None] * total / masses.sum()


def maxwell_boltzmann_momenta(masses: torch.Tensor, kT: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Momenta p = √(m kT) ξ with zero total momentum (ASE's MaxwellBoltzmannDistribution followed
    by Stationary). masses [N] amu, kT [R] eV, noise ξ [R, N, 3] standard normal."""
    momenta = noise * torch.sqrt(masses[None, :, None] * kT[:, None, None])
    return remove_com_momentum(momenta, masses)


def kinetic_tensor(momenta: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """K = Σ_i p_i ⊗ p_i / m_i, [R, 3, 3] eV; tr K = 2 E_kin."""
    return torch.einsum("rni,rnj->rij", momenta / masses[None, :, None], momenta)


def kinetic_temperature_K(momenta: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """T = 2 E_kin / (n_dof k_B) with n_dof = 3N − 3, [R] K (ASE's get_temperature with FixCom)."""
    from ase import units

    n_dof = 3 * masses.shape[0] - 3
    return kinetic_tensor(momenta, masses).diagonal(dim1=1, dim2=2).sum(-1) / (n_dof * units.kB)


def cell_force(
    momenta: torch.Tensor,
    stress: torch.Tensor,
    volume: torch.Tensor,
    params: LangevinParameters,
) -> torch.Tensor:
    """f_ε = K − Vσ − PV·1 + tr(K)/n_dof · 1 (ASE sign: σ > 0 tensile), [R, 3, 3] eV.

    Hydrostatic: tr(f_ε)·1 (the scalar force on s, kept as a multiple of 1). Zero for NVT
    replicas. stress: [R, 3, 3] eV/Å³; volume: [R] Å³.
    """
    K = kinetic_tensor(momenta, params.masses)
    eye = torch.eye(3, dtype=K.dtype, device=K.device)
    trace = K.diagonal(dim1=1, dim2=2).sum(-1)
    force = (K - volume[:, None, None] * stress
             - (params.pressure * volume)[:, None, None] * eye
             + (trace / params.n_dof)[:, None, None] * eye)
    if params.hydrostatic:
        force = force.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * eye
    return torch.where(params.barostat[:, None, None], force, torch.zeros_like(force))


def expm3(matrices: torch.Tensor, squarings: int = 6, order: int = 10) -> torch.Tensor:
    """exp(A) of [R, 3, 3] matrices by scaling and squaring: the Taylor series of A/2^s to
    ``order``, squared s times. Batched matrix products only (``torch.linalg.matrix_exp`` goes
    through threaded LAPACK-style kernels that stall on oversubscribed CPU cores). Relative error
    below 1e-14 for ‖A‖ ≤ 2^s/2 = 32; the step's arguments are ~1e-3."""
    scaled = matrices / float(2 ** squarings)
    eye = torch.eye(3, dtype=matrices.dtype, device=matrices.device).expand_as(matrices)
    result, term = eye.clone(), eye
    for k in range(1, order + 1):
        term = torch.bmm(term, scaled) / k
        result = result + term
    for _ in range(squarings):
        result = torch.bmm(result, result)
    return result


def _scale_cell(state: LangevinState, params: LangevinParameters, half_dt: float) -> None:
    """h ← h E, x ← x E with E = exp(½Δt p_ε/W)ᵀ (fractional coordinates kept)."""
    E = expm3(half_dt * state.cell_momenta / params.barostat_mass[:, None, None])
    E = E.transpose(1, 2)
    state.cells = torch.bmm(state.cells, E)
    state.positions = torch.bmm(state.positions, E)


def baoab_drift(state: LangevinState, params: LangevinParameters, noise: torch.Tensor) -> LangevinState:
    """B A O A of one step: returns the state at t + Δt with mid-step momenta (the final B waits
    for the new forces, :func:`baoab_kick`). ``state`` is not modified.

    noise: [R, 3N + 9] standard normal numbers: the first 3N for the atoms, the last 9 for the
    cell (ξ_c as a 3×3 matrix; hydrostatic uses its first entry).
    """
    dt = params.timestep
    R, N, _ = state.positions.shape
    m = params.masses[None, :, None]
    new = state.clone()
    barostat = params.any_barostat
    if barostat:
        new.cell_momenta = new.cell_momenta + 0.5 * dt * new.cell_force
    new.momenta = remove_com_momentum(new.momenta + 0.5 * dt * new.forces, params.masses)
    if barostat:
        _scale_cell(new, params, 0.5 * dt)
    new.positions = new.positions + 0.5 * dt * new.momenta / m
    # O: friction (with the barostat's drag), then the random kick
    c1 = math.exp(-params.friction * dt)
    kick = torch.sqrt(params.kT * (1.0 - c1 * c1))[:, None, None] * torch.sqrt(m)
    xi = noise[:, : 3 * N].reshape(R, N, 3)
    if barostat:
        eye = torch.eye(3, dtype=new.cells.dtype, device=new.cells.device)
        trace = new.cell_momenta.diagonal(dim1=1, dim2=2).sum(-1)
        drag = (new.cell_momenta + (trace / params.n_dof)[:, None, None] * eye) / params.barostat_mass[:, None, None]
        decay = expm3(-(params.friction * eye + drag) * dt).transpose(1, 2)
        new.momenta = torch.bmm(new.momenta, decay)
    else:
        new.momenta = c1 * new.momenta
    new.momenta = remove_com_momentum(new.momenta + kick * xi, params.masses)
    if barostat:
        c1_cell = math.exp(-params.cell_friction * dt)
        cell_kick = torch.sqrt(params.barostat_mass * params.kT * (1.0 - c1_cell * c1_cell))
        xi_cell = noise[:, 3 * N: 3 * N + 9].reshape(R, 3, 3)
        if params.hydrostatic:
            xi_cell = xi_cell[:, :1, :1] * eye
        else:
            xi_cell = 0.5 * (xi_cell + xi_cell.transpose(1, 2))
        cell_momenta = c1_cell * new.cell_momenta + cell_kick[:, None, None] * xi_cell
        new.cell_momenta = torch.where(params.barostat[:, None, None], cell_momenta,
                                       torch.zeros_like(cell_momenta))
    new.positions = new.positions + 0.5 * dt * new.momenta / m
    if barostat:
        _scale_cell(new, params, 0.5 * dt)
    return new


def baoab_kick(
    state: LangevinState,
    params: LangevinParameters,
    forces: torch.Tensor,
    stress: torch.Tensor | None,
) -> LangevinState:
    """The final B of the step, given the forces [R, N, 3] (and, with a barostat, the stress
    [R, 3, 3] eV/Å³) at the drifted positions. Modifies and returns ``state``."""
    dt = params.timestep
    state.forces = forces
    if params.any_barostat:
        if stress is None:
            raise ValueError("baoab_kick: replicas under pressure need the stress")
        volume = det3(state.cells).abs()
        state.cell_force = cell_force(state.momenta, stress, volume, params)
    state.momenta = remove_com_momentum(state.momenta + 0.5 * dt * forces, params.masses)
    if params.any_barostat:
        state.cell_momenta = state.cell_momenta + 0.5 * dt * state.cell_force
    return state


_COMPILED: dict[str, object] = {}


def compiled_step() -> tuple:
    """(drift, kick): :func:`baoab_drift` and :func:`baoab_kick` under ``torch.compile``
    (Inductor, static shapes), made once per process. The arithmetic is the same; the compiled
    kernels fuse the step's many small operations, which is what pays on a GPU, where an eager
    step is bound by kernel launches. Each new batch shape, dtype, device or value of the
    step's Python constants (Δt, γ, whether any replica has a barostat) compiles again."""
    if not _COMPILED:
        _COMPILED["drift"] = torch.compile(baoab_drift, dynamic=False)
        _COMPILED["kick"] = torch.compile(baoab_kick, dynamic=False)
    return _COMPILED["drift"], _COMPILED["kick"]
