"""Step "report": REPORT.md, PNG figures and summary.json from the steps' results.

Every number in the report comes from the steps' JSON (nothing is typed in); summary.json holds
them all, with ``criteria``: the issue's acceptance checks, each with its measured values and
whether it holds. Units: Å, meV/atom, meV/Å, GPa; R_w dimensionless (see
:mod:`difftre_torch.compare`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftre_torch.checkpoint import atomic_write_json, atomic_write_text
from difftre_torch.evaluation import intervals_overlap
from difftre_torch.monitor import save_figure
from recipes.gc3n4.inputs import NPT, NVT

LATTICE = (("a", "a_A"), ("c", "c_A"), ("spacing", "spacing_A"))
_LINES, _MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v", "P")


def style(i: int) -> dict:
    """Matplotlib style of the i-th model: its own colour, line style and marker, so models whose
    curves coincide (λ = 0 and λ = 1000 here) stay distinguishable."""
    return {"color": f"C{i % 10}", "ls": _LINES[i % len(_LINES)], "marker": _MARKERS[i % len(_MARKERS)]}


def _fig(nrows=1, ncols=1, size=(6.4, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, constrained_layout=True)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def portable(obj, root: Path):
    """``obj`` (JSON-like) with every string path under ``root`` made relative to it, so that a
    summary names files the same way on every machine."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(prefix):
        return obj[len(prefix):]
    return obj


def structure_of(results: dict) -> dict[str, dict]:
    """model name → its structure comparison (base and each refined model)."""
    out = dict(results["structure_base"])
    out.update({k: v for k, v in results["structure_refined"].items() if k != "wall_s"})
    return {k: v for k, v in out.items() if k != "wall_s"}


def lattice_values(comparison: dict) -> dict[str, float]:
    """The NPT mean a, c, spacing (Å) of one comparison."""
    t = comparison[NPT]["targets"]
    return {"a": float(np.mean(t["a"]["model"])), "c": float(t["c"]["model"][0]),
            "spacing": float(t["spacing"]["model"][0])}


def paired_change(base: dict, refined: dict, metric: str = "forces_rmse_meV_per_A") -> dict | None:
    """``metric`` vs reality (one of :data:`difftre_torch.evaluation.METRICS`), refined − base, on
    the same frames with a paired bootstrap interval (the metric's units); None when the transfer
    step kept no per-frame errors."""
    from difftre_torch.evaluation import frame_errors_from_json, paired_difference

    if "per_frame_vs_reality" not in base or "per_frame_vs_reality" not in refined:
        return None
    return paired_difference(frame_errors_from_json(base["per_frame_vs_reality"]),
                             frame_errors_from_json(refined["per_frame_vs_reality"]), metric)


def criteria(results: dict, structure: dict, transfer: dict, lattice: dict, train_atoms: int) -> dict:
    """The issue's checks, measured (base vs the main refined model)."""
    out = {}
    base_rw = structure["base"][NPT]["targets"]["G_total"]["r_w"]
    ref_rw = structure["refined"][NPT]["targets"]["G_total"]["r_w"]
    cut = 1.0 - ref_rw / base_rw
    out["R_w cut by >= 70 %"] = {"base": base_rw, "refined": ref_rw, "cut": cut, "holds": cut >= 0.70}
    lat = lattice_values(structure["refined"])
    for name, key in (("spacing", "spacing_A"), ("a", "a_A")):
        diff = lat[name] - float(lattice[key])
        out[f"{name} within 0.03 A of reality"] = {"refined": lat[name], "reality": float(lattice[key]),
                                                   "difference": diff, "holds": abs(diff) <= 0.03}
    for cell, base in transfer["base"]["heldout"].items():
        if base["atoms"] <= train_atoms:
            continue
        ref = transfer["refined"]["heldout"][cell]
        fb, fr = base["vs_reality"]["forces_rmse_meV_per_A"], ref["vs_reality"]["forces_rmse_meV_per_A"]
        out[f"{cell}: force RMSE vs reality refined < base, intervals apart"] = {
            "base": fb, "refined": fr, "holds": fr["value"] < fb["value"] and not intervals_overlap(fb, fr),
            "paired_difference": paired_change(base, ref)}
        eb = base["vs_reality"]["energy_rmse_debiased_meV_per_atom"]
        er = ref["vs_reality"]["energy_rmse_debiased_meV_per_atom"]
        out[f"{cell}: de-biased energy RMSE vs reality refined <= base"] = {
            "base": eb, "refined": er, "holds": er["value"] <= eb["value"],
            "paired_difference": paired_change(base, ref, "energy_rmse_debiased_meV_per_atom")}
    tb = transfer["base"]["teacher_test"]["forces_rmse_meV_per_A"]["value"]
    tr = transfer["refined"]["teacher_test"]["forces_rmse_meV_per_A"]["value"]
    out["teacher test force RMSE rises <= 10 %"] = {"base": tb, "refined": tr, "rise": tr / tb - 1.0,
                                                    "holds": tr / tb - 1.0 <= 0.10}
    return out


def _paired_text(paired: dict | None, unit: str) -> str:
    if paired is None:
        return ""
    verdict = ("so the refined model is better on the same frames" if paired["ci"][1] < 0 else
               "so the refined model is worse on the same frames" if paired["ci"][0] > 0 else
               "an interval that includes 0, so no change is resolved")
    return (f" On the same frames the change is {paired['value']:+.2f} "
            f"[{paired['ci'][0]:+.2f}, {paired['ci'][1]:+.2f}] {unit}, {verdict}.")


def findings(crit: dict, transfer: dict) -> list[str]:
    """Markdown lines that say, from the measured numbers, why a larger cell's force or energy
    check fails: the paired difference on the same frames, and what the best pair correction
    fitted to reality's forces reaches (:mod:`recipes.gc3n4.ceiling`)."""
    lines = []
    ceilings = transfer["refined"].get("pair_ceiling") or {}
    for name, check in crit.items():
        forces = name.endswith("force RMSE vs reality refined < base, intervals apart")
        energy = name.endswith("de-biased energy RMSE vs reality refined <= base")
        if not (forces or energy) or check["holds"]:
            continue
        cell = name.split(":")[0]
        ceiling = ceilings.get(cell)
        if forces:
            apart = not intervals_overlap(check["base"], check["refined"])
            text = (f"- {cell}: force RMSE vs reality {check['base']['value']:.1f} → {check['refined']['value']:.1f} "
                    f"meV/Å; the marginal intervals {'are apart' if apart else 'overlap'}.")
            text += _paired_text(check.get("paired_difference"), "meV/Å")
            if ceiling is not None:
                text += (f" The pair correction fitted straight to reality's forces would reach "
                         f"{ceiling['ceiling_forces_rmse_meV_per_A']:.1f} meV/Å from the base's "
                         f"{ceiling['base_forces_rmse_meV_per_A']:.1f} (odd frames). That is the most this form "
                         "can give. The experiment determines only the part of it that moves the structure "
                         "it measures.")
        else:
            text = (f"- {cell}: de-biased energy RMSE vs reality {check['base']['value']:.2f} → "
                    f"{check['refined']['value']:.2f} meV/atom.")
            text += _paired_text(check.get("paired_difference"), "meV/atom")
            if ceiling is not None and "ceiling_energy_rmse_debiased_meV_per_atom" in ceiling:
                best, base = ceiling["ceiling_energy_rmse_debiased_meV_per_atom"], ceiling[
                    "base_energy_rmse_debiased_meV_per_atom"]
                text += (f" The pair correction fitted to reality's forces gives {best:.2f} meV/atom here, from the "
                         f"base's {base:.2f} (odd frames): "
                         + ("a correction that is best for forces raises this error too, so the pair form does "
                            "not lower both on this cell." if best > base else
                            "the form could lower it, but the experiment did not determine that part of it."))
        lines.append(text)
    return (["Why these checks fail (measured):", "", *lines, ""] if lines else [])


def headline(structure: dict, transfer: dict, lattice: dict, crit: dict) -> str:
    """The table printed at the end of the run (markdown)."""
    b, r = structure["base"], structure["refined"]
    lb, lr = lattice_values(b), lattice_values(r)
    rows = [
        ("R_w of total G(r), NPT", f"{b[NPT]['targets']['G_total']['r_w']:.3f}",
         f"{r[NPT]['targets']['G_total']['r_w']:.3f}", "0 (experiment)"),
        ("χ²/bin of total G(r), NPT", f"{b[NPT]['targets']['G_total']['chi2_per_bin']:.3g}",
         f"{r[NPT]['targets']['G_total']['chi2_per_bin']:.3g}", "≈ 1"),
        ("R_w of total G(r), NVT at the experiment's cell", f"{b[NVT]['targets']['G_total']['r_w']:.3f}",
         f"{r[NVT]['targets']['G_total']['r_w']:.3f}", ""),
    ]
    for name, key in LATTICE:
        rows.append((f"{name} (Å)", f"{lb[name]:.3f}", f"{lr[name]:.3f}",
                     f"{lattice[key]:.3f} ± {lattice[key.replace('_A', '_err_A')]:.3f}"))
    for cell, base in transfer["base"]["heldout"].items():
        ref = transfer["refined"]["heldout"][cell]
        for label, key, fmt in (("F RMSE (meV/Å)", "forces_rmse_meV_per_A", ".1f"),
                                ("E RMSE − offset (meV/atom)", "energy_rmse_debiased_meV_per_atom", ".2f")):
            ci = lambda e: f"{e[key]['value']:{fmt}} [{e[key]['ci'][0]:{fmt}}, {e[key]['ci'][1]:{fmt}}]"
            rows.append((f"{cell} ({base['atoms']} atoms) vs reality: {label}", ci(base["vs_reality"]),
                         ci(ref["vs_reality"]), ""))
        ceiling = (transfer["refined"].get("pair_ceiling") or {}).get(cell)
        if ceiling is not None:
            rows.append((f"{cell}: F RMSE with the best pair correction fitted to reality's forces "
                         f"(a ceiling; {ceiling['frames']} odd frames)", f"{ceiling['base_forces_rmse_meV_per_A']:.1f}",
                         f"{ceiling['ceiling_forces_rmse_meV_per_A']:.1f}",
                         f"D3 force RMS {ceiling['d3_forces_rms_meV_per_A']:.1f}"))
        paired = paired_change(base, ref)
        if paired is not None:
            rows.append((f"{cell}: F RMSE refined − base, paired 95 % interval (meV/Å)", "",
                         f"{paired['value']:+.2f} [{paired['ci'][0]:+.2f}, {paired['ci'][1]:+.2f}]",
                         "below 0: refined better on the same frames"))
    tt = crit["teacher test force RMSE rises <= 10 %"]
    rows.append(("teacher test split: F RMSE (meV/Å)", f"{tt['base']:.1f}", f"{tt['refined']:.1f}",
                 f"rise {100 * tt['rise']:+.1f} % (≤ 10 %)"))
    lines = ["| quantity | base | refined | reality / target |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in rows]
    lines += ["", "| check | holds |", "|---|:---:|"]
    lines += [f"| {name} | {'yes' if v['holds'] else 'NO'} |" for name, v in crit.items()]
    return "\n".join(lines)


def figure_G(structure: dict, path: Path) -> Path:
    fig, axes = _fig(2, 1, (7.0, 6.5))
    for ax, point, title in ((axes[0, 0], NPT, "NPT, 300 K, 1 bar"), (axes[1, 0], NVT, "NVT at the experiment's cell")):
        exp = structure["base"][point]["targets"]["G_total"]
        x, y = np.asarray(exp["x"]), np.asarray(exp["experiment"])
        s = np.asarray(exp["sigma_experiment"]) if exp["sigma_experiment"] else np.zeros_like(y)
        ax.fill_between(x, y - 2 * s, y + 2 * s, color="0.7", label="experiment ± 2σ")
        ax.plot(x, y, color="k", lw=1.0, label="experiment")
        for i, (name, comp) in enumerate(structure.items()):
            t = comp[point]["targets"]["G_total"]
            st = style(i)
            ax.plot(x, t["model"], lw=1.0, color=st["color"], ls=st["ls"], label=f"{name} (R_w {t['r_w']:.3f})")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("G(r) (Å⁻²)")
        ax.set_title(f"total G(r) through the instrument's Q range, {title}")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def figure_lattice(structure: dict, lattice: dict, path: Path) -> Path:
    fig, axes = _fig(1, 3, (9.0, 3.2))
    names = list(structure)
    for ax, (name, key) in zip(axes[0], LATTICE):
        values = [lattice_values(structure[m])[name] for m in names]
        ax.bar(range(len(names)), values, color=[style(i)["color"] for i in range(len(names))])
        ax.axhline(lattice[key], color="k", label="experiment")
        err = lattice[key.replace("_A", "_err_A")]
        ax.axhspan(lattice[key] - 2 * err, lattice[key] + 2 * err, color="0.8")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        lo, hi = min(values + [lattice[key]]), max(values + [lattice[key]])
        ax.set_ylim(lo - 0.1 * (hi - lo) - 0.05, hi + 0.1 * (hi - lo) + 0.05)
        ax.set_title(f"{name} (Å)")
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, path)


def figure_training(refine: dict, path: Path) -> Path:
    """One loss panel per run (total and its terms, log scale; the selected θ circled) and one
    N_eff/N panel for all runs (resamples as ticks in the run's colour)."""
    runs = [(name, run) for name, run in refine.items() if run["history"]]
    fig, axes = _fig(len(runs) + 1, 1, (7.0, 2.4 * (len(runs) + 1)))
    neff = axes[len(runs), 0]
    for i, (name, run) in enumerate(runs):
        hist, ax, st = run["history"], axes[i, 0], style(i + 1)  # index 0 is the base's colour
        u = [h["update"] for h in hist]
        ax.semilogy(u, [h["loss"]["total"] for h in hist], color="k", lw=1.5, label="total")
        terms = [k for k in hist[0]["loss"] if k not in ("total", "fm_energy_mse", "fm_force_mse")]
        for j, key in enumerate(terms):
            ax.semilogy(u, [h["loss"][key] for h in hist], lw=0.8, ls="--", color=f"C{(j + 5) % 10}", label=key)
        selected = run.get("selected") or {}
        if selected.get("rule") == "best":  # the θ that became the refined model
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


def figure_binding(transfer: dict, reference: dict, path: Path) -> Path:
    fig, axes = _fig()
    ax = axes[0, 0]
    d = reference["spacing_A"]
    ax.plot(d, reference["teacher_meV_per_atom"], "k--", label="teacher (PBE-like)")
    ax.plot(d, reference["reality_meV_per_atom"], "k-", label="reality (+D3)")
    lows = [float(np.min(reference["teacher_meV_per_atom"])), float(np.min(reference["reality_meV_per_atom"]))]
    for i, name in enumerate(transfer):
        b = transfer[name]["binding"]
        st = style(i)
        ax.plot(b["spacing_A"], b["meV_per_atom"], ms=3, lw=1.0, **st, label=name)
        lows.append(float(np.min(b["meV_per_atom"])))
    ax.set_xlim(2.8, 6.0)
    ax.set_ylim(min(lows) - 5.0, 40)  # every well's bottom in view
    ax.set_xlabel("interlayer spacing (Å)")
    ax.set_ylabel("ΔE (meV/atom, vs 8 Å)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def figure_errors(transfer: dict, path: Path) -> Path:
    fig, axes = _fig(1, 2, (9.0, 3.6))
    for k, (key, label) in enumerate((("forces_rmse_meV_per_A", "force RMSE vs reality (meV/Å)"),
                                      ("energy_rmse_debiased_meV_per_atom", "E RMSE − offset vs reality (meV/atom)"))):
        ax = axes[0, k]
        for j, (name, t) in enumerate(transfer.items()):
            st = style(j)
            cells = list(t["heldout"].values())
            n = np.array([c["atoms"] for c in cells], dtype=float) * (1 + 0.02 * j)
            v = np.array([c["vs_reality"][key]["value"] for c in cells])
            lo = v - np.array([c["vs_reality"][key]["ci"][0] for c in cells])
            hi = np.array([c["vs_reality"][key]["ci"][1] for c in cells]) - v
            ax.errorbar(n, v, yerr=[lo, hi], capsize=3, ms=4, **st, label=name)
        ax.set_xscale("log")
        atoms = sorted({c["atoms"] for t in transfer.values() for c in t["heldout"].values()})
        ax.set_xticks(atoms, [str(a) for a in atoms])
        ax.minorticks_off()
        ax.set_xlabel("atoms in the cell")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def figure_lambda(structure: dict, transfer: dict, path: Path) -> Path:
    fig, axes = _fig()
    ax = axes[0, 0]
    for i, name in enumerate(structure):
        rw = structure[name][NPT]["targets"]["G_total"]["r_w"]
        f = transfer[name]["teacher_test"]["forces_rmse_meV_per_A"]
        st = style(i)
        ax.errorbar([f["value"]], [rw], xerr=[[f["value"] - f["ci"][0]], [f["ci"][1] - f["value"]]],
                    marker=st["marker"], color=st["color"], mfc="none", ms=6 + 3 * i, capsize=3, label=name)
    ax.set_xlabel("force RMSE vs teacher test split (meV/Å)")
    ax.set_ylabel("R_w of total G(r) vs experiment")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def lambda_table(structure: dict, transfer: dict, refine: dict, lattice: dict, train_atoms: int) -> list[str]:
    """Markdown table of the λ scan: one row per model (base first), what each force-matching
    weight λ gives on the experiment (R_w of the NPT total G(r); spacing and a in Å, against
    reality) and on DFT (force RMSE on the teacher test split, meV/Å), with each larger cell's
    paired force change vs the base on the same reality frames (meV/Å, 95 % interval)."""
    cells = [c for c, e in transfer["base"]["heldout"].items() if e["atoms"] > train_atoms]
    head = ("| model | λ | R_w NPT | spacing (Å) | a (Å) | F RMSE teacher test (meV/Å) | "
            + " | ".join(f"ΔF vs base, {c} (meV/Å)" for c in cells) + " |")
    lines = [head, "|---|---:|---:|---:|---:|---:|" + "---:|" * len(cells)]
    for name in structure:
        if name not in transfer:
            continue
        lat = lattice_values(structure[name])
        f = transfer[name]["teacher_test"]["forces_rmse_meV_per_A"]
        lam = "—" if name == "base" else f"{refine[name]['lambda']:g}" if name in refine else "?"
        row = [name, lam, f"{structure[name][NPT]['targets']['G_total']['r_w']:.3f}",
               f"{lat['spacing']:.3f}", f"{lat['a']:.3f}", f"{f['value']:.1f} [{f['ci'][0]:.1f}, {f['ci'][1]:.1f}]"]
        for cell in cells:
            paired = None if name == "base" else paired_change(transfer["base"]["heldout"][cell],
                                                               transfer[name]["heldout"][cell])
            row.append("0" if name == "base" else "—" if paired is None else
                       f"{paired['value']:+.2f} [{paired['ci'][0]:+.2f}, {paired['ci'][1]:+.2f}]")
        lines.append("| " + " | ".join(row) + " |")
    lines.append(f"| experiment (reality) | | 0 | {lattice['spacing_A']:.3f} | {lattice['a_A']:.3f} | | "
                 + " | ".join("" for _ in cells) + " |")
    return lines


def _error_table(transfer: dict) -> list[str]:
    keys = (("energy_rmse_meV_per_atom", ".2f"), ("energy_bias_meV_per_atom", "+.2f"),
            ("energy_rmse_debiased_meV_per_atom", ".2f"), ("forces_rmse_meV_per_A", ".1f"),
            ("forces_in_plane_rmse_meV_per_A", ".1f"), ("forces_out_of_plane_rmse_meV_per_A", ".1f"),
            ("stress_rmse_GPa", ".3f"))
    lines = ["| model | set | frames | E RMSE | E bias | E RMSE − bias | F RMSE | F in-plane | F out-of-plane | σ RMSE (GPa) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in transfer.items():
        sets = [(f"{cell} ({e['atoms']} atoms) vs {ref}", e[f"vs_{ref}"])
                for cell, e in t["heldout"].items() for ref in ("reality", "teacher")]
        sets.append(("teacher test split", t["teacher_test"]))
        for label, e in sets:
            cells = [f"{e[k]['value']:{f}} [{e[k]['ci'][0]:{f}}, {e[k]['ci'][1]:{f}}]" for k, f in keys]
            lines.append(f"| {name} | {label} | {e['frames']} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: dict, out: Path, config) -> dict:
    """Write REPORT.md, the figures and summary.json into ``out``; returns paths and headline."""
    from recipes.world.structures import CELLS

    out.mkdir(parents=True, exist_ok=True)
    structure = structure_of(results)
    transfer = {k: v for k, v in results["transfer"].items() if k != "wall_s"}
    refine = {k: v for k, v in results["refine"].items() if k != "wall_s"}
    lattice = results["lattice"]
    train_atoms = 28 * int(np.prod(CELLS["train56"][0]))
    crit = criteria(results, structure, transfer, lattice, train_atoms)
    table = headline(structure, transfer, lattice, crit)
    figures = {
        "G_overlay": figure_G(structure, out / "G_overlay.png"),
        "lattice": figure_lattice(structure, lattice, out / "lattice.png"),
        "training": figure_training(refine, out / "training.png"),
        "binding": figure_binding(transfer, results["binding_reference"], out / "binding.png"),
        "errors_vs_size": figure_errors(transfer, out / "errors_vs_size.png"),
    }
    if len(structure) > 2:
        figures["lambda_scan"] = figure_lambda(structure, transfer, out / "lambda_scan.png")
    binding = {name: t["binding"]["minimum"] for name, t in transfer.items()}
    binding.update({k: v for k, v in results["binding_reference"].get("minimum", {}).items()})
    summary = {
        "mode": config.mode,
        "criteria": crit,
        "structure": {name: {p: {t: {"r_w": v["r_w"], "chi2_per_bin": v["chi2_per_bin"]}
                                 for t, v in comp[p]["targets"].items()} for p in (NPT, NVT)}
                      for name, comp in structure.items()},
        "lattice": {"experiment": {k: lattice[k] for k in ("a_A", "c_A", "spacing_A")},
                    **{name: lattice_values(comp) for name, comp in structure.items()}},
        "transfer": transfer,
        "binding_minima": binding,
        "refine": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in refine.items()},
        "wall_s": {step: results[step].get("wall_s") for step in
                   ("structure_base", "refine", "structure_refined", "transfer")},
        "figures": {k: Path(v).name for k, v in figures.items()},  # in the report's folder
        "config": results["config"],
    }
    from recipes.gc3n4.config import ROOT

    atomic_write_json(out / "summary.json", portable(summary, ROOT))
    md = [
        "# g-C3N4: the MLIP against experiment, refined with DiffTRe",
        "",
        f"Mode: {config.mode}. Everything here is measured by `python -m recipes.gc3n4"
        f"{' --quick' if config.mode == 'quick' else ''}`; every number is also in `summary.json`.",
        "",
        "## Headline",
        "",
        table,
        "",
        *findings(crit, transfer),
        "## Structure against experiment",
        "",
        "R_w = sqrt(Σ w (G_exp − G_model)² / Σ w G_exp²), w = 1/σ_exp²; χ²/bin with the experiment's "
        "and the model's (block) σ. G(r) is the neutron-weighted total, computed through the "
        "instrument's Q range and window as the .gr header states.",
        "",
        "![G(r)](G_overlay.png)",
        "",
        "![lattice](lattice.png)",
        "",
        "## Refinement",
        "",
        "![training](training.png)",
        "",
        "The refined model of each run is the θ its `selected` column names: 'best' is the θ at "
        "which the lowest loss was evaluated among the updates with N_eff/N ≥ the config's "
        "`trainer.select_min_n_eff_ratio`; 'last' is θ after the last step.",
        "",
        "| model | λ | updates | resamples | loss initial → final | selected |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, run in refine.items():
        li, lf = (run.get("loss_initial") or {}).get("total", float("nan")), run["loss_final"]["total"]
        sel = run.get("selected") or {"rule": "last", "update": len(run["history"])}
        md.append(f"| {name} | {run['lambda']:g} | {len(run['history'])} | {run['resamples']} | {li:.4g} → {lf:.4g} "
                  + (f"| best: θ evaluated at update {sel['update']} |" if sel["rule"] == "best"
                     else f"| {sel['rule']}: θ after update {sel['update']} |"))
    md += ["", "## Transferability", "",
           "Errors with 95 % bootstrap intervals over frames. The energy offset (bias) is reported "
           "but not judged: a constant energy per atom moves no force and no ensemble average, so "
           "no structural experiment can fix it; 'E RMSE − bias' is the one that matters.", ""]
    md += _error_table(transfer)
    md += ["", "![errors](errors_vs_size.png)", "", "## Interlayer binding", "",
           "| curve | minimum (Å) | depth (meV/atom) |", "|---|---:|---:|"]
    md += [f"| {k} | {v['spacing_A']:.3f} | {v['depth_meV_per_atom']:.2f} |" for k, v in binding.items()]
    md += ["", "![binding](binding.png)", ""]
    if "lambda_scan" in figures:
        md += ["## λ scan: experiment vs DFT", "",
               "Each refined model was refined with its own force-matching weight λ on the teacher (DFT) "
               "forces; everything else the same.", "",
               *lambda_table(structure, transfer, refine, lattice, train_atoms), "",
               "![lambda](lambda_scan.png)", ""]
    path = atomic_write_text(out / "REPORT.md", "\n".join(md) + "\n")
    return {"report": str(path), "summary": str(out / "summary.json"), "headline": table}
