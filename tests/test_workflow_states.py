"""Scalars across state points (difftre_torch.workflow.states): which rows are fitted and which
held out, the curves against T and P, the table and the figure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from difftre_torch.config.schema import StatePointEntry, TargetEntry
from difftre_torch.workflow.report import style
from difftre_torch.workflow.states import _curves, figure_states, fitted, state_rows, states_table

BAR = 1e-4
POINTS = [StatePointEntry("T150", 150.0, BAR), StatePointEntry("T300", 300.0, BAR),
          StatePointEntry("T375", 375.0, BAR, refine=False), StatePointEntry("T450", 450.0, BAR),
          StatePointEntry("P1", 300.0, 1.0)]


def _target(name: str, point: str, observable: str = "interlayer_spacing") -> TargetEntry:
    return TargetEntry(name=name, observable=observable, values=[3.5], sigma=[0.01], state_point=point)


def _job(compare_extra: list[TargetEntry]) -> SimpleNamespace:
    fit = [_target(f"d_{p.name}", p.name) for p in POINTS if p.name != "T375"]
    return SimpleNamespace(state_points=POINTS, targets=fit,
                           compare=SimpleNamespace(targets=fit + compare_extra))


def _scalar(value: float, exp: float) -> dict:
    return {"x": None, "model": [value], "sigma_model": [0.002], "experiment": [exp], "sigma_experiment": [0.01]}


def _structure() -> dict:
    exp = {"T150": 3.52, "T300": 3.57, "T375": 3.60, "T450": 3.63, "P1": 3.40}
    out = {}
    for model, shift in (("base", 0.9), ("refined", 0.005)):
        out[model] = {p: {"targets": {f"d_{p}": _scalar(v + shift, v)}} for p, v in exp.items()}
        out[model]["blow_ups"] = []
    return out


def test_fitted_and_held_out_rows():
    job = _job([_target("d_T375", "T375")])
    assert fitted(job, "d_T300", "T300")
    assert not fitted(job, "d_T375", "T375")      # a state point the refinement does not sample
    assert not fitted(job, "d_T300", "T150")      # fitted elsewhere, not here
    rows = state_rows(_structure(), job)
    assert [r["point"] for r in rows] == ["T150", "T300", "T375", "T450", "P1"]
    assert [r["fitted"] for r in rows] == [True, True, False, True, True]
    assert rows[2]["models"]["refined"] == pytest.approx((3.605, 0.002))
    assert rows[2]["experiment"] == pytest.approx(3.60)
    table = "\n".join(states_table(rows))
    assert table.count("held out") == 1
    # refined − experiment = 0.005 over hypot(0.002, 0.01) = 0.0102: +0.5 σ
    assert "+0.0050 (+0.5)" in table


def test_curves_split_temperature_and_pressure(tmp_path):
    rows = state_rows(_structure(), _job([_target("d_T375", "T375")]))
    panels = _curves(rows)
    assert [(q, axis, [r["point"] for r in mine]) for q, axis, mine in panels] == [
        ("interlayer_spacing", "T", ["T150", "T300", "T375", "T450"]),
        ("interlayer_spacing", "P", ["T300", "P1"]),
    ]
    path = figure_states(rows, tmp_path / "states.png", style)
    assert path is not None and path.stat().st_size > 1000


def test_one_state_point_draws_no_curve(tmp_path):
    rows = [r for r in state_rows(_structure(), _job([])) if r["point"] == "T300"]
    assert _curves(rows) == []
    assert figure_states(rows, tmp_path / "none.png", style) is None
