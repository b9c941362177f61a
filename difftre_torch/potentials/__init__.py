"""Potentials: the energy contract, analytic potentials, and model-family adapters.

``potential(positions [B,N,3] Å, cell [B,3,3] Å rows, numbers [N]) -> energy [B] eV``; see
:mod:`difftre_torch.potentials.base`. NequIP models: the potential in
:mod:`difftre_torch.potentials.nequip`; files read and written by
:func:`difftre_torch.potentials.nequip_files.load_nequip` / ``save_nequip`` (both imported
lazily: nequip is heavy).
"""

from difftre_torch.potentials.analytic import HarmonicOscillators, LennardJones
from difftre_torch.potentials.base import Evaluation, Potential, cell_volume, evaluate

__all__ = [
    "Evaluation",
    "HarmonicOscillators",
    "LennardJones",
    "Potential",
    "cell_volume",
    "evaluate",
]
