"""Diagnostic: the best force error a pair correction of the refined model's form could reach.

The refined model is U_base + ΔU with ΔU linear in its pair coefficients c, so its forces are
F_base + J c (:func:`difftre_torch.potentials.correction.force_jacobian`). Fitting c by least
squares straight to a reference's forces (for example DFT + dispersion, or "reality" in a test
world), min_c Σ |F_base + J c − F_ref|², gives the lowest force RMSE vs that reference that any
such correction reaches on those frames. DiffTRe never sees these
labels: it learns c from the experiment. So the fit is a ceiling to compare the refined model
against, not a model. It is fitted on the even frames of every frame set together and
reported on the odd ones (frames are in time order, so the two halves interleave).

The same coefficients also give each frame's energy (ΔU = e · c + constants,
:func:`~difftre_torch.potentials.correction.energy_gradient`), so the fit says too what a
correction that is best for forces does to the de-biased energy error (per cell, offset removed:
RMSE about the mean of (E_model − E_reality)/N over the odd frames).

Units: forces meV/Å, energies meV/atom in the output.
"""

from __future__ import annotations

import numpy as np
import torch

from difftre_torch.evaluation import frame_labels, predict
from difftre_torch.potentials.correction import PairCorrection, energy_gradient, force_jacobian


def directions(residual: np.ndarray, normals) -> tuple[float, float]:
    """(in-plane, out-of-plane) RMSE in meV/Å of force residuals ``residual`` [3N] (eV/Å), each
    atom's against its frame's unit plane normal (``normals``: N vectors), per component as
    :mod:`difftre_torch.evaluation` counts them: in-plane over 2N components, out-of-plane over N."""
    r = residual.reshape(-1, 3)
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    out = np.einsum("ij,ij->i", r, n)
    in_plane = np.sum(r ** 2, axis=1) - out ** 2
    return float(1e3 * np.sqrt(in_plane.sum() / (2 * len(r)))), float(1e3 * np.sqrt(np.mean(out ** 2)))


def pair_ceiling(base, correction: PairCorrection, heldout: dict[str, list], reference: str = "label",
                 relative_to: str | None = None) -> dict:
    """{"fit_frames", "coefficients_eV", set: {"frames", "base_forces_rmse_meV_per_A",
    "ceiling_forces_rmse_meV_per_A", the same split in plane and out of plane
    ("base_forces_in_plane_rmse_meV_per_A", …, :func:`directions`),
    "relative_forces_rms_meV_per_A" (RMS of reference − relative_to forces, when ``relative_to``
    is given), "base_energy_rmse_debiased_meV_per_atom",
    "ceiling_energy_rmse_debiased_meV_per_atom"}} on the odd frames of each set. ``reference`` and
    ``relative_to``: label sources of :func:`difftre_torch.evaluation.frame_labels`."""
    probe = PairCorrection(correction.spec, dtype=torch.float64)
    rows: dict[str, list] = {}
    for cell, frames in heldout.items():
        base_pred = predict(base, frames, stress=False)
        for index, (atoms, pred) in enumerate(zip(frames, base_pred)):
            x, h, z = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), torch.tensor(atoms.numbers)
            J = force_jacobian(probe, x, h, z).numpy()
            e = energy_gradient(probe, x, h, z).numpy() / len(atoms)
            labels = frame_labels(atoms, reference)
            reality = labels.forces.reshape(-1)
            other = None if relative_to is None else frame_labels(atoms, relative_to).forces.reshape(-1)
            rows.setdefault(cell, []).append((index % 2 == 0, J, reality - pred.forces.reshape(-1),
                                              None if other is None else reality - other,
                                              e, (labels.energy - pred.energy) / len(atoms), labels.normal))
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
        energy_base = np.array([r[5] for r in held])  # eV/atom, reality − base
        energy_best = np.array([r[5] - r[4] @ coefficients for r in held])
        rms = lambda v: float(1e3 * np.sqrt(np.mean(v ** 2)))  # noqa: E731
        normal = [r[6] for r in held for _ in range(r[2].size // 3)]
        split_base, split_best = directions(residual_base, normal), directions(residual_best, normal)
        out[cell] = {"frames": len(held), "base_forces_rmse_meV_per_A": rms(residual_base),
                     "ceiling_forces_rmse_meV_per_A": rms(residual_best),
                     "base_forces_in_plane_rmse_meV_per_A": split_base[0],
                     "base_forces_out_of_plane_rmse_meV_per_A": split_base[1],
                     "ceiling_forces_in_plane_rmse_meV_per_A": split_best[0],
                     "ceiling_forces_out_of_plane_rmse_meV_per_A": split_best[1],
                     "base_energy_rmse_debiased_meV_per_atom": rms(energy_base - energy_base.mean()),
                     "ceiling_energy_rmse_debiased_meV_per_atom": rms(energy_best - energy_best.mean())}
        if relative_to is not None:
            out[cell]["relative_forces_rms_meV_per_A"] = rms(np.concatenate([r[3] for r in held]))
    return out
