"""Plots and text of a fit: target and history figures, the plain-text line per update, the
scalar parameters worth logging. The callbacks that write them during a fit (TensorBoard, the
log file, the progress bar) are in :mod:`difftre_torch.callbacks`.

Plots use matplotlib's object API with the headless Agg backend and return the figure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from difftre_torch.experiment.target import Target
from difftre_torch.records import UpdateRecord


def target_figure(target: Target, prediction: np.ndarray, initial: np.ndarray | None = None):
    """One target's experiment (with σ band) vs the current (and initial) prediction; a Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    values = target.values.numpy()
    if target.x is None or values.shape[0] == 1:
        labels = [f"{target.name}[{k}]" for k in range(values.shape[0])]
        xs = np.arange(values.shape[0])
        err = None if target.sigma is None else target.sigma.numpy()
        ax.errorbar(xs - 0.1, values, yerr=err, fmt="ks", label="target")
        if initial is not None:
            ax.plot(xs, initial, "o", color="tab:gray", label="initial")
        ax.plot(xs + 0.1, prediction, "o", color="tab:red", label="current")
        ax.set_xticks(xs, labels)
    else:
        x = target.x.numpy()
        ax.plot(x, values, "k-", lw=1.5, label="target")
        if target.sigma is not None:
            s = target.sigma.numpy()
            ax.fill_between(x, values - s, values + s, color="k", alpha=0.15, lw=0)
        if initial is not None:
            ax.plot(x, initial, "--", color="tab:gray", lw=1, label="initial")
        ax.plot(x, prediction, "-", color="tab:red", lw=1, label="current")
        ax.set_xlabel("Q (Å⁻¹)" if target.observable in ("S", "F") else "r (Å)")
    ax.set_ylabel(target.observable)
    ax.set_title(target.name)
    ax.legend(frameon=False, fontsize=8)
    return fig


def history_figure(history: Sequence[UpdateRecord]):
    """Loss and N_eff/N against the update number of each record; a Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.0), layout="constrained")
    ax_loss, ax_neff = fig.subplots(1, 2)
    steps = [h.update for h in history]
    ax_loss.semilogy(steps, [max(h.loss["total"], 1e-300) for h in history], "k-")
    ax_loss.set_xlabel("update")
    ax_loss.set_ylabel("loss")
    names = list(history[0].n_eff_ratio) if history else []
    for name in names:
        ax_neff.plot(steps, [h.n_eff_ratio[name] for h in history], label=name)
    ax_neff.set_xlabel("update")
    ax_neff.set_ylabel("N_eff / N")
    if names:
        ax_neff.legend(frameon=False, fontsize=8)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write a Figure as PNG (Agg backend, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path


def log_line(record: UpdateRecord) -> str:
    """One plain-text line per update, starting ``update <number>`` (:func:`logged_update`)."""
    loss = record.loss
    terms = " ".join(f"{k}={v:.4g}" for k, v in loss.items() if k != "total")
    n_eff = " ".join(f"{k}:{v:.2f}" for k, v in record.n_eff_ratio.items())
    step = record.step
    if "damping" in step:
        how = (f"LM mu={step['damping']:.2g} tries={int(step['tries'])} "
               f"dL pred={step['predicted']:.3g} real={step['realised']:.3g}")
    else:
        how = f"lr={record.lr:.3g}"
    noise = f"  SE(L)={record.noise['loss_se']:.2g}" if "loss_se" in record.noise else ""
    pool = " ".join(f"{k}:{int(v['trajectories'])}x{int(v['snapshots'])}" for k, v in record.pool.items()
                    if v.get("trajectories", 1) > 1)
    return (f"update {record.update:4d}  loss={loss['total']:.5g}  {terms}  N_eff/N {n_eff}  "
            f"|g|={record.grad_norm:.3g}  {how}{noise}{'  pool ' + pool if pool else ''}"
            f"{'  resampled' if record.resampled else ''}{'  converged' if record.noise.get('converged') else ''}")


def logged_update(line: str) -> int | None:
    """The update number of a line written by :func:`log_line`; None for any other line."""
    match = re.match(r"update +(\d+)  ", line)
    return int(match[1]) if match else None


def scalar_parameters(potential: torch.nn.Module, limit: int = 8) -> dict[str, float]:
    """Scalar trainable parameters by name (for logging small analytic potentials)."""
    out = {}
    for name, p in potential.named_parameters():
        if p.numel() == 1 and len(out) < limit:
            out[name] = float(p.detach())
    return out
