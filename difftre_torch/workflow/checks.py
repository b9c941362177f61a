"""Acceptance checks of a report (``report.checks``): each measured on base vs the main refined
model and reported with its numbers and whether it holds.

Kinds (fields of :class:`~difftre_torch.config.schema.CheckEntry`):

* ``r_w_cut``: 1 − R_w(refined)/R_w(base) ≥ ``threshold`` for ``target`` at ``state_point``;
* ``within``: |⟨O⟩_refined − O_exp| ≤ ``threshold`` (the target's unit; the mean over its values)
  for a scalar ``target`` at ``state_point``;
* ``errors_better``: on every frame set (``sets``, with more than ``min_atoms`` atoms) the
  ``metric`` vs ``reference`` is lower for the refined model (and, with ``intervals_apart``, the
  two 95 % intervals do not overlap); the paired difference on the same frames is reported;
* ``errors_not_worse``: the same with refined ≤ base;
* ``rise_at_most``: refined/base − 1 ≤ ``threshold`` on each chosen set;
* ``predicted``: |⟨O⟩_refined − O_exp| ≤ ``threshold`` · sqrt(σ_model² + σ_exp²) for a scalar
  ``target`` at ``state_point``: a prediction within its combined standard error (for a state
  point or target the refinement did not see);
* ``binding_depth``: the depth of the refined model's interlayer binding minimum
  (:func:`difftre_torch.analysis.binding.curve_minimum`) within ``threshold`` meV/atom of the
  ``reference`` curve's (``evaluation.binding.references``);
* ``binding_position``: the spacing of that minimum within ``threshold`` Å of the reference's;
* ``ceiling_fraction``: on every frame set (``sets``, more than ``min_atoms`` atoms) that the
  pair ceiling (``evaluation.ceiling``) reports, the refined model's force-RMSE gain against
  ``reference`` is at least ``threshold`` of the ceiling's,
  (F_base − F_refined)/(F_base − F_ceiling) on the ceiling's odd frames, and the paired 95 %
  interval of refined − base on all frames of the set lies below zero.

A new kind is one function in :data:`CHECKS` plus its validation in :func:`validate_check`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from difftre_torch.config.parse import ConfigError, suggest
from difftre_torch.config.schema import CheckEntry


def validate_check(check: CheckEntry, where: str, targets: list[str], points: list[str],
                   references: list[str], sets: list[str]) -> None:
    """Raise :class:`ConfigError` (naming ``where`` and the field) when a check names something
    the config does not have."""
    if check.kind not in CHECKS:
        raise ConfigError(f"{where}.kind: unknown check {check.kind!r}{suggest(check.kind, CHECKS)}; "
                          f"expected one of {sorted(CHECKS)}")
    if check.kind in ("binding_depth", "binding_position"):
        if not check.reference:
            raise ConfigError(f"{where}.reference: {check.kind} needs the name of a reference curve of "
                              "evaluation.binding.references (for example 'reality')")
        return
    if check.kind in ("r_w_cut", "within", "predicted"):
        if check.target not in targets:
            raise ConfigError(f"{where}.target: {check.target!r} is not a target; expected one of {targets}")
        if check.state_point is not None and check.state_point not in points:
            raise ConfigError(f"{where}.state_point: {check.state_point!r} is not a state point; expected one of {points}")
    else:
        if check.reference not in references:
            raise ConfigError(f"{where}.reference: {check.reference!r} is not a reference of evaluation.sets; "
                              f"expected one of {references}")
        for s in check.sets or []:
            if s not in sets:
                raise ConfigError(f"{where}.sets: {s!r} is not a frame set; expected one of {sets}")
    if check.kind not in ("within", "predicted") and check.metric not in _metrics():
        raise ConfigError(f"{where}.metric: {check.metric!r}{suggest(check.metric, _metrics())}; "
                          f"expected one of {list(_metrics())}")


def _metrics() -> tuple[str, ...]:
    from difftre_torch.evaluation import METRICS

    return tuple(METRICS)


def _comparison(structure: dict, model: str, check: CheckEntry) -> dict:
    points = [p for p in structure[model] if p != "blow_ups" and check.target in structure[model][p]["targets"]]
    point = check.state_point or (points[0] if points else None)
    if point is None or point not in structure[model] or check.target not in structure[model][point]["targets"]:
        raise KeyError(f"check {check.kind}: target {check.target!r} was not compared at {point!r}")
    return structure[model][point]["targets"][check.target]


def r_w_cut(check: CheckEntry, structure: dict, evaluation: dict, **context) -> dict[str, dict]:
    base, refined = (_comparison(structure, m, check)["r_w"] for m in ("base", "refined"))
    cut = 1.0 - refined / base
    return {f"R_w of {check.target} cut by >= {100 * check.threshold:.0f} %": {
        "base": base, "refined": refined, "cut": cut, "holds": bool(cut >= check.threshold)}}


def within(check: CheckEntry, structure: dict, evaluation: dict, **context) -> dict[str, dict]:
    t = _comparison(structure, "refined", check)
    value, exp = float(np.mean(t["model"])), float(np.mean(t["experiment"]))
    diff = value - exp
    return {f"{check.target} within {check.threshold:g} of the experiment": {
        "refined": value, "experiment": exp, "difference": diff, "holds": bool(abs(diff) <= check.threshold)}}


def _sets(check: CheckEntry, evaluation: dict) -> list[str]:
    base = evaluation["base"]["sets"]
    return [n for n, s in base.items() if (check.sets is None or n in check.sets)
            and f"vs_{check.reference}" in s and s["atoms"] > check.min_atoms]


def paired(base: dict, refined: dict, reference: str, metric: str) -> dict | None:
    """refined − base of ``metric`` vs ``reference`` on the same frames, with a paired bootstrap
    interval (:func:`difftre_torch.evaluation.paired_difference`); None without per-frame errors."""
    from difftre_torch.evaluation import frame_errors_from_json, paired_difference

    key = f"per_frame_vs_{reference}"
    if key not in base or key not in refined:
        return None
    return paired_difference(frame_errors_from_json(base[key]), frame_errors_from_json(refined[key]), metric)


def _errors(check: CheckEntry, evaluation: dict, strict: bool) -> dict[str, dict]:
    from difftre_torch.evaluation import intervals_overlap

    out = {}
    for name in _sets(check, evaluation):
        b, r = evaluation["base"]["sets"][name], evaluation["refined"]["sets"][name]
        eb, er = b[f"vs_{check.reference}"][check.metric], r[f"vs_{check.reference}"][check.metric]
        if strict:
            holds = er["value"] < eb["value"] and (not check.intervals_apart or not intervals_overlap(eb, er))
            label = f"{name}: {check.metric} vs {check.reference} refined < base" + (
                ", intervals apart" if check.intervals_apart else "")
        else:
            holds = er["value"] <= eb["value"]
            label = f"{name}: {check.metric} vs {check.reference} refined <= base"
        out[label] = {"base": eb, "refined": er, "holds": bool(holds),
                      "paired_difference": paired(b, r, check.reference, check.metric)}
    return out


def errors_better(check, structure, evaluation, **context):
    return _errors(check, evaluation, True)


def errors_not_worse(check, structure, evaluation, **context):
    return _errors(check, evaluation, False)


def rise_at_most(check: CheckEntry, structure: dict, evaluation: dict, **context) -> dict[str, dict]:
    out = {}
    for name in _sets(check, evaluation):
        b = evaluation["base"]["sets"][name][f"vs_{check.reference}"][check.metric]["value"]
        r = evaluation["refined"]["sets"][name][f"vs_{check.reference}"][check.metric]["value"]
        out[f"{name}: {check.metric} vs {check.reference} rises <= {100 * check.threshold:.0f} %"] = {
            "base": b, "refined": r, "rise": r / b - 1.0, "holds": bool(r / b - 1.0 <= check.threshold)}
    return out


def predicted(check: CheckEntry, structure: dict, evaluation: dict, **context) -> dict[str, dict]:
    t = _comparison(structure, "refined", check)
    if t["x"] is not None:
        raise KeyError(f"check predicted: target {check.target!r} is a function; expected a scalar target")
    value, exp = float(np.mean(t["model"])), float(np.mean(t["experiment"]))
    sigma_model = float(np.mean(t["sigma_model"]))
    sigma_exp = 0.0 if t["sigma_experiment"] is None else float(np.mean(t["sigma_experiment"]))
    combined = float(np.hypot(sigma_model, sigma_exp))
    diff = value - exp
    where = f" at {check.state_point}" if check.state_point else ""
    return {f"{check.target}{where} predicted within {check.threshold:g} combined σ": {
        "refined": value, "experiment": exp, "difference": diff, "sigma_model": sigma_model,
        "sigma_experiment": sigma_exp, "sigma_combined": combined,
        "z": diff / combined if combined > 0 else float("inf"),
        "holds": bool(abs(diff) <= check.threshold * combined)}}


def _binding(check: CheckEntry, evaluation: dict, binding_reference: dict | None, key: str,
             unit: str, label: str) -> dict[str, dict]:
    minima = (binding_reference or {}).get("minimum", {})
    if check.reference not in minima:
        raise KeyError(f"check {check.kind}: no reference curve {check.reference!r} in "
                       f"evaluation.binding.references (it has {sorted(minima)})")
    if "binding" not in evaluation.get("refined", {}):
        raise KeyError(f"check {check.kind}: the refined model has no binding curve (evaluation.binding)")
    base = evaluation.get("base", {}).get("binding", {}).get("minimum", {}).get(key)
    refined = evaluation["refined"]["binding"]["minimum"][key]
    reference = minima[check.reference][key]
    diff = refined - reference
    return {f"binding minimum {label} within {check.threshold:g} {unit} of {check.reference}": {
        "base": base, "refined": refined, "reference": reference, "difference": diff,
        "holds": bool(abs(diff) <= check.threshold)}}


def binding_depth(check: CheckEntry, structure: dict, evaluation: dict, *, binding_reference: dict | None = None,
                  **context) -> dict[str, dict]:
    return _binding(check, evaluation, binding_reference, "depth_meV_per_atom", "meV/atom", "depth")


def binding_position(check: CheckEntry, structure: dict, evaluation: dict, *,
                     binding_reference: dict | None = None, **context) -> dict[str, dict]:
    return _binding(check, evaluation, binding_reference, "spacing_A", "Å", "position")


def odd_frame_rmse(per_frame: dict, part: str = "all") -> float:
    """Force RMSE (meV/Å) over the odd frames of a set (the frames the pair ceiling reports on;
    all frames when the set has one), from its per-frame errors (``per_frame_vs_<ref>``); ``part``
    "all", "in_plane" (over 2N components) or "out_of_plane" (over N)."""
    from difftre_torch.evaluation import frame_errors_from_json

    e = frame_errors_from_json(per_frame)
    index = np.arange(len(e.force_sq))
    odd = index % 2 == 1 if len(index) > 1 else index >= 0
    if part == "in_plane":
        return float(np.sqrt(e.in_plane_sq[odd].sum() / (2 * e.atoms[odd].sum())))
    if part == "out_of_plane":
        return float(np.sqrt(e.out_of_plane_sq[odd].sum() / e.atoms[odd].sum()))
    return float(np.sqrt(e.force_sq[odd].sum() / e.force_n[odd].sum()))


def ceiling_fraction(check: CheckEntry, structure: dict, evaluation: dict, **context) -> dict[str, dict]:
    ceiling = evaluation.get("refined", {}).get("pair_ceiling")
    if not ceiling:
        raise KeyError("check ceiling_fraction: no pair ceiling was measured (evaluation.ceiling)")
    out = {}
    for name in _sets(check, evaluation):
        if name not in ceiling:
            continue
        b, r = evaluation["base"]["sets"][name], evaluation["refined"]["sets"][name]
        key = f"per_frame_vs_{check.reference}"
        base_odd, refined_odd = odd_frame_rmse(b[key]), odd_frame_rmse(r[key])
        gain_ceiling = ceiling[name]["base_forces_rmse_meV_per_A"] - ceiling[name]["ceiling_forces_rmse_meV_per_A"]
        fraction = (base_odd - refined_odd) / gain_ceiling if gain_ceiling > 0 else float("nan")
        pair = paired(b, r, check.reference, "forces_rmse_meV_per_A")
        below = pair is not None and pair["ci"][1] < 0
        out[f"{name}: force RMSE gain vs {check.reference} >= {100 * check.threshold:.0f} % of the pair "
            "ceiling's, paired interval below 0"] = {
            "base": base_odd, "refined": refined_odd, "ceiling": ceiling[name]["ceiling_forces_rmse_meV_per_A"],
            "ceiling_base": ceiling[name]["base_forces_rmse_meV_per_A"], "fraction": fraction,
            "paired_difference": pair, "holds": bool(fraction >= check.threshold and below)}
    return out


CHECKS: dict[str, Callable] = {"r_w_cut": r_w_cut, "within": within, "errors_better": errors_better,
                               "errors_not_worse": errors_not_worse, "rise_at_most": rise_at_most,
                               "predicted": predicted, "binding_depth": binding_depth,
                               "binding_position": binding_position, "ceiling_fraction": ceiling_fraction}


def measure(checks: list[CheckEntry], structure: dict, evaluation: dict, *,
            binding_reference: dict | None = None) -> dict[str, dict]:
    """Every check's entries (name → measured values and ``holds``); needs models "base" and
    "refined" in ``structure`` and ``evaluation``; ``binding_reference``: the reference curves
    (``evaluation.binding.references``) for the binding checks."""
    out: dict[str, dict] = {}
    for check in checks:
        out.update(CHECKS[check.kind](check, structure, evaluation, binding_reference=binding_reference))
    return out
