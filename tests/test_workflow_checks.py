"""The report's acceptance checks (difftre_torch.workflow.checks) on hand-made results whose
answers are known: predictions against their combined error, binding minima against a reference
curve, and the refined model's force gain as a fraction of the pair ceiling's."""

from __future__ import annotations

import numpy as np
import pytest

from difftre_torch.config.schema import CheckEntry
from difftre_torch.evaluation import FrameErrors, frame_errors_json
from difftre_torch.workflow.checks import measure, odd_frame_rmse


def _scalar(model: float, sigma_model: float, exp: float, sigma_exp: float | None) -> dict:
    return {"x": None, "model": [model], "sigma_model": [sigma_model], "experiment": [exp],
            "sigma_experiment": None if sigma_exp is None else [sigma_exp], "r_w": 0.0, "chi2_per_bin": 0.0}


def _structure(model: float) -> dict:
    point = {"targets": {"a_375K": _scalar(model, 0.003, 7.000, 0.004)}}
    return {"base": {"T375": point, "blow_ups": []}, "refined": {"T375": point, "blow_ups": []}}


def test_predicted_uses_the_combined_standard_error():
    check = CheckEntry(kind="predicted", target="a_375K", state_point="T375", threshold=2.0)
    # combined σ = hypot(0.003, 0.004) = 0.005: 0.009 off is 1.8 σ, 0.011 off is 2.2 σ
    inside = measure([check], _structure(7.009), {})
    (entry,) = inside.values()
    assert entry["sigma_combined"] == pytest.approx(0.005)
    assert entry["z"] == pytest.approx(1.8)
    assert entry["holds"]
    (outside,) = measure([check], _structure(6.989), {}).values()
    assert outside["z"] == pytest.approx(-2.2)
    assert not outside["holds"]


def test_predicted_refuses_a_function_target():
    structure = _structure(7.0)
    structure["refined"]["T375"]["targets"]["a_375K"]["x"] = [1.0]
    with pytest.raises(KeyError, match="scalar"):
        measure([CheckEntry(kind="predicted", target="a_375K", threshold=2.0)], structure, {})


def _binding(depth: float, spacing: float) -> dict:
    return {"binding": {"minimum": {"depth_meV_per_atom": depth, "spacing_A": spacing}}}


def test_binding_checks_against_the_reference_curve():
    reference = {"minimum": {"reality": {"depth_meV_per_atom": 46.5, "spacing_A": 3.343}}}
    evaluation = {"base": _binding(11.6, 3.98), "refined": _binding(44.0, 3.38)}
    checks = [CheckEntry(kind="binding_depth", reference="reality", threshold=3.0),
              CheckEntry(kind="binding_position", reference="reality", threshold=0.05)]
    depth, position = measure(checks, {}, evaluation, binding_reference=reference).values()
    assert depth["difference"] == pytest.approx(-2.5) and depth["holds"]
    assert depth["base"] == 11.6
    assert position["difference"] == pytest.approx(0.037) and position["holds"]
    evaluation["refined"] = _binding(61.7, 3.45)
    depth, position = measure(checks, {}, evaluation, binding_reference=reference).values()
    assert not depth["holds"] and not position["holds"]
    with pytest.raises(KeyError, match="no reference curve 'dft'"):
        measure([CheckEntry(kind="binding_depth", reference="dft", threshold=3.0)], {}, evaluation,
                binding_reference=reference)


def _per_frame(force_rmse_per_frame: list[float], atoms: int = 10) -> dict:
    n = len(force_rmse_per_frame)
    sq = np.asarray(force_rmse_per_frame) ** 2 * 3 * atoms
    return frame_errors_json(FrameErrors(
        energy=np.zeros(n), force_sq=sq, force_abs=np.zeros(n), force_n=np.full(n, 3.0 * atoms),
        in_plane_sq=sq * 2 / 3, out_of_plane_sq=sq / 3, atoms=np.full(n, float(atoms)),
        stress_sq=np.zeros(n), stress_n=np.zeros(n)))


def test_odd_frame_rmse_takes_the_odd_frames():
    # frames 1 and 3 at 3 and 4 meV/Å: RMSE sqrt((9 + 16)/2)
    assert odd_frame_rmse(_per_frame([100.0, 3.0, 100.0, 4.0])) == pytest.approx(np.sqrt(12.5))
    assert odd_frame_rmse(_per_frame([5.0])) == pytest.approx(5.0)


def _evaluation(refined_shift: float) -> dict:
    base = [50.0 + 0.5 * k for k in range(8)]
    refined = [b - refined_shift for b in base]
    sets = lambda v: {"cell112": {"atoms": 112, "frames": 8, "vs_reality": {},  # noqa: E731
                                  "per_frame_vs_reality": _per_frame(v)}}
    ceiling = {"cell112": {"frames": 4, "base_forces_rmse_meV_per_A": odd_frame_rmse(_per_frame(base)),
                           "ceiling_forces_rmse_meV_per_A": odd_frame_rmse(_per_frame(base)) - 10.0}}
    return {"base": {"sets": sets(base)}, "refined": {"sets": sets(refined), "pair_ceiling": ceiling}}


def test_ceiling_fraction_is_the_share_of_the_ceilings_gain():
    check = CheckEntry(kind="ceiling_fraction", reference="reality", threshold=0.6, min_atoms=56)
    (entry,) = measure([check], {}, _evaluation(7.0)).values()
    # every frame 7 meV/Å better, the ceiling 10 better: 70 %, and the paired interval is below 0
    assert entry["fraction"] == pytest.approx(0.7, rel=1e-3)
    assert entry["paired_difference"]["ci"][1] < 0
    assert entry["holds"]
    (entry,) = measure([check], {}, _evaluation(4.0)).values()
    assert entry["fraction"] == pytest.approx(0.4, rel=1e-3)
    assert not entry["holds"]
    with pytest.raises(KeyError, match="pair ceiling"):
        evaluation = _evaluation(4.0)
        del evaluation["refined"]["pair_ceiling"]
        measure([check], {}, evaluation)


def test_ceiling_table_by_direction():
    from difftre_torch.workflow.report import ceiling_table

    evaluation = _evaluation(7.0)
    c = evaluation["refined"]["pair_ceiling"]["cell112"]
    c.update({f"{who}_forces_{part}_rmse_meV_per_A": c[f"{who}_forces_rmse_meV_per_A"]
              for who in ("base", "ceiling") for part in ("in_plane", "out_of_plane")})
    lines = ceiling_table(evaluation, "reality")
    assert len(lines) == 2 + 3 and lines[2].startswith("| cell112 | all |") and "+70%" in lines[2]
    assert ceiling_table(evaluation, "teacher") == []
