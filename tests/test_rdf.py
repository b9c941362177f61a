"""Partial and total RDFs: against ASE's get_rdf, identities, the ideal gas, smoothing, errors.

ASE's ``ase.geometry.rdf.get_rdf(atoms, rmax, nbins, elements=(Z_a, Z_b))`` (3.27+) conventions,
accounted for below:
* normalisation V / (N_a N_b) · n_ab / V_k, whereas ours uses N_a (N_b − δ_ab); hence
  ASE = ours · (N_b − δ_ab) / N_b, and the two agree exactly for a ≠ b;
* the same exact shell volume V_k = (4π/3)(r_hi³ − r_lo³) and bins np.linspace(0, rmax, nbins+1)
  with r at the bin centres; ASE's bins are right-closed (index ceil(d/Δr)), ours left-closed,
  so no test distance may sit exactly on a bin edge (the crystal's shells are placed between);
* ASE refuses rmax > half the perpendicular cell width: beyond it we compare with ASE on a
  repeated supercell, whose ASE RDF equals the small cell's (N and V both scale);
* ASE's loop skips a centre whose neighbours all have index 0 (``np.count_nonzero(j_indices)``);
  none of the systems here has such a centre.
"""

import math

import numpy as np
import periodictable
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.geometry.rdf import get_rdf

from difftre_torch.observables import faber_ziman_weights, partial_rdfs, total_rdf

DT = torch.float64


def _tensors(images):
    positions = torch.tensor(np.stack([a.positions for a in images]), dtype=DT)
    cell = torch.tensor(np.stack([np.array(a.cell) for a in images]), dtype=DT)
    return positions, cell, torch.tensor(images[0].numbers)


def _random_images(cell, numbers, n_images, seed):
    rng = np.random.default_rng(seed)
    return [
        Atoms(numbers=numbers, scaled_positions=rng.random((len(numbers), 3)), cell=cell, pbc=True)
        for _ in range(n_images)
    ]


def _assert_matches_ase(images, r_max, n_bins, ase_images=None):
    """Ours on `images` vs ASE on `ase_images` (default: the same), partial by partial, frame by frame."""
    ase_images = images if ase_images is None else ase_images
    r, partials = partial_rdfs(*_tensors(images), r_max, n_bins)
    numbers = images[0].numbers
    for (za, zb), g in partials.items():
        n_b = np.count_nonzero(numbers == zb)
        finite_size = (n_b - (za == zb)) / n_b
        for frame, atoms in enumerate(ase_images):
            for elements in ((za, zb), (zb, za)):  # ASE's g_ab = g_ba, and ours is symmetric
                g_ase, r_ase = get_rdf(atoms, r_max, n_bins, elements=elements)
                np.testing.assert_allclose(r.numpy(), r_ase, rtol=0, atol=1e-12)
                np.testing.assert_allclose(g[frame].numpy() * finite_size, g_ase, rtol=1e-10, atol=1e-10)
    return partials


def test_rocksalt_crystal_matches_ase():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)  # 64 atoms, width 11.28 Å
    # shells at 2.82, 3.99, 4.88, 5.64 Å: none on an edge of the 0.1 Å bins
    partials = _assert_matches_ase([atoms], r_max=5.6, n_bins=56)
    assert partials[(11, 17)][0].sum() > 0 and partials[(11, 11)][0].sum() > 0


def test_random_orthogonal_cell_matches_ase():
    numbers = [8] * 24 + [14] * 12
    images = _random_images(np.diag([9.0, 10.0, 11.0]), numbers, n_images=3, seed=1)
    _assert_matches_ase(images, r_max=4.4, n_bins=44)


def test_random_hexagonal_cell_matches_ase():
    cell = Atoms(cell=[10.0, 10.0, 11.0, 90, 90, 120]).cell  # in-plane width 8.66 Å
    images = _random_images(cell, [1] * 10 + [6] * 20, n_images=3, seed=2)
    _assert_matches_ase(images, r_max=4.2, n_bins=30)


def test_r_max_beyond_half_cell_matches_ase_supercell():
    # a small triclinic cell (widths ~4 Å) with r_max = 6 Å: each atom sees its own images
    # lattice vectors (self-image distances) must not sit on a bin edge either
    cell = Atoms(cell=[4.53, 4.87, 5.06, 80, 95, 110]).cell
    images = _random_images(cell, [3, 3, 3, 9, 9], n_images=2, seed=3)
    supercells = [atoms.repeat(4) for atoms in images]
    _assert_matches_ase(images, r_max=6.0, n_bins=37, ase_images=supercells)


def test_neutron_total_matches_hand_computation():
    numbers = [14] * 10 + [8] * 20
    images = _random_images(np.diag([8.0, 8.5, 9.0]), numbers, n_images=2, seed=4)
    _, partials = partial_rdfs(*_tensors(images), 4.0, 20)
    b_si, b_o = periodictable.elements[14].neutron.b_c, periodictable.elements[8].neutron.b_c  # fm
    c_si, c_o = 1 / 3, 2 / 3
    expected = (
        c_o**2 * b_o**2 * partials[(8, 8)]
        + 2 * c_o * c_si * b_o * b_si * partials[(8, 14)]
        + c_si**2 * b_si**2 * partials[(14, 14)]
    ) / (c_o * b_o + c_si * b_si) ** 2
    for composition in ({14: 10, 8: 20}, {14: 1 / 3, 8: 2 / 3}, torch.tensor(numbers), numbers):
        torch.testing.assert_close(total_rdf(partials, composition, "neutron"), expected)
    weights = faber_ziman_weights({14: 1, 8: 2}, "neutron")
    assert math.isclose(sum(float(w) for w in weights.values()), 1.0)


def test_sum_of_partials_is_species_blind_rdf():
    numbers = [11] * 7 + [17] * 13 + [19] * 4
    images = _random_images(np.diag([7.0, 8.0, 9.0]), numbers, n_images=2, seed=5)
    positions, cell, z = _tensors(images)
    _, partials = partial_rdfs(positions, cell, z, 3.4, 17)
    _, blind = partial_rdfs(positions, cell, torch.ones_like(z), 3.4, 17)
    g_blind = blind[(1, 1)]
    counts = {11: 7, 17: 13, 19: 4}
    n = sum(counts.values())
    # exact with the N_a (N_b − δ_ab) normalisation: weights N_a N_b' / (N (N − 1))
    exact = sum(
        (1 if a == b else 2) * counts[a] * (counts[b] - (a == b)) / (n * (n - 1)) * g
        for (a, b), g in partials.items()
    )
    torch.testing.assert_close(exact, g_blind)
    # the Faber–Ziman total with unit weights uses c_a c_b: equal up to O(1/N)
    concentration_weighted = sum(
        (1 if a == b else 2) * counts[a] * counts[b] / n**2 * g for (a, b), g in partials.items()
    )
    for weighting in ("number", {11: 1.0, 17: 1.0, 19: 1.0}):
        torch.testing.assert_close(total_rdf(partials, z, weighting), concentration_weighted)


def test_ideal_gas_is_one_within_counting_statistics():
    n_snapshots, box = 150, 10.0
    numbers = torch.tensor([1] * 40 + [2] * 24)
    positions = torch.rand(n_snapshots, 64, 3, dtype=DT, generator=torch.Generator().manual_seed(6)) * box
    cell = (torch.eye(3, dtype=DT) * box).expand(n_snapshots, 3, 3)
    r, partials = partial_rdfs(positions, cell, numbers, 4.5, 35, r_min=1.0)
    edges = torch.linspace(1.0, 4.5, 36, dtype=DT)
    shell = 4 * math.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3)
    n_of = {1: 40, 2: 24}
    z_scores, pooled_z = [], []
    for (a, b), g in partials.items():
        # Expected ordered-pair count over all snapshots: B N_a N_b' V_k / V. Unordered pair
        # indicators of independent uniform points are pairwise independent, so the unordered
        # count has variance ≤ its mean (Poisson bound); an a–a pair is two ordered pairs, which
        # doubles the relative variance: σ_g ≤ sqrt(m / expected), m = 2 (a = b) or 1.
        expected = n_snapshots * n_of[a] * (n_of[b] - (a == b)) * shell / box**3
        multiplicity = 2.0 if a == b else 1.0
        z_scores.append((g.mean(0) - 1.0) / torch.sqrt(multiplicity / expected))
        # pooled over 1 ≤ r < 4.5 Å (the same bound holds for the count in the whole shell):
        # σ ≈ 0.5–0.8 %, so the N_b (ASE) instead of N_b − 1 factor, a 2.5–4 % bias, shows at ~5σ
        ratio = (g.mean(0) * expected).sum() / expected.sum()
        pooled_z.append(float((ratio - 1.0) / torch.sqrt(multiplicity / expected.sum())))
    z_scores = torch.cat(z_scores)
    assert z_scores.abs().max() < 5.0  # 105 values: P(any |z| > 5) < 1e-4
    assert 0.6 < z_scores.pow(2).mean() < 1.5  # χ²/dof of 105 values: σ ≈ 0.14
    assert max(abs(z) for z in pooled_z) < 3.5


def _pair_counts(positions, cell, numbers, r_max, n_bins, **kwargs):
    """n_ab per bin, recovered from g: n = g N_a N_b' V_k / V."""
    r, partials = partial_rdfs(positions, cell, numbers, r_max, n_bins, **kwargs)
    edges = torch.linspace(kwargs.get("r_min", 0.0), r_max, n_bins + 1, dtype=positions.dtype)
    shell = 4 * math.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3)
    volume = torch.linalg.det(cell).abs()[:, None]
    counts = {}
    for (a, b), g in partials.items():
        n_a, n_b = int((numbers == a).sum()), int((numbers == b).sum())
        counts[(a, b)] = g * n_a * (n_b - (a == b)) * shell / volume
    return r, counts


def test_smoothing_conserves_counts_and_has_gradients():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    atoms.rattle(0.01, seed=7)  # shells stay within ±0.05 Å of 2.82, 3.99, 4.88, 5.64 Å
    positions, cell, numbers = _tensors([atoms])
    # r_max = 5.25 Å lies 0.3 Å (6σ) from the shells on either side: no pair's Gaussian is cut
    _, hard = _pair_counts(positions, cell, numbers, 5.25, 105)
    _, smooth = _pair_counts(positions, cell, numbers, 5.25, 105, smoothing_A=0.05)
    for pair in hard:
        assert hard[pair].sum() > 0
        torch.testing.assert_close(smooth[pair].sum(), hard[pair].sum(), rtol=1e-7, atol=0)
        assert not torch.equal(smooth[pair], hard[pair])

    positions = positions.clone().requires_grad_(True)
    _, partials = partial_rdfs(positions, cell, numbers, 5.25, 105, smoothing_A=0.05)
    loss = sum(((g - 1.0) ** 2).sum() for g in partials.values())
    (grad,) = torch.autograd.grad(loss, positions)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_smoothed_rdf_gradcheck():
    generator = torch.Generator().manual_seed(8)
    positions = (torch.rand(1, 5, 3, dtype=DT, generator=generator) * 4.0).requires_grad_(True)
    cell = torch.tensor([[[4.0, 0.0, 0.0], [0.8, 4.2, 0.0], [0.3, 0.5, 4.4]]], dtype=DT, requires_grad=True)
    numbers = torch.tensor([1, 1, 2, 2, 2])

    def stacked(x, h):
        _, partials = partial_rdfs(x, h, numbers, 3.0, 8, smoothing_A=0.3)
        return torch.cat([g for g in partials.values()], dim=-1)

    assert torch.autograd.gradcheck(stacked, (positions, cell), eps=1e-6, atol=1e-6)


def test_partials_invariant_under_atom_order_and_labels():
    images = _random_images(np.diag([6.0, 6.5, 7.0]), [11] * 6 + [17] * 10, n_images=2, seed=10)
    positions, cell, numbers = _tensors(images)
    _, partials = partial_rdfs(positions, cell, numbers, 3.0, 15)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(11))
    _, shuffled = partial_rdfs(positions[:, order], cell, numbers[order], 3.0, 15)
    swapped_numbers = torch.where(numbers == 11, 17, 11)  # the centre species of g_ab swaps
    _, swapped = partial_rdfs(positions, cell, swapped_numbers, 3.0, 15)
    for (a, b), g in partials.items():
        torch.testing.assert_close(shuffled[(a, b)], g)
        relabelled = tuple(sorted(17 if z == 11 else 11 for z in (a, b)))
        torch.testing.assert_close(swapped[relabelled], g)


def test_lone_atom_partial_is_nan_and_total_refuses():
    positions = torch.rand(1, 4, 3, dtype=DT, generator=torch.Generator().manual_seed(9)) * 5
    cell = torch.eye(3, dtype=DT)[None] * 5
    numbers = torch.tensor([1, 1, 1, 8])
    _, partials = partial_rdfs(positions, cell, numbers, 2.4, 6)
    assert torch.isnan(partials[(8, 8)]).all() and torch.isfinite(partials[(1, 8)]).all()
    with pytest.raises(ValueError, match="single atom"):
        total_rdf(partials, numbers, "xray")


def test_bad_inputs_raise():
    positions = torch.rand(2, 4, 3, dtype=DT)
    cell = torch.eye(3, dtype=DT).expand(2, 3, 3) * 5
    numbers = torch.tensor([1, 1, 8, 8])
    with pytest.raises(ValueError, match="positions"):
        partial_rdfs(positions[0], cell, numbers, 2.0, 4)
    with pytest.raises(ValueError, match="cell"):
        partial_rdfs(positions, cell[0], numbers, 2.0, 4)
    with pytest.raises(ValueError, match="numbers"):
        partial_rdfs(positions, cell, numbers[:3], 2.0, 4)
    with pytest.raises(ValueError, match="r_min"):
        partial_rdfs(positions, cell, numbers, 2.0, 4, r_min=2.0)
    with pytest.raises(ValueError, match="n_bins"):
        partial_rdfs(positions, cell, numbers, 2.0, 0)
    with pytest.raises(ValueError, match="smoothing_A"):
        partial_rdfs(positions, cell, numbers, 2.0, 4, smoothing_A=0.0)
    with pytest.raises(ValueError, match="volume"):
        partial_rdfs(positions, torch.zeros(2, 3, 3, dtype=DT), numbers, 2.0, 4)
    _, partials = partial_rdfs(positions, cell, numbers, 2.0, 4)
    with pytest.raises(KeyError):
        total_rdf(partials, {1: 1, 6: 1}, "neutron")
    with pytest.raises(ValueError, match="absent"):
        total_rdf(partials, {1: 1}, "neutron")
    with pytest.raises(ValueError, match="weighting"):
        total_rdf(partials, numbers, "electron")
