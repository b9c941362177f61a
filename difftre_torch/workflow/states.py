"""Scalar observables across state points: the report's thermal-expansion / compression view.

For every scalar target the structure comparison measured (lattice lengths, interlayer spacing,
density, …) at every state point, one row: the state (T in K, P in GPa, None for NVT), whether
the point was *fitted* (a refinement state point whose fit targets include this one) or *held
out* (a prediction: the refinement never saw it), and each model's mean with its block standard
error beside the experiment's value and σ. Rows of one quantity (same observable and options)
make one curve against temperature at the most common pressure and one against pressure at the
temperature of the other-pressure points. Units: those of the target (Å for lengths), K, GPa.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from difftre_torch.monitor import save_figure


def quantity(entry) -> str:
    """Label of a target's physical quantity: its observable and options (state-independent), so
    ``a_150K`` and ``a_300K`` are the same quantity."""
    shown = {k: v for k, v in (entry.options or {}).items() if k in ("axes", "component")}
    return entry.observable + (f" ({json.dumps(shown, sort_keys=True)[1:-1]})" if shown else "")


def fitted(job, target_name: str, point_name: str) -> bool:
    """Whether the refinement fitted ``target_name`` at ``point_name``."""
    point = next((p for p in job.state_points if p.name == point_name), None)
    if point is None or not point.refine:
        return False
    return any(t.name == target_name and (t.state_point is None or t.state_point == point_name)
               for t in job.targets)


def state_rows(structure: dict[str, dict], job) -> list[dict]:
    """One row per (scalar target, compared state point): {"quantity", "target", "point",
    "temperature_K", "pressure_GPa", "fitted", "experiment", "sigma_experiment",
    "models": {model: (mean, block SE)}}, in the config's state-point order."""
    entries = {t.name: t for t in (job.compare.targets or job.targets)}
    entries.update({t.name: t for t in job.targets if t.name not in entries})
    points = {p.name: p for p in job.state_points}
    rows: list[dict] = []
    first = next(iter(structure.values()), {})
    for point in [p for p in points if p in first]:
        for name, t in first[point]["targets"].items():
            if t["x"] is not None or name not in entries:
                continue
            models = {}
            for model, comparison in structure.items():
                other = comparison.get(point, {}).get("targets", {}).get(name)
                if other is not None:
                    models[model] = (float(np.mean(other["model"])), float(np.mean(other["sigma_model"])))
            sigma = t["sigma_experiment"]
            rows.append({"quantity": quantity(entries[name]), "target": name, "point": point,
                         "temperature_K": points[point].temperature_K, "pressure_GPa": points[point].pressure_GPa,
                         "fitted": fitted(job, name, point), "experiment": float(np.mean(t["experiment"])),
                         "sigma_experiment": None if sigma is None else float(np.mean(sigma)), "models": models})
    return rows


def _pressure_label(p: float | None) -> str:
    if p is None:
        return "NVT"
    return f"{p * 1e4:g} bar" if p < 0.01 else f"{p:g} GPa"


def states_table(rows: list[dict]) -> list[str]:
    """Markdown table of ``rows``: each model's value ± SE, the experiment ± σ, and the refined
    model's distance from it in combined σ."""
    if not rows:
        return []
    models = list(dict.fromkeys(m for r in rows for m in r["models"]))
    lines = ["| quantity | state point | T (K) | P | role | " + " | ".join(models)
             + " | experiment | refined − exp (combined σ) |",
             "|---|---|---:|---|---|" + "---:|" * len(models) + "---:|---:|"]
    for r in rows:
        vals = [f"{r['models'][m][0]:.4f} ± {r['models'][m][1]:.4f}" if m in r["models"] else "" for m in models]
        exp = f"{r['experiment']:.4f}" + ("" if r["sigma_experiment"] is None else f" ± {r['sigma_experiment']:.4f}")
        z = ""
        if "refined" in r["models"]:
            value, se = r["models"]["refined"]
            combined = float(np.hypot(se, r["sigma_experiment"] or 0.0))
            z = f"{value - r['experiment']:+.4f} ({(value - r['experiment']) / combined:+.1f})" if combined > 0 else ""
        role = "fitted" if r["fitted"] else "**held out** (prediction)"
        lines.append(f"| {r['quantity']} | {r['point']} | {r['temperature_K']:g} | {_pressure_label(r['pressure_GPa'])} "
                     f"| {role} | " + " | ".join(vals) + f" | {exp} | {z} |")
    return lines


def _curves(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(quantity, axis "T" or "P", rows) panels: per quantity, the rows at the most common
    pressure against T (if ≥ 2 temperatures), and the rows at the temperature of the other
    pressures against P (if ≥ 2 pressures)."""
    panels = []
    for q in dict.fromkeys(r["quantity"] for r in rows):
        mine = [r for r in rows if r["quantity"] == q and r["pressure_GPa"] is not None]
        if not mine:
            continue
        common_p = Counter(r["pressure_GPa"] for r in mine).most_common(1)[0][0]
        at_p = sorted((r for r in mine if r["pressure_GPa"] == common_p), key=lambda r: r["temperature_K"])
        if len({r["temperature_K"] for r in at_p}) >= 2:
            panels.append((q, "T", at_p))
        others = [r for r in mine if r["pressure_GPa"] != common_p]
        if others:
            t = Counter(r["temperature_K"] for r in others).most_common(1)[0][0]
            at_t = sorted((r for r in mine if r["temperature_K"] == t), key=lambda r: r["pressure_GPa"])
            if len({r["pressure_GPa"] for r in at_t}) >= 2:
                panels.append((q, "P", at_t))
    return panels


def figure_states(rows: list[dict], path: Path, style) -> Path | None:
    """Thermal expansion / compression panels (see :func:`_curves`): the experiment with 2σ bars
    (open symbols: held out of the refinement), each model's curve with its 2 SE bars."""
    from matplotlib.figure import Figure

    panels = _curves(rows)
    if not panels:
        return None
    fig = Figure(figsize=(3.4 * len(panels), 3.2), constrained_layout=True)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (q, axis, mine) in zip(axes, panels):
        x = np.array([r["temperature_K"] if axis == "T" else r["pressure_GPa"] for r in mine])
        models = list(dict.fromkeys(m for r in mine for m in r["models"]))
        for i, model in enumerate(models):
            keep = [k for k, r in enumerate(mine) if model in mine[k]["models"]]
            y = np.array([mine[k]["models"][model][0] for k in keep])
            err = np.array([2 * mine[k]["models"][model][1] for k in keep])
            st = style(i)
            ax.errorbar(x[keep], y, yerr=err, color=st["color"], ls=st["ls"], marker=st["marker"], ms=4,
                        lw=1.0, capsize=2, label=model)
        exp = np.array([r["experiment"] for r in mine])
        sig = np.array([2 * (r["sigma_experiment"] or 0.0) for r in mine])
        held = np.array([not r["fitted"] for r in mine])
        for mask, face, label in ((~held, "k", "experiment (fitted)"), (held, "none", "experiment (held out)")):
            if mask.any():
                ax.errorbar(x[mask], exp[mask], yerr=sig[mask], fmt="o", color="k", mfc=face, ms=6, capsize=3,
                            label=label, zorder=5)
        ax.set_xlabel("T (K)" if axis == "T" else "P (GPa)")
        ax.set_title(q, fontsize=8)
    axes[0].legend(fontsize=6)
    return save_figure(fig, path)
