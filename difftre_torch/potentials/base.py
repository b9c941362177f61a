"""The potential contract, and energy, forces and stress derived from it by autograd.

A *potential* is any ``torch.nn.Module`` (or callable) with

    energy = potential(positions, cell, numbers)

* positions: [B, N, 3] Å, a batch of B snapshots of one N-atom system;
* cell: [B, 3, 3] Å, lattice vectors as rows (ASE and nequip convention), periodic in 3D;
* numbers: [N] int64 atomic numbers (the same for every snapshot);
* energy: [B] eV, differentiable in the potential's trainable parameters θ and in positions and
  cell.

Forces and stress are not part of the contract: :func:`evaluate` takes them by autograd,
F = −∂U/∂x and the stress (ASE sign convention) σ = (1/V) ∂U/∂ε, where the homogeneous strain
ε deforms positions and cell as x → x (1 + ε), h → h (1 + ε) (row vectors). The virial
W = −V σ (eV); for a pair potential W = Σ_pairs r_ij ⊗ f_ij with f_ij the force on j.
With ``create_graph=True`` the forces and stress stay differentiable in θ (force matching,
pressure targets).

A potential whose model derives its own forces and stress in the same pass (DeePMD-kit) may
offer ``evaluate_native(positions, cell, numbers, *, forces, stress, create_graph) -> Evaluation``
with these same conventions; :func:`evaluate` then uses it instead of a second backward.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Protocol

import torch


class Potential(Protocol):
    """Anything mapping (positions [B,N,3] Å, cell [B,3,3] Å rows, numbers [N]) to energy [B] eV."""

    def __call__(
        self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor
    ) -> torch.Tensor: ...


def takes_pairs(potential) -> bool:
    """True if ``potential``'s forward accepts a precomputed neighbour list, ``pairs=``
    (:class:`difftre_torch.neighbors.Pairs`), beside the contract's three arguments."""
    try:
        return "pairs" in inspect.signature(getattr(potential, "forward", potential)).parameters
    except (TypeError, ValueError):
        return False


def pair_list_request(potential) -> tuple[float, bool] | None:
    """(cut-off Å, full list?) if ``potential``'s forward takes a precomputed ``pairs=`` list and
    states its cut-off (``cutoff_A`` or ``r_max_A``); None otherwise. LennardJones takes a half
    list, any other potential gets a full one."""
    from difftre_torch.potentials.analytic import LennardJones

    cutoff = getattr(potential, "cutoff_A", None) or getattr(potential, "r_max_A", None)
    if not takes_pairs(potential) or cutoff is None:
        return None
    return float(cutoff), not isinstance(potential, LennardJones)


class WithPairs:
    """``potential`` bound to a precomputed pair list of the snapshots it will be called on: the
    contract's ``energy = potential(positions, cell, numbers)``, with ``pairs=`` added. Any other
    attribute is the potential's own; its ``evaluate_native`` gets the list too where it takes one.

    The list holds integer cell shifts, so it stays exact for the strained copies
    :func:`evaluate` makes (ε = 0 there; only derivatives are taken).
    """

    def __init__(self, potential, pairs) -> None:
        self.potential = potential
        self.pairs = pairs

    def __call__(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        return self.potential(positions, cell, numbers, pairs=self.pairs)

    def __getattr__(self, name: str):
        attr = getattr(self.potential, name)
        if name == "evaluate_native" and "pairs" in inspect.signature(attr).parameters:
            return functools.partial(attr, pairs=self.pairs)
        return attr


@dataclass
class Evaluation:
    """Outputs of :func:`evaluate` for a batch of B snapshots of N atoms.

    energy: [B] eV. forces: [B, N, 3] eV/Å or None. stress: [B, 3, 3] eV/Å³ (ASE sign:
    positive = tensile; pressure P = −tr σ / 3 without the kinetic term) or None.
    volume: [B] Å³.
    """

    energy: torch.Tensor
    forces: torch.Tensor | None
    stress: torch.Tensor | None
    volume: torch.Tensor

    @property
    def virial(self) -> torch.Tensor:
        """W = −V σ, [B, 3, 3] eV."""
        if self.stress is None:
            raise ValueError("virial needs the stress: call evaluate(..., stress=True)")
        return -self.volume[:, None, None] * self.stress


def cell_volume(cell: torch.Tensor) -> torch.Tensor:
    """|det h| for cells [B, 3, 3] (rows), Å³ → [B]."""
    return torch.linalg.det(cell).abs()


def evaluate(
    potential: Potential,
    positions: torch.Tensor,
    cell: torch.Tensor,
    numbers: torch.Tensor,
    *,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
) -> Evaluation:
    """Energy and, by autograd, forces F = −∂U/∂x and stress σ = (1/V) ∂U/∂ε.

    Positions and cell are data (never functions of θ) and are detached. ``create_graph=True``
    keeps forces and stress differentiable in θ (for losses on them); otherwise they are
    detached and only the energy keeps its graph to θ.
    """
    if positions.ndim != 3 or cell.shape != (positions.shape[0], 3, 3):
        raise ValueError(
            f"evaluate: expected positions [B,N,3] and cell [B,3,3], got "
            f"{tuple(positions.shape)} and {tuple(cell.shape)}"
        )
    native = getattr(potential, "evaluate_native", None)
    if native is not None:
        return native(positions, cell, numbers, forces=forces, stress=stress, create_graph=create_graph)
    x = positions.detach().requires_grad_(forces)
    h = cell.detach()
    strain = None
    grad_mode = torch.enable_grad() if (forces or stress) else contextlib.nullcontext()
    with grad_mode:
        x_in, h_in = x, h
        if stress:
            strain = torch.zeros_like(h, requires_grad=True)
            deform = torch.eye(3, dtype=h.dtype, device=h.device) + strain
            x_in, h_in = torch.bmm(x, deform), torch.bmm(h, deform)
        energy = potential(x_in, h_in, numbers)
        if energy.shape != (positions.shape[0],):
            raise ValueError(
                f"potential returned energy of shape {tuple(energy.shape)}, expected "
                f"[{positions.shape[0]}]"
            )
        wrt = [t for t, wanted in ((x, forces), (strain, stress)) if wanted]
        grads = (
            torch.autograd.grad(energy.sum(), wrt, create_graph=create_graph, allow_unused=True)
            if wrt
            else ()
        )
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
    volume = cell_volume(h)
    force_out = -grads.pop(0) if forces else None
    stress_out = grads.pop(0) / volume[:, None, None] if stress else None
    if not create_graph:
        force_out = None if force_out is None else force_out.detach()
        stress_out = None if stress_out is None else stress_out.detach()
    return Evaluation(energy=energy, forces=force_out, stress=stress_out, volume=volume)


@contextlib.contextmanager
def parameters_at(params, values):
    """Temporarily set ``params`` (trainable parameters) to ``values`` (tensors of the same shapes;
    ``None``: leave them), restoring the exact previous values on exit (a bit-for-bit copy)."""
    params = list(params)
    if values is None:
        yield
        return
    values = list(values)
    if len(values) != len(params) or any(v.shape != p.shape for v, p in zip(values, params)):
        raise ValueError(f"parameters_at: {len(values)} tensors of shapes {[tuple(v.shape) for v in values]} "
                         f"for {len(params)} parameters of shapes {[tuple(p.shape) for p in params]}")
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v.to(p))
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
