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
* ``rise_at_most``: refined/base − 1 ≤ ``threshold`` on each chosen set.

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
    if check.kind in ("r_w_cut", "within"):
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
    if check.kind != "within" and check.metric not in _metrics():
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


def r_w_cut(check: CheckEntry, structure: dict, evaluation: dict) -> dict[str, dict]:
    base, refined = (_comparison(structure, m, check)["r_w"] for m in ("base", "refined"))
    cut = 1.0 - refined / base
    return {f"R_w of {check.target} cut by >= {100 * check.threshold:.0f} %": {
        "base": base, "refined": refined, "cut": cut, "holds": bool(cut >= check.threshold)}}


def within(check: CheckEntry, structure: dict, evaluation: dict) -> dict[str, dict]:
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


def errors_better(check, structure, evaluation):
    return _errors(check, evaluation, True)


def errors_not_worse(check, structure, evaluation):
    return _errors(check, evaluation, False)


def rise_at_most(check: CheckEntry, structure: dict, evaluation: dict) -> dict[str, dict]:
    out = {}
    for name in _sets(check, evaluation):
        b = evaluation["base"]["sets"][name][f"vs_{check.reference}"][check.metric]["value"]
        r = evaluation["refined"]["sets"][name][f"vs_{check.reference}"][check.metric]["value"]
        out[f"{name}: {check.metric} vs {check.reference} rises <= {100 * check.threshold:.0f} %"] = {
            "base": b, "refined": r, "rise": r / b - 1.0, "holds": bool(r / b - 1.0 <= check.threshold)}
    return out


CHECKS: dict[str, Callable] = {"r_w_cut": r_w_cut, "within": within, "errors_better": errors_better,
                               "errors_not_worse": errors_not_worse, "rise_at_most": rise_at_most}


def measure(checks: list[CheckEntry], structure: dict, evaluation: dict) -> dict[str, dict]:
    """Every check's entries (name → measured values and ``holds``); needs models "base" and
    "refined" in ``structure`` and ``evaluation``."""
    out: dict[str, dict] = {}
    for check in checks:
        out.update(CHECKS[check.kind](check, structure, evaluation))
    return out
