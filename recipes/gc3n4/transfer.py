"""Step "transfer": base vs refined on frames no model was trained on, and binding curves.

* Held-out reality frames (``paths.heldout``, one file per cell: the training cell and larger
  ones): errors against reality's labels and against the teacher's labels of the same frames
  (:mod:`difftre_torch.evaluation`: energy RMSE per atom, absolute and with the mean offset
  removed, force RMSE total / in-plane / out-of-plane with the layer normal a₁ × a₂, stress
  RMSE; percentile-bootstrap 95 % intervals over frames). The offset: reality's D3 energy lies
  ~0.1 eV/atom below the teacher's, a constant the structure-only experiment cannot reveal (it
  moves no force and no ensemble average), so the de-biased RMSE is the one to judge. The
  per-frame error sums vs reality (``per_frame_vs_reality``) are kept, so that the report can
  take paired base-vs-refined differences.
* The teacher's test split (DFT-like): what refinement costs on DFT.
* The interlayer binding curve (meV/atom vs spacing, rigid layers, relative to 8 Å;
  :func:`recipes.world.binding.binding_curve`) of each model on the structure of the shipped
  teacher/reality curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.io import read

from difftre_torch.evaluation import error_summary, frame_errors, frame_errors_json, frame_labels, predict
from difftre_torch.potentials.ase_calculator import PotentialCalculator
from recipes.gc3n4.config import RecipeConfig

ROOT = Path(__file__).resolve().parents[2]


def model_errors(potential, heldout: dict[str, list], teacher_test: list, n_boot: int) -> dict:
    """{"heldout": {cell: {"atoms", "vs_reality", "vs_teacher"}}, "teacher_test": summary}."""
    out: dict = {"heldout": {}}
    for cell, frames in heldout.items():
        pred = predict(potential, frames)
        reality = [frame_labels(a) for a in frames]
        out["heldout"][cell] = {
            "atoms": len(frames[0]),
            "vs_reality": error_summary(pred, reality, n_boot=n_boot),
            "vs_teacher": error_summary(pred, [frame_labels(a, "teacher") for a in frames], n_boot=n_boot),
            "per_frame_vs_reality": frame_errors_json(frame_errors(pred, reality)),
        }
    out["teacher_test"] = error_summary(predict(potential, teacher_test),
                                        [frame_labels(a) for a in teacher_test], n_boot=n_boot)
    return out


def binding_unit(reference: dict):
    """The 28-atom unit the shipped curves were computed on (its ``structure`` entry)."""
    structure = reference.get("structure") or {}
    path = Path(structure.get("file", "data/world/structures/reality_unit.extxyz")
                if isinstance(structure, dict) else structure)
    path = path if path.is_absolute() else ROOT / path
    if not path.exists():
        raise FileNotFoundError(f"binding curve structure {path} does not exist")
    unit = read(path)
    unit.calc = None
    return unit


def model_binding(potential, reference: dict, spacings_A) -> dict:
    """The model's binding curve on the reference's structure and reference spacing."""
    from recipes.world.binding import binding_curve, curve_minimum

    unit = binding_unit(reference)
    calc = PotentialCalculator(potential)
    energies = binding_curve(calc, unit, list(spacings_A), float(reference.get("reference_spacing_A", 8.0)))
    return {"spacing_A": [float(s) for s in spacings_A], "meV_per_atom": [float(e) for e in energies],
            "minimum": curve_minimum(np.asarray(spacings_A), energies)}


def transfer(config: RecipeConfig, potential, heldout: dict, teacher_test: list, binding_reference: dict) -> dict:
    """Errors and binding curve of one model (JSON-ready)."""
    out = model_errors(potential, heldout, teacher_test, config.transfer.n_boot)
    out["binding"] = model_binding(potential, binding_reference, config.transfer.binding_spacings_A)
    return out
