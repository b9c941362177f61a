"""Gauss–Newton pieces: the reweighting Jacobian against finite differences and its gradient
against the DiffTRe gradient, force matching's Hessian against finite differences of its gradient,
the damped step, and Levenberg–Marquardt's trust region."""

import math

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones

from difftre_torch.curvature import (LevenbergMarquardt, Trial, damped_step, flat, model_gain, predicted_change,
                                     residual_vector, snapshot_jacobians, target_residuals)
from difftre_torch.experiment.target import Target
from difftre_torch.force_matching import ReferenceFrames, force_matching_gradient
from difftre_torch.gradient import difftre_gradient
from difftre_torch.objective import make_loss_fn
from difftre_torch.potentials.analytic import HarmonicOscillators, LennardJones
from difftre_torch.reweighting import boltzmann_weights
from difftre_torch.sampling.store import SnapshotStore

T = 300.0
KT = float(units.kB * T)


class Quadratic(torch.nn.Module):
    """U = ½ k |x|² + c Σx (two parameters), so that the energy's θ-gradient varies per snapshot."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.tensor(0.05, dtype=torch.float64))

    def forward(self, positions, cell, numbers):
        return 0.5 * self.k * positions.pow(2).sum(dim=(-1, -2)) + self.c * positions.sum(dim=(-1, -2))


def chunk_fn(potential, positions, cells, numbers, store, create_graph):
    """Energy, and a θ-dependent observable O = k · mean x² (as pressure depends on θ)."""
    energy = potential(positions, cells, numbers)
    return {"energy": energy, "kx2": (potential.k * positions.pow(2).mean(dim=(-1, -2)))[:, None]}


def make_store(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(0.0, math.sqrt(KT / 1.0), size=(n, 2, 3)))
    cells = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1) * 20.0
    numbers = torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        u = 0.5 * 1.0 * x.pow(2).sum(dim=(-1, -2))  # sampled at k = 1, c = 0
    return SnapshotStore(numbers=numbers, positions=x, cells=cells, reference_energies=u, temperature_K=T,
                         observables={"x2": x.pow(2).mean(dim=-1)}, replica=torch.zeros(n, dtype=torch.long))


def targets():
    return [Target("x2", "density", np.full(2, 0.9 * KT), sigma=np.full(2, 0.1 * KT), weight=2.0),
            Target("kx2", "density", np.array([1.1 * KT]), weight=0.5)]


def setup():
    potential, store = Quadratic(), make_store()
    grouped = {"s": targets()}
    params = [potential.k, potential.c]
    return potential, store, grouped, params


def residuals_at(potential, store, grouped):
    with torch.no_grad():
        out = chunk_fn(potential, store.positions, store.cells, store.numbers, store, False)
        w = boltzmann_weights(out["energy"], store.reference_energies, KT)
    values = {**store.observables, "kx2": out["kx2"]}
    return residual_vector(grouped, ["s"], [w], [values]), w, values


def test_jacobian_matches_finite_differences_and_its_gradient_the_difftre_one():
    potential, store, grouped, params = setup()
    r, w, values = residuals_at(potential, store, grouped)
    jac = snapshot_jacobians(potential, store, chunk_fn, params, chunk_size=64)
    assert jac["energy"].shape == (300, 2) and jac["kx2"].shape == (300, 1, 2)
    res = target_residuals(grouped, ["s"], [w], [values], [jac], [KT])
    torch.testing.assert_close(res.r, r, rtol=1e-12, atol=0)
    h = 1e-6
    for p_index, p in enumerate(params):
        with torch.no_grad():
            p += h
        plus = residuals_at(potential, store, grouped)[0]
        with torch.no_grad():
            p -= 2 * h
        minus = residuals_at(potential, store, grouped)[0]
        with torch.no_grad():
            p += h
        fd = (plus - minus) / (2 * h)
        assert float((res.J[:, p_index] - fd).abs().max() / fd.abs().max()) < 1e-6
    # L = Σ r² is the trainer's loss, and 2Jᵀr its DiffTRe gradient
    loss_fn = make_loss_fn(grouped, ["s"])
    result = difftre_gradient(potential, [store], loss_fn, params, chunk_fn=chunk_fn, chunk_size=64)
    assert res.loss == pytest.approx(float(result.loss), rel=1e-12)
    torch.testing.assert_close(res.gradient(), flat(result.grads), rtol=1e-9, atol=1e-14)


def test_force_matching_hessian_matches_finite_differences_of_its_gradient():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    frames = []
    rng = np.random.default_rng(1)
    for _ in range(3):
        a = atoms.copy()
        a.positions += rng.normal(0, 0.1, a.positions.shape)
        a.calc = AseLennardJones(sigma=3.4, epsilon=0.0104, rc=6.0, smooth=False)
        a.get_potential_energy()
        frames.append(a)
    ref = ReferenceFrames.from_atoms(frames)
    potential = LennardJones(3.3, 0.011, 6.0)
    params = [potential.sigma, potential.epsilon]
    batch = [(0, np.arange(3))]
    out = force_matching_gradient(potential, ref, batch, params, curvature=True)
    h = 1e-6
    for k, p in enumerate(params):
        with torch.no_grad():
            p += h
        plus = flat(force_matching_gradient(potential, ref, batch, params).grads)
        with torch.no_grad():
            p -= 2 * h
        minus = flat(force_matching_gradient(potential, ref, batch, params).grads)
        with torch.no_grad():
            p += h
        fd = (plus - minus) / (2 * h)
        torch.testing.assert_close(out.hessian[:, k], fd, rtol=1e-5, atol=1e-9 * float(fd.abs().max()))
    torch.testing.assert_close(out.hessian, out.hessian.T, rtol=1e-10, atol=1e-12)


def test_damped_step_and_model():
    H = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    g = torch.tensor([1.0, -2.0], dtype=torch.float64)
    newton = -torch.linalg.solve(H, g)
    torch.testing.assert_close(damped_step(g, H, 0.0), newton, rtol=1e-9, atol=1e-12)
    shorter = damped_step(g, H, 10.0)
    assert shorter.norm() < newton.norm()
    assert predicted_change(g, H, newton) == pytest.approx(-model_gain(g, H))


def test_levenberg_marquardt_respects_the_trust_region():
    H = torch.eye(1, dtype=torch.float64) * 2.0
    g = torch.tensor([-2.0], dtype=torch.float64)  # L(θ + δ) = (δ − 1)² − 1 + 1: minimum at δ = 1

    def trial(delta):
        d = float(delta[0])
        return Trial(loss=(d - 1.0) ** 2, n_eff_ratio=math.exp(-4.0 * d * d))  # coverage falls with |δ|

    lm = LevenbergMarquardt(damping=1e-6, min_n_eff_ratio=0.5, max_tries=20)
    report = lm.propose(1.0, g, H, trial)
    assert report.accepted and report.tries > 1
    assert report.n_eff_ratio >= 0.5 and 0.0 < float(report.step[0]) < 1.0
    assert report.gain == pytest.approx(1.0)
    free = LevenbergMarquardt(damping=1e-6, min_n_eff_ratio=1e-9).propose(1.0, g, H, trial)
    assert float(free.step[0]) == pytest.approx(1.0, rel=1e-5) and free.tries == 1
