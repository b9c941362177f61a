"""Any potential as an ASE calculator: energy (eV), forces (eV/Å), stress (eV/Å³, ASE sign).

The calculator evaluates the potential on its own device (CUDA when the potential lives there)
and dtype, one snapshot at a time (B = 1), through :func:`difftre_torch.potentials.base.evaluate`.
Results are returned as float64 NumPy arrays, as ASE expects.
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from difftre_torch.potentials.base import Potential, evaluate


def potential_device_dtype(potential: Potential) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a potential's first parameter or buffer (CPU/float64 if
    none); the dtype is the potential's ``data_dtype`` where it states one (a model that takes
    float64 data whatever it computes in)."""
    if isinstance(potential, torch.nn.Module):
        data_dtype = getattr(potential, "data_dtype", None)
        for tensor in list(potential.parameters()) + list(potential.buffers()):
            if tensor.is_floating_point():
                return tensor.device, data_dtype if isinstance(data_dtype, torch.dtype) else tensor.dtype
    return torch.device("cpu"), torch.float64


class PotentialCalculator(Calculator):
    """ASE calculator around a :class:`~difftre_torch.potentials.base.Potential`.

    implemented: energy, free_energy, forces, stress. Stress is computed only when asked for
    (NPT integrators ask; NVT ones do not).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, potential: Potential, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        default_device, default_dtype = potential_device_dtype(potential)
        self.device = torch.device(device) if device is not None else default_device
        self.dtype = dtype or default_dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if not self.atoms.pbc.all():
            raise ValueError("PotentialCalculator: only fully periodic cells are supported")
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)
        positions = as_tensor(self.atoms.get_positions())[None]
        cell = as_tensor(self.atoms.cell.array)[None]
        numbers = torch.as_tensor(self.atoms.numbers, dtype=torch.long, device=self.device)
        want_stress = "stress" in properties
        out = evaluate(self.potential, positions, cell, numbers, forces=True, stress=want_stress)
        energy = float(out.energy.detach()[0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out.forces[0].cpu().double().numpy()
        if want_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out.stress[0].cpu().double().numpy())
