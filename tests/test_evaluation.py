"""Error metrics and bootstrap intervals (difftre_torch/evaluation.py)."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.calculators.singlepoint import SinglePointCalculator

from difftre_torch.evaluation import (
    EV_PER_A3_TO_GPA,
    Labels,
    error_summary,
    frame_errors,
    frame_errors_from_json,
    frame_errors_json,
    frame_labels,
    intervals_overlap,
    paired_difference,
    plane_normal,
    predict,
)
from difftre_torch.potentials import LennardJones


def _labels(rng, n_atoms=5, normal=(0, 0, 1)):
    return Labels(float(rng.normal()), rng.normal(size=(n_atoms, 3)), rng.normal(size=6),
                  np.asarray(normal, dtype=float))


def test_metrics_against_direct_numpy():
    rng = np.random.default_rng(0)
    ref = [_labels(rng, n) for n in (4, 6, 5, 8)]
    pred = [Labels(r.energy + rng.normal() * 0.01, r.forces + rng.normal(size=r.forces.shape) * 0.05,
                   r.stress + rng.normal(size=6) * 1e-3, r.normal) for r in ref]
    out = error_summary(pred, ref, n_boot=200)
    de = np.array([(p.energy - r.energy) / len(r.forces) for p, r in zip(pred, ref)]) * 1e3
    dF = np.concatenate([(p.forces - r.forces) for p, r in zip(pred, ref)]) * 1e3
    dS = np.concatenate([(p.stress - r.stress) for p, r in zip(pred, ref)]) * EV_PER_A3_TO_GPA
    assert out["frames"] == 4
    assert out["energy_rmse_meV_per_atom"]["value"] == pytest.approx(np.sqrt(np.mean(de**2)))
    assert out["energy_mae_meV_per_atom"]["value"] == pytest.approx(np.mean(np.abs(de)))
    assert out["energy_bias_meV_per_atom"]["value"] == pytest.approx(np.mean(de))
    assert out["energy_rmse_debiased_meV_per_atom"]["value"] == pytest.approx(np.std(de))
    assert out["forces_rmse_meV_per_A"]["value"] == pytest.approx(np.sqrt(np.mean(dF**2)))
    assert out["forces_mae_meV_per_A"]["value"] == pytest.approx(np.mean(np.abs(dF)))
    assert out["forces_in_plane_rmse_meV_per_A"]["value"] == pytest.approx(np.sqrt(np.mean(dF[:, :2] ** 2)))
    assert out["forces_out_of_plane_rmse_meV_per_A"]["value"] == pytest.approx(np.sqrt(np.mean(dF[:, 2] ** 2)))
    assert out["stress_rmse_GPa"]["value"] == pytest.approx(np.sqrt(np.mean(dS**2)))
    total, inp, outp = (out[k]["value"] for k in ("forces_rmse_meV_per_A", "forces_in_plane_rmse_meV_per_A",
                                                  "forces_out_of_plane_rmse_meV_per_A"))
    assert total**2 == pytest.approx((2 * inp**2 + outp**2) / 3)


def test_split_follows_a_tilted_plane_normal():
    """An error along the normal of a rotated layer is all out-of-plane."""
    rng = np.random.default_rng(1)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    cell = np.diag([4.0, 5.0, 7.0]) @ rot.T
    normal = plane_normal(cell)
    assert abs(normal @ cell[0]) < 1e-12 and abs(normal @ cell[1]) < 1e-12
    ref = [Labels(0.0, np.zeros((3, 3)), None, normal) for _ in range(3)]
    pred = [Labels(0.0, np.tile(0.002 * normal, (3, 1)), None, normal) for _ in range(3)]
    out = error_summary(pred, ref, n_boot=50)
    assert out["forces_out_of_plane_rmse_meV_per_A"]["value"] == pytest.approx(2.0)
    assert out["forces_in_plane_rmse_meV_per_A"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(out["stress_rmse_GPa"]["value"])


def test_constant_energy_offset_is_bias_only():
    rng = np.random.default_rng(2)
    ref = [_labels(rng, 10) for _ in range(6)]
    pred = [Labels(r.energy + 0.05, r.forces, r.stress, r.normal) for r in ref]  # +5 meV/atom
    out = error_summary(pred, ref, n_boot=100)
    assert out["energy_bias_meV_per_atom"]["value"] == pytest.approx(5.0)
    assert out["energy_rmse_meV_per_atom"]["value"] == pytest.approx(5.0)
    assert out["energy_rmse_debiased_meV_per_atom"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert out["forces_rmse_meV_per_A"]["value"] == 0.0


def test_bootstrap_interval_covers_and_shrinks():
    rng = np.random.default_rng(3)

    def summary(n_frames):
        ref = [_labels(rng, 8) for _ in range(n_frames)]
        pred = [Labels(r.energy, r.forces + rng.normal(size=r.forces.shape) * 0.1, r.stress, r.normal)
                for r in ref]
        return error_summary(pred, ref, n_boot=500, seed=4)["forces_rmse_meV_per_A"]

    small, large = summary(10), summary(200)
    for s in (small, large):
        assert s["ci"][0] <= s["value"] <= s["ci"][1]
    assert large["ci"][1] - large["ci"][0] < 0.5 * (small["ci"][1] - small["ci"][0])
    # the true RMSE (100 meV/Å) lies in the large sample's interval
    assert large["ci"][0] < 100.0 < large["ci"][1]
    assert intervals_overlap(small, large)
    assert not intervals_overlap({"ci": [1.0, 2.0]}, {"ci": [2.5, 3.0]})


def test_single_frame_has_no_interval():
    rng = np.random.default_rng(5)
    ref = [_labels(rng)]
    out = error_summary(ref, ref)
    assert out["frames"] == 1 and np.isnan(out["forces_rmse_meV_per_A"]["ci"][0])
    with pytest.raises(ValueError, match="no frames"):
        error_summary([], [])


def test_frame_labels_sources_and_errors():
    atoms = Atoms("C2", positions=[[0, 0, 0], [1.2, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    forces = np.array([[0.1, 0, 0], [-0.1, 0, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=-3.0, forces=forces, stress=np.arange(6.0))
    lab = frame_labels(atoms)
    assert lab.energy == -3.0 and np.allclose(lab.forces, forces) and np.allclose(lab.stress, np.arange(6.0))
    atoms.info["teacher_energy"] = -2.5
    atoms.info["teacher_stress"] = np.eye(3).ravel()
    atoms.arrays["teacher_forces"] = forces * 2
    teacher = frame_labels(atoms, "teacher")
    assert teacher.energy == -2.5 and np.allclose(teacher.stress, [1, 1, 1, 0, 0, 0])
    atoms.info["source_file"] = "heldout/cell112.extxyz.gz"
    with pytest.raises(KeyError, match="cell112.extxyz.gz.*reality_energy"):
        frame_labels(atoms, "reality")
    atoms.calc = None
    with pytest.raises(KeyError, match="no energy/forces"):
        frame_labels(atoms)


def test_predict_matches_ase_lennard_jones():
    """A second implementation: ASE's LennardJones labels, our LennardJones predictions."""
    sigma, eps, rc = 2.3, 0.01, 5.0
    frames = []
    for seed in range(3):
        atoms = bulk("Ar", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = AseLJ(sigma=sigma, epsilon=eps, rc=rc, smooth=False)
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
        frames.append(atoms)
    potential = LennardJones(sigma, eps, rc).to(torch.float64)
    out = error_summary(predict(potential, frames), [frame_labels(a) for a in frames], n_boot=20)
    assert out["forces_rmse_meV_per_A"]["value"] < 1e-8
    assert out["stress_rmse_GPa"]["value"] < 1e-8
    # ASE's unsmoothed LJ shifts the energy by the cut-off value; the de-biased error is still ~0
    assert out["energy_rmse_debiased_meV_per_atom"]["value"] < 1e-8


def test_paired_difference_sees_a_shared_improvement_the_marginal_intervals_hide():
    rng = np.random.default_rng(3)
    ref = [_labels(rng, 6) for _ in range(30)]
    scale = np.exp(rng.normal(size=30))  # frames differ a lot in how hard they are
    noise = [rng.normal(size=(6, 3)) * s for s in scale]
    a = [Labels(r.energy, r.forces + n, r.stress, r.normal) for r, n in zip(ref, noise)]
    b = [Labels(r.energy, r.forces + 0.97 * n, r.stress, r.normal) for r, n in zip(ref, noise)]
    ea, eb = frame_errors(a, ref), frame_errors(b, ref)
    ma, mb = error_summary(a, ref, n_boot=500), error_summary(b, ref, n_boot=500)
    key = "forces_rmse_meV_per_A"
    d = paired_difference(ea, eb, key, n_boot=500)
    assert d["value"] == pytest.approx(mb[key]["value"] - ma[key]["value"])
    assert d["value"] == pytest.approx(-0.03 * ma[key]["value"])
    assert intervals_overlap(ma[key], mb[key])  # the marginal intervals cannot tell them apart
    assert d["ci"][1] < 0  # the paired one can: b is better on every frame
    same = paired_difference(ea, ea, key, n_boot=100)
    assert same["value"] == 0.0 and same["ci"] == [0.0, 0.0]
    back = frame_errors_from_json(frame_errors_json(ea))
    assert paired_difference(back, eb, key, n_boot=500) == d
    with pytest.raises(ValueError, match="same frames"):
        paired_difference(ea, frame_errors(a[:10], ref[:10]), key)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_difference(ea, eb, "forces")
