"""Diagnostic: the best force error a pair correction of the refined model's form could reach.

The refined model is U_base + ΔU with ΔU linear in its pair coefficients c, so its forces are
F_base + J c (:func:`difftre_torch.potentials.correction.force_jacobian`). Fitting c by least
squares straight to reality's forces, min_c Σ |F_base + J c − F_reality|², gives the lowest
force RMSE vs reality that any such correction reaches on those frames. DiffTRe never sees these
labels: it learns c from the experiment. So the fit is a ceiling to compare the refined model
against, not a model. It is fitted on the even frames of every held-out cell together and
reported on the odd ones (frames are in time order, so the two halves interleave).

Units: forces meV/Å in the output.
"""

from __future__ import annotations

import numpy as np
import torch

from difftre_torch.evaluation import frame_labels, predict
from difftre_torch.potentials.correction import PairCorrection, force_jacobian


def pair_ceiling(base, correction: PairCorrection, heldout: dict[str, list]) -> dict:
    """{"fit_frames", "coefficients_eV", cell: {"frames", "base_forces_rmse_meV_per_A",
    "ceiling_forces_rmse_meV_per_A", "d3_forces_rms_meV_per_A"}} on the odd frames of each cell."""
    probe = PairCorrection(correction.spec, dtype=torch.float64)
    rows: dict[str, list] = {}
    for cell, frames in heldout.items():
        base_pred = predict(base, frames, stress=False)
        for index, (atoms, pred) in enumerate(zip(frames, base_pred)):
            J = force_jacobian(probe, torch.tensor(atoms.positions), torch.tensor(atoms.cell.array),
                               torch.tensor(atoms.numbers)).numpy()
            reality = frame_labels(atoms).forces.reshape(-1)
            teacher = frame_labels(atoms, "teacher").forces.reshape(-1)
            rows.setdefault(cell, []).append((index % 2 == 0, J, reality - pred.forces.reshape(-1), reality - teacher))
    fit = [r for cell_rows in rows.values() for r in cell_rows if r[0]]
    if not fit:
        raise ValueError("pair_ceiling: no held-out frames to fit")
    J_fit = np.concatenate([r[1] for r in fit])
    y_fit = np.concatenate([r[2] for r in fit])
    coefficients, *_ = np.linalg.lstsq(J_fit, y_fit, rcond=None)
    out: dict = {"fit_frames": len(fit), "coefficients_eV": coefficients.tolist()}
    for cell, cell_rows in rows.items():
        held = [r for r in cell_rows if not r[0]] or cell_rows  # a one-frame cell: report on it
        residual_base = np.concatenate([r[2] for r in held])
        residual_best = np.concatenate([r[2] - r[1] @ coefficients for r in held])
        d3 = np.concatenate([r[3] for r in held])
        rms = lambda v: float(1e3 * np.sqrt(np.mean(v ** 2)))  # noqa: E731
        out[cell] = {"frames": len(held), "base_forces_rmse_meV_per_A": rms(residual_base),
                     "ceiling_forces_rmse_meV_per_A": rms(residual_best), "d3_forces_rms_meV_per_A": rms(d3)}
    return out
