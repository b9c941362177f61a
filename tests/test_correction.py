"""The pair correction: energy against an independent ASE-neighbour-list sum, forces and stress
against finite differences, the sampler's full-list path, the wrapper, and write/read back."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from difftre_torch.neighbors import neighbor_pairs
from difftre_torch.potentials import LennardJones, evaluate
from difftre_torch.potentials.correction import (
    CorrectedPotential,
    PairCorrection,
    PairCorrectionSpec,
    cosine_cutoff,
    species_densities,
)
from difftre_torch.potentials.io import load_corrected, save_potential

SPEC = PairCorrectionSpec(species=[6, 7], cutoff_A=4.5, centers_A=[1.5, 2.5, 3.5], width_A=0.6)


def _system(seed: int = 0):
    rng = np.random.default_rng(seed)
    cell = np.array([[5.1, 0.0, 0.0], [1.2, 4.8, 0.0], [0.3, -0.4, 5.3]])
    frac = rng.random((10, 3))
    numbers = np.array([6, 7] * 5)
    return Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)


def _correction(seed: int = 1, spec: PairCorrectionSpec = SPEC) -> PairCorrection:
    corr = PairCorrection(spec, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        corr.coefficients.copy_(0.1 * torch.randn(corr.coefficients.shape, generator=g, dtype=torch.float64))
        corr.shifts.copy_(torch.tensor([-0.3, 0.2], dtype=torch.float64))
    return corr


def _tensors(atoms: Atoms):
    return (torch.tensor(atoms.positions[None]), torch.tensor(atoms.cell.array[None]),
            torch.tensor(atoms.numbers))


def test_energy_matches_an_ase_neighbour_list_sum():
    atoms = _system()
    corr = _correction()
    i, j, d = neighbor_list("ijd", atoms, SPEC.cutoff_A)  # full list: each pair twice
    c = corr.coefficients.detach().numpy()
    channel = {(6, 6): 0, (6, 7): 1, (7, 6): 1, (7, 7): 2}
    total = 0.0
    for a, b, r in zip(i, j, d):
        fc = 0.5 * (1 + np.cos(np.pi * r / SPEC.cutoff_A))
        basis = np.exp(-(((r - np.array(SPEC.centers_A)) / SPEC.width_A) ** 2)) * fc
        total += 0.5 * basis @ c[channel[(atoms.numbers[a], atoms.numbers[b])]]
    total += 5 * (-0.3) + 5 * 0.2
    energy = corr(*_tensors(atoms))
    assert energy.shape == (1,)
    assert float(energy.detach()[0]) == pytest.approx(total, rel=1e-10, abs=1e-12)
    assert len(i) > 50  # periodic images beyond half the cell are in the sum


def test_forces_and_stress_match_finite_differences():
    atoms = _system(2)
    corr = _correction(3)
    x, h, z = _tensors(atoms)
    out = evaluate(corr, x, h, z, forces=True, stress=True)
    eps = 1e-5
    for atom, axis in [(0, 0), (3, 1), (7, 2)]:
        d = torch.zeros_like(x)
        d[0, atom, axis] = eps
        fd = -(corr(x + d, h, z) - corr(x - d, h, z)).detach() / (2 * eps)
        assert float(out.forces[0, atom, axis]) == pytest.approx(float(fd[0]), rel=1e-6, abs=1e-9)
    volume = float(torch.linalg.det(h[0]).abs())
    for a, b in [(0, 0), (1, 2), (2, 2)]:
        e = torch.zeros(3, 3, dtype=torch.float64)
        e[a, b] = eps
        plus = corr(x @ (torch.eye(3) + e), h @ (torch.eye(3) + e), z)
        minus = corr(x @ (torch.eye(3) - e), h @ (torch.eye(3) - e), z)
        fd = float((plus - minus).detach()[0]) / (2 * eps) / volume
        assert float(out.stress[0, a, b]) == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_energy_and_force_vanish_smoothly_at_the_cutoff():
    r = torch.tensor([SPEC.cutoff_A - 1e-6, SPEC.cutoff_A, SPEC.cutoff_A + 0.5], dtype=torch.float64,
                     requires_grad=True)
    f = cosine_cutoff(r, SPEC.cutoff_A)
    (grad,) = torch.autograd.grad(f.sum(), r)
    assert float(f.detach().abs().max()) < 1e-10
    assert float(grad.abs().max()) < 1e-5


def test_a_full_pair_list_with_a_longer_cutoff_gives_the_same_energy():
    atoms = _system(4)
    corr = _correction(5)
    x, h, z = _tensors(atoms)
    pairs = neighbor_pairs(x, h, SPEC.cutoff_A + 1.0, full=True)
    assert torch.allclose(corr(x, h, z, pairs=pairs), corr(x, h, z), rtol=1e-12)


def test_unknown_species_is_a_clear_error():
    atoms = _system()
    x, h, z = _tensors(atoms)
    z = z.clone()
    z[0] = 8
    with pytest.raises(ValueError, match=r"\[8\].*\[6, 7\]"):
        _correction()(x, h, z)


def test_wrapper_starts_at_the_base_and_trains_only_the_correction():
    atoms = _system(6)
    x, h, z = _tensors(atoms)
    base = LennardJones(sigma_A=1.1, epsilon_eV=0.01, cutoff_A=3.0)
    wrapped = CorrectedPotential(base, PairCorrection(SPEC, dtype=torch.float64))
    assert wrapped.r_max_A == SPEC.cutoff_A
    assert torch.allclose(wrapped(x, h, z), base(x, h, z), rtol=1e-12)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable == ["correction.coefficients", "correction.shifts"]
    both = CorrectedPotential(LennardJones(sigma_A=1.1, epsilon_eV=0.01, cutoff_A=3.0),
                              PairCorrection(SPEC, dtype=torch.float64), train_base=True)
    assert len([p for p in both.parameters() if p.requires_grad]) == 4
    # the sampler's path: one full list at r_max_A for both terms
    corr = _correction(7)
    wrapped = CorrectedPotential(base, corr)
    pairs = neighbor_pairs(x, h, wrapped.r_max_A, full=True)
    expected = base(x, h, z) + corr(x, h, z)
    assert torch.allclose(wrapped(x, h, z, pairs=pairs), expected, rtol=1e-12)
    assert torch.allclose(wrapped(x, h, z), expected, rtol=1e-12)


def test_write_and_read_back(tmp_path):
    atoms = _system(8)
    x, h, z = _tensors(atoms)
    wrapped = CorrectedPotential(LennardJones(sigma_A=1.2, epsilon_eV=0.02, cutoff_A=3.0), _correction(9))
    path = save_potential(wrapped, tmp_path / "refined")
    assert path.name == "refined.correction.pt"
    assert (tmp_path / "refined.base.pt").exists()

    def load_base(p):
        lj = LennardJones(sigma_A=1.0, epsilon_eV=1.0, cutoff_A=3.0)
        lj.load_state_dict(torch.load(p, weights_only=True))
        return lj

    back = load_corrected(path, load_base)
    assert torch.allclose(back(x, h, z), wrapped(x, h, z), rtol=1e-12)
    bad = tmp_path / "bad.correction.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="bad.correction.pt.*format"):
        load_corrected(bad, load_base)


def test_mean_field_offset_matches_quadrature_and_cancels_on_a_uniform_gas():
    from dataclasses import replace

    from scipy.integrate import quad

    rng = np.random.default_rng(11)
    n, box = 600, 14.0
    numbers = np.where(rng.random(n) < 0.4, 6, 7)
    atoms = Atoms(numbers=numbers, positions=rng.random((n, 3)) * box, cell=[box] * 3, pbc=True)
    rho = species_densities(numbers, box ** 3, [6, 7])
    spec = replace(SPEC, reference_densities_per_A3=rho)
    corr = _correction(12, spec)
    with torch.no_grad():
        corr.shifts.zero_()
        corr.coefficients.abs_()  # one sign, so the pair sum is far from zero
    c = corr.coefficients.detach().numpy()

    def integral(k):
        mu = SPEC.centers_A[k]
        f = lambda r: 4 * np.pi * r * r * np.exp(-(((r - mu) / SPEC.width_A) ** 2)) * 0.5 * (  # noqa: E731
            1 + np.cos(np.pi * r / SPEC.cutoff_A))
        return quad(f, 0.0, SPEC.cutoff_A)[0]

    I = np.array([integral(k) for k in range(len(SPEC.centers_A))])
    channel = [[0, 1], [1, 2]]
    expected = [-0.5 * sum(rho[t] * c[channel[s][t]] @ I for t in range(2)) for s in range(2)]
    assert corr.mean_field().detach().numpy() == pytest.approx(expected, rel=1e-6)
    plain = _correction(12, SPEC)
    with torch.no_grad():
        plain.coefficients.copy_(corr.coefficients)
        plain.shifts.zero_()
    x, h, z = _tensors(atoms)
    pair_only = float(plain(x, h, z).detach())
    with_offset = float(corr(x, h, z).detach())
    assert abs(pair_only) / n > 0.05  # eV per atom: the offset the pair terms add
    assert abs(with_offset) < 0.03 * abs(pair_only)  # ideal gas: g(r) = 1, the mean field is exact
    # the offset is a constant: forces unchanged
    assert torch.allclose(evaluate(corr, x, h, z).forces, evaluate(plain, x, h, z).forces, rtol=1e-12)


def test_force_jacobian_times_coefficients_gives_the_forces():
    from difftre_torch.potentials.correction import force_jacobian

    atoms = _system(13)
    corr = _correction(14)
    x, h, z = _tensors(atoms)
    J = force_jacobian(corr, x[0], h[0], z)
    assert J.shape == (30, corr.coefficients.numel())
    forces = evaluate(corr, x, h, z).forces[0].reshape(-1)
    assert torch.allclose(J @ corr.coefficients.detach().reshape(-1), forces, rtol=1e-10, atol=1e-12)


def test_energy_gradient_times_coefficients_gives_the_energy():
    from difftre_torch.potentials.correction import energy_gradient

    atoms = _system(15)
    corr = _correction(16)
    x, h, z = _tensors(atoms)
    e = energy_gradient(corr, x[0], h[0], z)
    assert e.shape == (corr.coefficients.numel(),)
    shifts = corr.shifts.detach()[corr.species_of(z)].sum()
    energy = corr(x, h, z)[0].detach()
    assert abs(float(e @ corr.coefficients.detach().reshape(-1) + shifts - energy)) < 1e-10 * max(1.0, abs(float(energy)))
    assert corr.coefficients.grad is None  # nothing left on the parameters
