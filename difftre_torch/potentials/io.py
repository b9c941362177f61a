"""Writing a refined potential back in the user's format.

* a :class:`~difftre_torch.potentials.nequip.NequIPPotential` goes through
  :func:`~difftre_torch.potentials.nequip_files.save_nequip`: ``<stem>.ckpt`` for checkpoint/package
  inputs (``nequip-package build`` / ``nequip-compile`` take it from there), ``<stem>.nequip.pth``
  for TorchScript inputs;
* any other ``torch.nn.Module``: its ``state_dict`` as ``<stem>.pt`` (``torch.load`` +
  ``load_state_dict``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from difftre_torch.checkpoint import atomic_torch_save


def save_potential(potential: torch.nn.Module, stem: str | Path) -> Path:
    """Write ``potential`` next to ``stem`` (a path without suffix); returns the file written."""
    stem = Path(stem)
    source = getattr(potential, "source", None)
    if source is not None and getattr(source, "format", None) is not None:
        from difftre_torch.potentials.nequip_files import save_nequip

        if source.format == "aotinductor":
            raise ValueError("save_potential: an AOTInductor model has no weights to write")
        suffix = ".nequip.pth" if source.format == "torchscript" else ".ckpt"
        return save_nequip(potential, stem.with_name(stem.name + suffix))
    return atomic_torch_save(potential.state_dict(), stem.with_name(stem.name + ".pt"))
