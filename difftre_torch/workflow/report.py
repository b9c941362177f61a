"""The report of a finished job: REPORT.md, PNG figures and summary.json from the steps' results.

Every number comes from the steps' JSON (nothing is typed in); summary.json holds them all, with
``checks``: the config's acceptance checks (:mod:`difftre_torch.workflow.checks`), each with its
measured values and whether it holds. Units: Å, meV/atom, meV/Å, GPa; R_w dimensionless
(:mod:`difftre_torch.compare`). Models: "base", "refined" (the main λ) and "lambda_<λ>" (scan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftre_torch.checkpoint import atomic_write_json, atomic_write_text
from difftre_torch.monitor import save_figure
from difftre_torch.workflow.checks import measure, paired
from difftre_torch.workflow.states import figure_states, state_rows, states_table

_LINES, _MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v", "P")
FUNCTIONS = ("rdf", "G", "S", "F")
AXIS = {"rdf": ("r (Å)", "g(r)"), "G": ("r (Å)", "G(r) (Å⁻²)"), "S": ("Q (Å⁻¹)", "S(Q)"), "F": ("Q (Å⁻¹)", "F(Q) (Å⁻¹)")}


def style(i: int) -> dict:
    """Matplotlib style of the i-th model: own colour, line style and marker, so coinciding
    curves stay distinguishable."""
    return {"color": f"C{i % 10}", "ls": _LINES[i % len(_LINES)], "marker": _MARKERS[i % len(_MARKERS)]}


def _fig(nrows=1, ncols=1, size=(6.4, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, constrained_layout=True)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def portable(obj, root: Path):
    """``obj`` (JSON-like) with every string path under ``root`` made relative to it."""
    prefix = str(Path(root).resolve()) + "/"
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(prefix):
        return obj[len(prefix):]
    return obj


def _models(step: dict | None) -> dict:
    return {k: v for k, v in (step or {}).items() if k != "wall_s"}


def structure_of(results: dict) -> dict[str, dict]:
    """model → its structure comparison (base first, then each refined model)."""
    out = _models(results.get("structure_base"))
    out.update(_models(results.get("structure_refined")))
    return out


def _points(comparison: dict) -> list[str]:
    return [p for p in comparison if p != "blow_ups"]


def scalar_values(comparison: dict) -> dict[str, tuple[float, float, float | None, str]]:
    """target → (model mean, experiment mean, experiment σ mean, state point) for every scalar
    target, at the first state point that measured it."""
    out = {}
    for point in _points(comparison):
        for name, t in comparison[point]["targets"].items():
            if t["x"] is None and name not in out:
                sig = None if t["sigma_experiment"] is None else float(np.mean(t["sigma_experiment"]))
                out[name] = (float(np.mean(t["model"])), float(np.mean(t["experiment"])), sig, point)
    return out


def _ci(e: dict, fmt: str) -> str:
    return f"{e['value']:{fmt}} [{e['ci'][0]:{fmt}}, {e['ci'][1]:{fmt}}]"


def headline(structure: dict, evaluation: dict, checks: dict) -> str:
    """The table printed at the end of the run (markdown): base vs refined."""
    rows = []
    b, r = structure.get("base"), structure.get("refined")
    if b is not None:
        for point in _points(b):
            for name, t in b[point]["targets"].items():
                if t["x"] is None:
                    continue
                rt = (r or {}).get(point, {}).get("targets", {}).get(name)
                rows.append((f"R_w of {name}, {point}", f"{t['r_w']:.3f}", "" if rt is None else f"{rt['r_w']:.3f}",
                             "0 (experiment)"))
                rows.append((f"χ²/bin of {name}, {point}", f"{t['chi2_per_bin']:.3g}",
                             "" if rt is None else f"{rt['chi2_per_bin']:.3g}", "≈ 1"))
        sb, sr = scalar_values(b), scalar_values(r) if r else {}
        for name, (value, exp, sig, point) in sb.items():
            rows.append((f"{name}, {point}", f"{value:.3f}", f"{sr[name][0]:.3f}" if name in sr else "",
                         f"{exp:.3f}" + ("" if sig is None else f" ± {sig:.3f}")))
    eb, er = evaluation.get("base"), evaluation.get("refined")
    if eb is not None:
        for name, entry in eb.get("sets", {}).items():
            refs = [k[3:] for k in entry if k.startswith("vs_")]
            ref = refs[0]
            other = (er or {}).get("sets", {}).get(name)
            for label, key, fmt in (("F RMSE (meV/Å)", "forces_rmse_meV_per_A", ".1f"),
                                    ("E RMSE − offset (meV/atom)", "energy_rmse_debiased_meV_per_atom", ".2f")):
                rows.append((f"{name} ({entry['atoms']} atoms) vs {ref}: {label}", _ci(entry[f"vs_{ref}"][key], fmt),
                             "" if other is None else _ci(other[f"vs_{ref}"][key], fmt), ""))
            ceiling = ((er or {}).get("pair_ceiling") or {}).get(name)
            if ceiling is not None:
                extra = ceiling.get("relative_forces_rms_meV_per_A")
                rows.append((f"{name}: F RMSE with the best pair correction fitted to these forces "
                             f"(a ceiling; {ceiling['frames']} odd frames)", f"{ceiling['base_forces_rmse_meV_per_A']:.1f}",
                             f"{ceiling['ceiling_forces_rmse_meV_per_A']:.1f}",
                             "" if extra is None else f"difference to the other reference: RMS {extra:.1f}"))
            if other is not None:
                p = paired(entry, other, ref, "forces_rmse_meV_per_A")
                if p is not None:
                    rows.append((f"{name}: F RMSE refined − base, paired 95 % interval (meV/Å)", "",
                                 f"{p['value']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}]",
                                 "below 0: refined better on the same frames"))
    lines = ["| quantity | base | refined | experiment / reference |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in rows]
    if checks:
        lines += ["", "| check | holds |", "|---|:---:|"]
        lines += [f"| {name} | {'yes' if v['holds'] else 'NO'} |" for name, v in checks.items()]
    return "\n".join(lines)


def findings(checks: dict, evaluation: dict) -> list[str]:
    """Lines that say, from the measured numbers, why an error check fails: the paired difference
    on the same frames, and the pair-correction ceiling where there is one."""
    lines = []
    ceilings = (evaluation.get("refined") or {}).get("pair_ceiling") or {}
    for name, check in checks.items():
        if check["holds"] or "paired_difference" not in check:
            continue
        set_name = name.split(":")[0]
        p = check.get("paired_difference")
        text = f"- {name}: {check['base']['value']:.3g} → {check['refined']['value']:.3g}."
        if p is not None:
            verdict = ("the refined model is better on the same frames" if p["ci"][1] < 0 else
                       "the refined model is worse on the same frames" if p["ci"][0] > 0 else
                       "no change is resolved")
            text += f" On the same frames the change is {p['value']:+.3g} [{p['ci'][0]:+.3g}, {p['ci'][1]:+.3g}]: {verdict}."
        c = ceilings.get(set_name)
        if c is not None and "forces" in name:
            text += (f" The pair correction fitted straight to these forces would reach "
                     f"{c['ceiling_forces_rmse_meV_per_A']:.1f} meV/Å from the base's {c['base_forces_rmse_meV_per_A']:.1f} "
                     "(odd frames): the most this form can give.")
        lines.append(text)
    return ["Why these checks fail (measured):", "", *lines, ""] if lines else []


# ----------------------------------------------------------------------------- figures


def figure_functions(structure: dict, path: Path) -> Path | None:
    """Every function target (g, G, S, F) at every state point: experiment ± 2σ and each model
    (the first model's panels set the layout)."""
    base = next(iter(structure.values()))
    panels = [(p, n) for p in _points(base) for n, t in base[p]["targets"].items() if t["x"] is not None]
    if not panels:
        return None
    fig, axes = _fig(len(panels), 1, (7.0, 3.2 * len(panels)))
    for ax, (point, name) in zip(axes[:, 0], panels):
        exp = base[point]["targets"][name]
        x, y = np.asarray(exp["x"]), np.asarray(exp["experiment"])
        s = np.asarray(exp["sigma_experiment"]) if exp["sigma_experiment"] else np.zeros_like(y)
        ax.fill_between(x, y - 2 * s, y + 2 * s, color="0.7", label="experiment ± 2σ")
        ax.plot(x, y, color="k", lw=1.0, label="experiment")
        for i, (model, comp) in enumerate(structure.items()):
            t = comp.get(point, {}).get("targets", {}).get(name)
            if t is not None:
                st = style(i)
                ax.plot(x, t["model"], lw=1.0, color=st["color"], ls=st["ls"], label=f"{model} (R_w {t['r_w']:.3f})")
        xl, yl = AXIS.get(exp["observable"], ("x", name))
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{name} at {point}")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def figure_scalars(structure: dict, path: Path) -> Path | None:
    first = next(iter(structure.values()))
    names = list(scalar_values(first))
    if not names:
        return None
    models = list(structure)
    fig, axes = _fig(1, len(names), (3.0 * len(names), 3.2))
    for ax, name in zip(axes[0], names):
        values = [scalar_values(structure[m]).get(name, (np.nan,))[0] for m in models]
        _, exp, sig, _ = scalar_values(first)[name]
        ax.bar(range(len(models)), values, color=[style(i)["color"] for i in range(len(models))])
        ax.axhline(exp, color="k", label="experiment")
        if sig:
            ax.axhspan(exp - 2 * sig, exp + 2 * sig, color="0.8")
        ax.set_xticks(range(len(models)), models, rotation=30, fontsize=7)
        finite = [v for v in values + [exp] if np.isfinite(v)]
        lo, hi = min(finite), max(finite)
        ax.set_ylim(lo - 0.1 * (hi - lo) - 0.05, hi + 0.1 * (hi - lo) + 0.05)
        ax.set_title(name)
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, path)


def figure_training(refine: dict, path: Path) -> Path | None:
    """One loss panel per run (terms, log scale; the selected θ circled) and one N_eff/N panel."""
    runs = [(name, run) for name, run in refine.items() if run["history"]]
    if not runs:
        return None
    fig, axes = _fig(len(runs) + 1, 1, (7.0, 2.4 * (len(runs) + 1)))
    neff = axes[len(runs), 0]
    for i, (name, run) in enumerate(runs):
        hist, ax, st = run["history"], axes[i, 0], style(i + 1)
        u = [h["update"] for h in hist]
        ax.semilogy(u, [h["loss"]["total"] for h in hist], color="k", lw=1.5, label="total")
        terms = [k for k in hist[0]["loss"] if k not in ("total", "fm_energy_mse", "fm_force_mse")]
        for j, key in enumerate(terms):
            ax.semilogy(u, [h["loss"][key] for h in hist], lw=0.8, ls="--", color=f"C{(j + 5) % 10}", label=key)
        selected = run.get("selected") or {}
        if selected.get("rule") == "best":
            ax.plot([selected["update"]], [selected["loss"]], "o", mfc="none", mec="r", ms=10,
                    label=f"selected (update {selected['update']})")
            neff.axhline(selected["min_n_eff_ratio"], color="0.6", ls=":", lw=0.8)
        ax.set_title(f"{name} (λ = {run['lambda']:g})", fontsize=9)
        ax.set_ylabel("loss")
        ax.legend(fontsize=6, ncol=3)
        neff.plot(u, [min(h["n_eff_ratio"].values()) for h in hist], color=st["color"], ls=st["ls"],
                  marker=st["marker"], ms=3, label=name)
        res = [h["update"] for h in hist if h["resampled"]]
        neff.plot(res, [0.03 + 0.05 * i] * len(res), "|", ms=8, color=st["color"])
    neff.set_ylabel("N_eff / N")
    neff.set_title("N_eff/N (| resampled; ⋯ select threshold)", fontsize=9)
    neff.set_xlabel("update")
    neff.set_ylim(0, 1.05)
    neff.legend(fontsize=6)
    return save_figure(fig, path)


def figure_binding(evaluation: dict, reference: dict | None, path: Path) -> Path | None:
    models = [(n, e["binding"]) for n, e in evaluation.items() if "binding" in e]
    if not models:
        return None
    fig, axes = _fig()
    ax = axes[0, 0]
    lows = []
    for key in sorted(reference or {}):
        if key.endswith("_meV_per_atom") and isinstance(reference[key], list):
            ax.plot(reference["spacing_A"], reference[key], "k--" if "teacher" in key else "k-",
                    label=key[: -len("_meV_per_atom")])
            lows.append(float(np.min(reference[key])))
    for i, (name, b) in enumerate(models):
        ax.plot(b["spacing_A"], b["meV_per_atom"], ms=3, lw=1.0, **style(i), label=name)
        lows.append(float(np.min(b["meV_per_atom"])))
    spacings = [s for _, b in models for s in b["spacing_A"]]
    ax.set_xlim(min(spacings) - 0.1, max(spacings) + 0.1)
    ax.set_ylim(min(lows) - 5.0, 40)
    ax.set_xlabel("interlayer spacing (Å)")
    ax.set_ylabel("ΔE (meV/atom, vs the reference spacing)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def figure_errors(evaluation: dict, path: Path) -> Path | None:
    """Force and de-biased energy RMSE vs each set's first reference, against cell size."""
    if not any(e.get("sets") for e in evaluation.values()):
        return None
    fig, axes = _fig(1, 2, (9.0, 3.6))
    for k, (key, label) in enumerate((("forces_rmse_meV_per_A", "force RMSE (meV/Å)"),
                                      ("energy_rmse_debiased_meV_per_atom", "E RMSE − offset (meV/atom)"))):
        ax = axes[0, k]
        for j, (name, e) in enumerate(evaluation.items()):
            sets = list(e["sets"].values())
            refs = [next(r for r in s if r.startswith("vs_")) for s in sets]
            n = np.array([s["atoms"] for s in sets], dtype=float) * (1 + 0.02 * j)
            v = np.array([s[r][key]["value"] for s, r in zip(sets, refs)])
            lo = v - np.array([s[r][key]["ci"][0] for s, r in zip(sets, refs)])
            hi = np.array([s[r][key]["ci"][1] for s, r in zip(sets, refs)]) - v
            ax.errorbar(n, v, yerr=[lo, hi], capsize=3, ms=4, ls="none", marker=style(j)["marker"],
                        color=style(j)["color"], label=name)
        ax.set_xscale("log")
        atoms = sorted({s["atoms"] for e in evaluation.values() for s in e["sets"].values()})
        ax.set_xticks(atoms, [str(a) for a in atoms])
        ax.minorticks_off()
        ax.set_xlabel("atoms in the cell")
        ax.set_ylabel(label + " vs each set's first reference")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- tables


def error_table(evaluation: dict) -> list[str]:
    keys = (("energy_rmse_meV_per_atom", ".2f"), ("energy_bias_meV_per_atom", "+.2f"),
            ("energy_rmse_debiased_meV_per_atom", ".2f"), ("forces_rmse_meV_per_A", ".1f"),
            ("forces_in_plane_rmse_meV_per_A", ".1f"), ("forces_out_of_plane_rmse_meV_per_A", ".1f"),
            ("stress_rmse_GPa", ".3f"))
    lines = ["| model | set | frames | E RMSE | E bias | E RMSE − bias | F RMSE | F in-plane | F out-of-plane | σ RMSE (GPa) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in evaluation.items():
        for set_name, s in e.get("sets", {}).items():
            for ref in [k[3:] for k in s if k.startswith("vs_")]:
                cells = [_ci(s[f"vs_{ref}"][k], f) for k, f in keys]
                lines.append(f"| {name} | {set_name} ({s['atoms']} atoms) vs {ref} | {s['frames']} | " + " | ".join(cells) + " |")
    return lines


def ceiling_table(evaluation: dict, reference: str | None) -> list[str]:
    """Per frame set and direction (all, in plane, out of plane): the base's, the refined model's
    and the pair ceiling's force RMSE on the ceiling's odd frames, and the share of the ceiling's
    gain the refinement reached, (base − refined)/(base − ceiling)."""
    from difftre_torch.workflow.checks import odd_frame_rmse

    ceiling = (evaluation.get("refined") or {}).get("pair_ceiling") or {}
    base, refined = (evaluation.get(m, {}).get("sets", {}) for m in ("base", "refined"))
    key = f"per_frame_vs_{reference}"
    lines = []
    for name, c in ceiling.items():
        if not isinstance(c, dict) or key not in base.get(name, {}) or key not in refined.get(name, {}):
            continue
        for part, label, suffix in (("all", "all", ""), ("in_plane", "in plane", "in_plane_"),
                                    ("out_of_plane", "out of plane", "out_of_plane_")):
            b, r = odd_frame_rmse(base[name][key], part), odd_frame_rmse(refined[name][key], part)
            cb, cc = c.get(f"base_forces_{suffix}rmse_meV_per_A"), c.get(f"ceiling_forces_{suffix}rmse_meV_per_A")
            if cb is None or cc is None:
                continue
            share = f"{(b - r) / (cb - cc):+.0%}" if cb - cc > 0 else "—"
            lines.append(f"| {name} | {label} | {b:.1f} | {r:.1f} | {cc:.1f} | {share} |")
    if not lines:
        return []
    return ["| set | forces | base | refined | ceiling | refined's share of the ceiling's gain |",
            "|---|---|---:|---:|---:|---:|", *lines]


def lambda_table(structure: dict, evaluation: dict, refine: dict) -> list[str]:
    """One row per model: λ, each function target's R_w, each scalar target, and per frame set
    the force RMSE vs its first reference with the paired change against the base."""
    base = structure["base"]
    functions = [(p, n) for p in _points(base) for n, t in base[p]["targets"].items() if t["x"] is not None]
    scalars = list(scalar_values(base))
    sets = list((evaluation.get("base") or {}).get("sets", {}))
    head = (["model", "λ"] + [f"R_w {n}, {p}" for p, n in functions] + scalars
            + [f"F RMSE {s} (meV/Å)" for s in sets] + [f"ΔF vs base, {s} (meV/Å)" for s in sets])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, comp in structure.items():
        lam = "—" if name == "base" else f"{refine[name]['lambda']:g}" if name in refine else "?"
        row = [name, lam]
        row += [f"{comp[p]['targets'][n]['r_w']:.3f}" if n in comp.get(p, {}).get("targets", {}) else "" for p, n in functions]
        sv = scalar_values(comp)
        row += [f"{sv[n][0]:.3f}" if n in sv else "" for n in scalars]
        e = evaluation.get(name, {}).get("sets", {})
        for s in sets:
            ref = next((k[3:] for k in e.get(s, {}) if k.startswith("vs_")), None)
            row.append("" if ref is None else _ci(e[s][f"vs_{ref}"]["forces_rmse_meV_per_A"], ".1f"))
        for s in sets:
            if name == "base" or s not in e:
                row.append("0" if name == "base" else "")
                continue
            ref = next(k[3:] for k in e[s] if k.startswith("vs_"))
            p = paired(evaluation["base"]["sets"][s], e[s], ref, "forces_rmse_meV_per_A")
            row.append("—" if p is None else f"{p['value']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}]")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_report(results: dict, out: Path, job) -> dict:
    """REPORT.md, the figures and summary.json in ``out``; returns paths and the headline."""
    out.mkdir(parents=True, exist_ok=True)
    structure = structure_of(results)
    evaluation = _models(results.get("evaluate"))
    refine = _models(results.get("refine"))
    can_check = "refined" in structure and "base" in structure
    checks = (measure(job.report.checks, structure, evaluation, binding_reference=results.get("binding_reference"))
              if can_check and job.report.checks else {})
    table = headline(structure, evaluation, checks)
    rows = state_rows(structure, job) if structure else []
    figures = {k: v for k, v in {
        "functions": figure_functions(structure, out / "functions.png") if structure else None,
        # one state point: bars per scalar; several: the curves against T and P replace them
        "scalars": figure_scalars(structure, out / "scalars.png")
        if structure and len({r["point"] for r in rows}) <= 1 else None,
        "training": figure_training(refine, out / "training.png"),
        "state_points": figure_states(rows, out / "state_points.png", style),
        "binding": figure_binding(evaluation, results.get("binding_reference"), out / "binding.png"),
        "errors_vs_size": figure_errors(evaluation, out / "errors_vs_size.png"),
    }.items() if v is not None}
    binding = {name: e["binding"]["minimum"] for name, e in evaluation.items() if "binding" in e}
    binding.update((results.get("binding_reference") or {}).get("minimum", {}))
    summary = {
        "checks": checks,
        "structure": {name: {p: {t: {"r_w": v["r_w"], "chi2_per_bin": v["chi2_per_bin"], "model": v["model"],
                                     "experiment": v["experiment"]} if v["x"] is None else
                                 {"r_w": v["r_w"], "chi2_per_bin": v["chi2_per_bin"]}
                                 for t, v in comp[p]["targets"].items()} for p in _points(comp)}
                      for name, comp in structure.items()},
        "evaluation": evaluation,
        "binding_minima": binding,
        "state_points": rows,
        "refine": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in refine.items()},
        "wall_s": {step: (results.get(step) or {}).get("wall_s") for step in
                   ("structure_base", "refine", "structure_refined", "evaluate")},
        "figures": {k: Path(v).name for k, v in figures.items()},
        "config": results["config"],
    }
    atomic_write_json(out / "summary.json", portable(summary, Path.cwd()))
    md = [f"# {job.report.title}", "",
          f"Made by `difftre refine {Path(job.source).name}`; every number is also in `summary.json`.", "",
          "## Headline", "", table, "", *findings(checks, evaluation)]
    if structure:
        md += ["## Structure against experiment", "",
               "R_w = sqrt(Σ w (o − c)² / Σ w o²), w = 1/σ_exp²; χ²/bin with the experiment's and the model's "
               "(block) σ. Functions are computed through the options the experiment file states "
               "(Q range, window, weighting).", ""]
        md += [f"![{k}]({Path(v).name})" for k, v in figures.items() if k in ("functions", "scalars")] + [""]
    if len({r["point"] for r in rows}) > 1:
        md += ["## Across state points", "",
               "Each scalar target at each state point: the models' means ± block standard error, the experiment "
               "± σ. 'held out' rows are predictions: the refinement never fitted that quantity at that state "
               "point.", "", *states_table(rows), ""]
        if "state_points" in figures:
            md += ["![state points](state_points.png)", ""]
    if refine:
        md += ["## Refinement", "", "![training](training.png)", "",
               "The refined model of each run is the θ its `selected` column names: 'best' is the θ at which "
               "the lowest loss was evaluated among the updates with N_eff/N ≥ trainer.select_min_n_eff_ratio; "
               "'last' is θ after the last step.", "",
               "| model | λ | updates | resamples | loss initial → final | selected |",
               "|---|---:|---:|---:|---|---|"]
        for name, run in refine.items():
            li, lf = (run.get("loss_initial") or {}).get("total", float("nan")), run["loss_final"]["total"]
            sel = run.get("selected") or {"rule": "last", "update": len(run["history"])}
            md.append(f"| {name} | {run['lambda']:g} | {len(run['history'])} | {run['resamples']} | {li:.4g} → {lf:.4g} "
                      + (f"| best: θ evaluated at update {sel['update']} |" if sel["rule"] == "best"
                         else f"| {sel['rule']}: θ after update {sel['update']} |"))
        md.append("")
    if any(e.get("sets") for e in evaluation.values()):
        md += ["## Labelled frames (transferability)", "",
               "Errors with 95 % bootstrap intervals over frames. The energy offset (bias) is reported but not "
               "judged: a constant energy per atom moves no force and no ensemble average, so no structural "
               "experiment can fix it; 'E RMSE − bias' is the one that matters.", ""]
        md += error_table(evaluation) + ["", "![errors](errors_vs_size.png)", ""]
        reference = job.evaluation.ceiling.reference if job.evaluation.ceiling is not None else None
        by_direction = ceiling_table(evaluation, reference)
        if by_direction:
            md += ["### What the correction's form can reach", "",
                   f"Force RMSE vs {reference} (meV/Å) on the pair ceiling's odd frames: the base, the refined model, "
                   "and the same correction form fitted straight to those forces (`evaluation.ceiling`), split into the "
                   "components in the layers' plane and along its normal.", "", *by_direction, ""]
    if binding:
        md += ["## Interlayer binding", "", "| curve | minimum (Å) | depth (meV/atom) |", "|---|---:|---:|"]
        md += [f"| {k} | {v['spacing_A']:.3f} | {v['depth_meV_per_atom']:.2f} |" for k, v in binding.items()]
        md += ["", "![binding](binding.png)", ""]
    if len(structure) > 2:
        md += ["## λ scan: experiment vs reference data", "",
               "Each refined model was refined with its own force-matching weight λ; everything else the same.", "",
               *lambda_table(structure, evaluation, refine), ""]
    path = atomic_write_text(out / "REPORT.md", "\n".join(md) + "\n")
    return {"report": str(path), "summary": str(out / "summary.json"), "headline": table, "checks": checks}
