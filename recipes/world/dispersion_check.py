"""Diagnostic: how much of a refined pair correction is the dispersion the teacher lacks.

``python -m recipes.world.dispersion_check CORRECTION [--frames data/world/dataset/test.extxyz.gz]``

In the stand-in world reality = teacher + D3(BJ), so the part of reality that a model trained on
the teacher misses is known exactly: D3. A correction ΔU refined against reality's experiment
(:mod:`recipes.gc3n4`) departs from the teacher by its own energy, and the teacher test split
then shows a de-biased energy error vs the teacher of about the size of ΔU's spread. This check
says whether that departure is reality's: per frame, e_ΔU = ΔU/N and e_D3 = E_D3/N (meV/atom),
each with its frame mean removed (a constant per atom is not measurable from structure; see
:mod:`difftre_torch.workflow.steps`), and reports the RMS of each, the RMS of their difference and
their correlation. Only the correction's energy enters (the frozen base cancels in refined −
base). The reference calculator is D3 by default (needs the ``world`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator
from ase.io import read


def energies_per_atom_meV(correction: torch.nn.Module, frames: list) -> np.ndarray:
    """ΔU/N of each frame, meV/atom, through :func:`difftre_torch.evaluation.predict`."""
    from difftre_torch.evaluation import predict

    return 1e3 * np.asarray([p.energy / len(a) for p, a in zip(predict(correction, frames, stress=False), frames)])


def reference_per_atom_meV(calc: Calculator, frames: list) -> np.ndarray:
    """The reference calculator's energy per atom of each frame, meV/atom."""
    from difftre_torch.analysis.binding import energy_eV

    return 1e3 * np.asarray([energy_eV(calc, atoms) / len(atoms) for atoms in frames])


def compare(correction_meV: np.ndarray, reference_meV: np.ndarray) -> dict:
    """De-biased RMS of each series (meV/atom), of their difference, and their Pearson r."""
    if correction_meV.shape != reference_meV.shape or len(correction_meV) < 2:
        raise ValueError(f"compare: need two series of the same length >= 2, got {correction_meV.shape} "
                         f"and {reference_meV.shape}")
    dc, dr = correction_meV - correction_meV.mean(), reference_meV - reference_meV.mean()
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)))  # noqa: E731
    return {"frames": len(dc), "correction_rms_meV_per_atom": rms(dc), "reference_rms_meV_per_atom": rms(dr),
            "difference_rms_meV_per_atom": rms(dc - dr), "pearson_r": float(np.corrcoef(dc, dr)[0, 1])}


def main(argv: list[str] | None = None) -> int:
    from difftre_torch.potentials.io import load_corrected
    from difftre_torch.potentials.nequip_files import load_nequip
    from recipes.world.calculators import dispersion

    parser = argparse.ArgumentParser(prog="python -m recipes.world.dispersion_check", description=__doc__.splitlines()[0])
    parser.add_argument("correction", help="a refined model's *.correction.pt")
    parser.add_argument("--frames", default="data/world/dataset/test.extxyz.gz", help="frames (any ase.io format)")
    args = parser.parse_args(argv)
    model = load_corrected(Path(args.correction), lambda base: load_nequip(base, device="cpu", dtype=torch.float64))
    frames = read(args.frames, ":")
    result = compare(energies_per_atom_meV(model.correction, frames), reference_per_atom_meV(dispersion(), frames))
    result.update({"correction": str(args.correction), "frames_file": str(args.frames), "reference": "DFT-D3(BJ), PBE"})
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
