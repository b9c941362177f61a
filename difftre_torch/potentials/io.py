"""Writing a refined potential back in the user's format.

* a :class:`~difftre_torch.potentials.nequip.NequIPPotential` goes through
  :func:`~difftre_torch.potentials.nequip_files.save_nequip`: ``<stem>.ckpt`` for checkpoint/package
  inputs (``nequip-package build`` / ``nequip-compile`` take it from there), ``<stem>.nequip.pth``
  for TorchScript inputs;
* a potential with a ``write_back(stem)`` method writes itself (DeePMD-kit:
  ``<stem>.pth`` and ``<stem>.ckpt.pt``, :mod:`difftre_torch.potentials.deepmd`);
* a :class:`~difftre_torch.potentials.correction.CorrectedPotential`: its base as above under
  ``<stem>.base``, and ``<stem>.correction.pt`` with the correction's spec and coefficients and
  the base file's name; :func:`load_corrected` reads it back;
* any other ``torch.nn.Module``: its ``state_dict`` as ``<stem>.pt`` (``torch.load`` +
  ``load_state_dict``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from difftre_torch.checkpoint import atomic_torch_save

CORRECTION_SUFFIX = ".correction.pt"
CORRECTION_FORMAT = "difftre_torch.CorrectedPotential/1"


def save_potential(potential: torch.nn.Module, stem: str | Path) -> Path:
    """Write ``potential`` next to ``stem`` (a path without suffix); returns the file written."""
    stem = Path(stem)
    from difftre_torch.potentials.correction import CorrectedPotential

    if isinstance(potential, CorrectedPotential):
        base_file = save_potential(potential.base, stem.with_name(stem.name + ".base"))
        record = {"format": CORRECTION_FORMAT, "base": base_file.name, **potential.spec_json(),
                  "state_dict": {k: v.detach().cpu() for k, v in potential.correction.state_dict().items()}}
        return atomic_torch_save(record, stem.with_name(stem.name + CORRECTION_SUFFIX))
    write_back = getattr(potential, "write_back", None)
    if write_back is not None:
        return write_back(stem)
    source = getattr(potential, "source", None)
    if source is not None and getattr(source, "format", None) is not None:
        from difftre_torch.potentials.nequip_files import save_nequip

        if source.format == "aotinductor":
            raise ValueError("save_potential: an AOTInductor model has no weights to write")
        suffix = ".nequip.pth" if source.format == "torchscript" else ".ckpt"
        return save_nequip(potential, stem.with_name(stem.name + suffix))
    return atomic_torch_save(potential.state_dict(), stem.with_name(stem.name + ".pt"))


def load_corrected(path: str | Path, load_base, dtype: torch.dtype | None = None):
    """A :class:`CorrectedPotential` from a ``<stem>.correction.pt`` that :func:`save_potential`
    wrote; ``load_base(path)`` reads the base file named in it (same folder). ``dtype``: of the
    correction (default: the base's)."""
    from difftre_torch.potentials.ase_calculator import potential_device_dtype
    from difftre_torch.potentials.correction import CorrectedPotential, PairCorrection, PairCorrectionSpec

    path = Path(path)
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != CORRECTION_FORMAT:
        raise ValueError(f"{path}: field 'format': expected {CORRECTION_FORMAT!r}, got "
                         f"{record.get('format') if isinstance(record, dict) else type(record).__name__!r}")
    for key in ("base", "correction", "train_base", "state_dict"):
        if key not in record:
            raise ValueError(f"{path}: missing field {key!r}")
    base_path = path.with_name(record["base"])
    if not base_path.exists():
        raise FileNotFoundError(f"{path}: field 'base' names {base_path}, which does not exist")
    base = load_base(base_path)
    device, base_dtype = potential_device_dtype(base)
    correction = PairCorrection(PairCorrectionSpec(**record["correction"]), dtype=dtype or base_dtype, device=device)
    correction.load_state_dict(record["state_dict"])
    return CorrectedPotential(base, correction, train_base=bool(record["train_base"]))
