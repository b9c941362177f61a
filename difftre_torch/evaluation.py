"""Errors of a potential against labelled frames, with bootstrap confidence intervals.

A labelled frame is an ASE ``Atoms`` with energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign,
Voigt xx yy zz yz xz xy) as single-point results (``"label"``), or as ``<prefix>_energy`` in
``info``, ``<prefix>_forces`` in ``arrays`` and ``<prefix>_stress`` in ``info`` (any other
``source`` prefix, e.g. the stand-in world's ``teacher_*``).

Metrics (per frame f with N_f atoms; units in the names):

* energy per atom, δe_f = (U_pred − U_ref)/N_f: RMSE, MAE, mean (bias) and the RMSE after
  removing the bias, sqrt(mean_f (δe_f − mean δe)²). A constant offset per atom cannot be learned
  from structural data (it moves no force and no ensemble average), so the de-biased RMSE is the
  one that says whether the energy landscape is right;
* forces: RMSE over all Cartesian components; in-plane and out-of-plane RMSE with respect to a
  plane normal n̂ (default: the frame's a₁ × a₂, the layer normal of a layered cell; cell rows),
  out-of-plane = F·n̂ and in-plane the two remaining components, each RMSE per component, so
  total² = (2 in² + out²)/3;
* stress: RMSE over the six Voigt components, GPa.

Confidence intervals: frames are the independent unit (atoms of one frame are correlated), so
the percentile bootstrap resamples frames with replacement (``n_boot`` times, seeded) and
recomputes each metric from the per-frame sums; the interval is the (α/2, 1 − α/2) quantiles.
Two models on the same frames: :func:`paired_difference` resamples the frames once for both, so
its interval of m_b − m_a excludes the frame-to-frame scatter the two share (much narrower than
the two marginal intervals when the models err alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

EV_PER_A3_TO_GPA = 160.21766208

METRICS = (
    "energy_rmse_meV_per_atom",
    "energy_mae_meV_per_atom",
    "energy_bias_meV_per_atom",
    "energy_rmse_debiased_meV_per_atom",
    "forces_rmse_meV_per_A",
    "forces_in_plane_rmse_meV_per_A",
    "forces_out_of_plane_rmse_meV_per_A",
    "forces_mae_meV_per_A",
    "stress_rmse_GPa",
)


@dataclass
class Labels:
    """Energy U (eV), forces [N, 3] (eV/Å) and Voigt stress [6] (eV/Å³, ASE sign) of one frame;
    ``normal`` [3] the unit plane normal used for the in/out-of-plane split."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    normal: np.ndarray


def plane_normal(cell: np.ndarray) -> np.ndarray:
    """Unit normal of the plane of the first two cell rows, a₁ × a₂ / |a₁ × a₂|."""
    n = np.cross(cell[0], cell[1])
    return n / np.linalg.norm(n)


def _voigt(stress) -> np.ndarray | None:
    if stress is None:
        return None
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (6,):
        return stress
    if stress.size == 9:
        s = stress.reshape(3, 3)
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    raise ValueError(f"stress: expected 6 Voigt components or a 3x3 matrix, got shape {stress.shape}")


def frame_labels(atoms, source: str = "label") -> Labels:
    """The reference :class:`Labels` of ``atoms``: its single-point results (``"label"``) or its
    ``<source>_energy``/``<source>_forces``/``<source>_stress`` entries. Missing fields raise
    a KeyError naming the field (and the frame's ``info['source_file']`` when present)."""
    where = atoms.info.get("source_file", "frame")
    normal = plane_normal(np.asarray(atoms.cell.array))
    if source == "label":
        if atoms.calc is None:
            raise KeyError(f"{where}: no energy/forces stored (no single-point results)")
        results = atoms.calc.results
        for key in ("energy", "forces"):
            if key not in results:
                raise KeyError(f"{where}: label {key!r} missing; expected energy (eV) and forces (eV/Å)")
        return Labels(float(results["energy"]), np.asarray(results["forces"], dtype=np.float64),
                      _voigt(results.get("stress")), normal)
    keys = (f"{source}_energy", f"{source}_forces")
    if keys[0] not in atoms.info or keys[1] not in atoms.arrays:
        raise KeyError(f"{where}: {keys[0]} (info, eV) and {keys[1]} (arrays, eV/Å) are required")
    return Labels(float(atoms.info[keys[0]]), np.asarray(atoms.arrays[keys[1]], dtype=np.float64),
                  _voigt(atoms.info.get(f"{source}_stress")), normal)


def predict(potential, frames: Sequence, stress: bool = True) -> list[Labels]:
    """The potential's :class:`Labels` for each frame (forces and stress by autograd)."""
    import torch

    from difftre_torch.potentials.ase_calculator import potential_device_dtype
    from difftre_torch.potentials.base import evaluate

    device, dtype = potential_device_dtype(potential)
    out = []
    for atoms in frames:
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)[None]
        numbers = torch.as_tensor(atoms.numbers, dtype=torch.long, device=device)
        ev = evaluate(potential, as_tensor(atoms.positions), as_tensor(atoms.cell.array), numbers,
                      forces=True, stress=stress)
        s = _voigt(ev.stress[0].detach().cpu().double().numpy()) if stress else None
        out.append(Labels(float(ev.energy.detach()[0]), ev.forces[0].detach().cpu().double().numpy(),
                          s, plane_normal(np.asarray(atoms.cell.array))))
    return out


@dataclass
class FrameErrors:
    """Per-frame error sums, [F] each: δe (meV/atom), Σ δF² over all / in-plane / out-of-plane
    components and their counts, Σ |δF| (meV/Å), Σ δσ² over Voigt components (GPa²)."""

    energy: np.ndarray
    force_sq: np.ndarray
    force_abs: np.ndarray
    force_n: np.ndarray
    in_plane_sq: np.ndarray
    out_of_plane_sq: np.ndarray
    atoms: np.ndarray
    stress_sq: np.ndarray
    stress_n: np.ndarray


def frame_errors(predicted: Sequence[Labels], reference: Sequence[Labels]) -> FrameErrors:
    """:class:`FrameErrors` of ``predicted`` against ``reference`` (same frames, same order)."""
    if len(predicted) != len(reference):
        raise ValueError(f"frame_errors: {len(predicted)} predictions for {len(reference)} references")
    rows = []
    for p, r in zip(predicted, reference):
        if p.forces.shape != r.forces.shape:
            raise ValueError(f"frame_errors: forces of shape {p.forces.shape} vs {r.forces.shape}")
        n_atoms = p.forces.shape[0]
        dF = (p.forces - r.forces) * 1e3
        out = dF @ r.normal
        dS = (None if p.stress is None or r.stress is None
              else (p.stress - r.stress) * EV_PER_A3_TO_GPA)
        rows.append((
            (p.energy - r.energy) / n_atoms * 1e3, float(np.sum(dF**2)), float(np.sum(np.abs(dF))),
            dF.size, float(np.sum(dF**2) - np.sum(out**2)), float(np.sum(out**2)), n_atoms,
            0.0 if dS is None else float(np.sum(dS**2)), 0 if dS is None else 6,
        ))
    cols = [np.asarray(c, dtype=np.float64) for c in zip(*rows)] if rows else [np.zeros(0)] * 9
    return FrameErrors(*cols)


def _metrics(e: FrameErrors, index: np.ndarray) -> np.ndarray:
    """Every metric of :data:`METRICS` for the frames ``index`` [B, K] → [B, len(METRICS)]."""
    de = e.energy[index]
    bias = de.mean(-1)
    atoms = e.atoms[index].sum(-1)
    stress_n = e.stress_n[index].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([
            np.sqrt(np.mean(de**2, -1)),
            np.mean(np.abs(de), -1),
            bias,
            np.sqrt(np.mean((de - bias[..., None]) ** 2, -1)),
            np.sqrt(e.force_sq[index].sum(-1) / e.force_n[index].sum(-1)),
            np.sqrt(e.in_plane_sq[index].sum(-1) / (2 * atoms)),
            np.sqrt(e.out_of_plane_sq[index].sum(-1) / atoms),
            e.force_abs[index].sum(-1) / e.force_n[index].sum(-1),
            np.where(stress_n > 0, np.sqrt(e.stress_sq[index].sum(-1) / np.maximum(stress_n, 1)), np.nan),
        ], -1)


def error_summary(predicted: Sequence[Labels], reference: Sequence[Labels], *, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> dict:
    """Each metric of :data:`METRICS` with its percentile-bootstrap interval over frames.

    Returns ``{"frames": F, "atoms_per_frame": mean N, metric: {"value", "ci": [lo, hi]}}``; the
    interval is [nan, nan] for a single frame.
    """
    e = frame_errors(predicted, reference)
    n = len(e.energy)
    if n == 0:
        raise ValueError("error_summary: no frames")
    value = _metrics(e, np.arange(n)[None])[0]
    if n > 1:
        rng = np.random.default_rng(seed)
        boot = _metrics(e, rng.integers(0, n, size=(n_boot, n)))
        alpha = (1.0 - level) / 2
        lo = hi = np.full(len(METRICS), np.nan)
        defined = ~np.all(np.isnan(boot), axis=0)  # stress is undefined without stress labels
        lo, hi = lo.copy(), hi.copy()
        lo[defined] = np.nanquantile(boot[:, defined], alpha, axis=0)
        hi[defined] = np.nanquantile(boot[:, defined], 1 - alpha, axis=0)
    else:
        lo = hi = np.full(len(METRICS), np.nan)
    out: dict = {"frames": n, "atoms_per_frame": float(e.atoms.mean()), "ci_level": level}
    for k, name in enumerate(METRICS):
        out[name] = {"value": float(value[k]), "ci": [float(lo[k]), float(hi[k])]}
    return out


def frame_errors_json(e: FrameErrors) -> dict:
    """``e`` as lists (JSON-ready); :func:`frame_errors_from_json` reads it back."""
    return {k: np.asarray(v).tolist() for k, v in e.__dict__.items()}


def frame_errors_from_json(data: dict) -> FrameErrors:
    return FrameErrors(**{k: np.asarray(data[k], dtype=np.float64) for k in FrameErrors.__dataclass_fields__})


def paired_difference(a: FrameErrors, b: FrameErrors, metric: str, *, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict:
    """m_b − m_a of one metric of :data:`METRICS` for two models on the same F frames, with a
    paired percentile-bootstrap interval (the same resampled frames for both). Returns
    ``{"value", "ci": [lo, hi]}`` in the metric's units."""
    if metric not in METRICS:
        raise ValueError(f"paired_difference: unknown metric {metric!r}; expected one of {METRICS}")
    n = len(a.energy)
    if n != len(b.energy) or not np.array_equal(a.atoms, b.atoms):
        raise ValueError("paired_difference: the two models must be evaluated on the same frames")
    k = METRICS.index(metric)
    value = float(_metrics(b, np.arange(n)[None])[0, k] - _metrics(a, np.arange(n)[None])[0, k])
    if n < 2:
        return {"value": value, "ci": [float("nan"), float("nan")], "ci_level": level}
    index = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    diff = _metrics(b, index)[:, k] - _metrics(a, index)[:, k]
    alpha = (1.0 - level) / 2
    return {"value": value, "ci": [float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))],
            "ci_level": level}


def intervals_overlap(a: dict, b: dict) -> bool:
    """Whether two ``{"value", "ci"}`` entries of :func:`error_summary` have overlapping intervals."""
    return not (a["ci"][1] < b["ci"][0] or b["ci"][1] < a["ci"][0])
