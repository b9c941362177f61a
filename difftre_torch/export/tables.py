"""A pair correction as LAMMPS ``pair_style table`` files, and the error LAMMPS makes reading them.

Each unordered species pair t of a :class:`~difftre_torch.potentials.correction.PairCorrection`
is one table section of

    e_t(r) = Σ_k c_{k,t} b_k(r)  (eV),    f_t(r) = −de_t/dr  (eV/Å, positive = repulsive),

at N points equally spaced in r² from r_in to r_c (the file's ``N n RSQ r_in r_c`` line), the
correction's own energy and its exact derivative (autograd, float64). With ``pair_style table
linear N`` of the same N, LAMMPS uses these values as they are (no re-spline: its ``match``
case) and interpolates e and f/r linearly in r² between neighbouring points; a pair closer than
r_in stops LAMMPS ("Pair distance < table inner cutoff"). :func:`lammps_linear` is that
interpolation, so the error a table adds is known before LAMMPS runs: :func:`table_errors` is
the largest |e_LAMMPS − e| and |f_LAMMPS − f| of one pair over a dense grid of r (per pair; a
force on an atom sums its pairs' errors). The per-atom constants of ΔU (the shifts and the
mean field, eV per atom of each species) move no force and are not in the tables: they are
written beside them (:func:`per_atom_constants`).

Units: Å, eV, eV/Å. Conventions as in LAMMPS's ``pair_style table`` manual page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difftre_torch.potentials.correction import PairCorrection, gaussian_basis


@dataclass
class PairTable:
    """One species pair's table: ``keyword`` (section name, e.g. ``C_N``), species (Z_a, Z_b),
    r [N] Å (equally spaced in r²), energy [N] eV, force [N] eV/Å (−de/dr)."""

    keyword: str
    species: tuple[int, int]
    r: np.ndarray
    energy: np.ndarray
    force: np.ndarray

    @property
    def inner_A(self) -> float:
        return float(self.r[0])

    @property
    def outer_A(self) -> float:
        return float(self.r[-1])


def rsq_grid(inner_A: float, outer_A: float, n: int) -> np.ndarray:
    """r_i = sqrt(r_in² + (r_c² − r_in²) i/(n − 1)), i = 0..n−1 (Å): the r LAMMPS computes for a
    table section with ``RSQ r_in r_c`` (same expression, so the file and LAMMPS agree bit for bit)."""
    if not 0 < inner_A < outer_A or n < 2:
        raise ValueError(f"table grid: expected 0 < inner ({inner_A}) < outer ({outer_A}) and n ≥ 2 ({n})")
    i = np.arange(n, dtype=np.float64)
    return np.sqrt(inner_A * inner_A + (outer_A * outer_A - inner_A * inner_A) * i / (n - 1))


def pair_energy_force(correction: PairCorrection, channel: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e_t(r) (eV) and f_t(r) = −de_t/dr (eV/Å) of pair channel ``channel`` at distances r [P] Å."""
    with torch.enable_grad():
        x = torch.as_tensor(r, dtype=torch.float64, device=correction.coefficients.device).requires_grad_(True)
        coefficients = correction.coefficients.detach().to(torch.float64)
        centers = correction.centers.to(torch.float64)
        e = (gaussian_basis(x, centers, correction.spec.width_A, correction.cutoff_A) * coefficients[channel]).sum(-1)
        (de,) = torch.autograd.grad(e.sum(), x)
    return e.detach().cpu().numpy(), -de.cpu().numpy()


def species_pairs(correction: PairCorrection) -> list[tuple[int, int, int]]:
    """(index a, index b, channel) of every unordered species pair a ≤ b, in the correction's order."""
    n = len(correction.spec.species)
    return [(a, b, int(correction.channel[a, b])) for a in range(n) for b in range(a, n)]


def tabulate(correction: PairCorrection, n_points: int, inner_A: float) -> list[PairTable]:
    """Every species pair of ``correction`` on the r² grid from ``inner_A`` to its cut-off."""
    from ase.data import chemical_symbols

    species = correction.spec.species
    r = rsq_grid(inner_A, correction.cutoff_A, n_points)
    tables = []
    for a, b, channel in species_pairs(correction):
        e, f = pair_energy_force(correction, channel, r)
        e[-1], f[-1] = 0.0, 0.0  # f_c(r_c) = 0: exact zero instead of 1e-33 round-off
        keyword = f"{chemical_symbols[species[a]]}_{chemical_symbols[species[b]]}"
        tables.append(PairTable(keyword, (species[a], species[b]), r, e, f))
    return tables


def lammps_linear(table: PairTable, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``pair_style table linear N`` computes from ``table`` (same N, RSQ): e and f at r [P]
    Å, linear in r² between the table's points (f through f/r, as LAMMPS stores it)."""
    rsq = np.asarray(r, dtype=np.float64) ** 2
    grid = table.r**2
    inner_sq = grid[0]
    delta = (table.outer_A * table.outer_A - inner_sq) / (len(grid) - 1)
    if np.any(rsq < inner_sq) or np.any(rsq >= table.outer_A**2):
        raise ValueError(f"table {table.keyword}: distances outside [{table.inner_A}, {table.outer_A}) Å")
    i = ((rsq - inner_sq) / delta).astype(np.int64)
    i = np.minimum(i, len(grid) - 2)
    fraction = (rsq - grid[i]) / delta
    e = table.energy[i] + fraction * (table.energy[i + 1] - table.energy[i])
    f_over_r = table.force / table.r
    f = (f_over_r[i] + fraction * (f_over_r[i + 1] - f_over_r[i])) * np.sqrt(rsq)
    return e, f


@dataclass
class TableErrors:
    """Largest error of one pair's table against the correction itself, over all species pairs
    and a dense grid of r from r_in to r_c: energy eV, force eV/Å, and where (keyword, r Å)."""

    energy_eV: float
    force_eV_per_A: float
    worst_energy: tuple[str, float]
    worst_force: tuple[str, float]

    def to_json(self) -> dict:
        return {"max_pair_energy_error_eV": self.energy_eV, "max_pair_force_error_eV_per_A": self.force_eV_per_A,
                "worst_energy_at": {"pair": self.worst_energy[0], "r_A": self.worst_energy[1]},
                "worst_force_at": {"pair": self.worst_force[0], "r_A": self.worst_force[1]}}


def table_errors(correction: PairCorrection, tables: list[PairTable], per_interval: int = 8) -> TableErrors:
    """Max |e_LAMMPS − e| and |f_LAMMPS − f| of one pair (:func:`lammps_linear` against
    :func:`pair_energy_force`), ``per_interval`` points inside every interval of the r² grid."""
    worst_e, worst_f = (0.0, ("", 0.0)), (0.0, ("", 0.0))
    channels = {(a, b): t for a, b, t in species_pairs(correction)}
    species = correction.spec.species
    for table in tables:
        channel = channels[(species.index(table.species[0]), species.index(table.species[1]))]
        rsq = table.r**2
        frac = (np.arange(per_interval) + 0.5) / per_interval
        r = np.sqrt((rsq[:-1, None] + frac[None, :] * np.diff(rsq)[:, None]).ravel())
        r = r[r < table.outer_A]
        e_exact, f_exact = pair_energy_force(correction, channel, r)
        e_tab, f_tab = lammps_linear(table, r)
        de, df = np.abs(e_tab - e_exact), np.abs(f_tab - f_exact)
        if de.max() > worst_e[0]:
            worst_e = (float(de.max()), (table.keyword, float(r[de.argmax()])))
        if df.max() > worst_f[0]:
            worst_f = (float(df.max()), (table.keyword, float(r[df.argmax()])))
    return TableErrors(worst_e[0], worst_f[0], worst_e[1], worst_f[1])


def points_for_force_error(correction: PairCorrection, inner_A: float, tolerance_eV_per_A: float,
                           start: int = 1000, limit: int = 200_000) -> int:
    """The smallest N (doubling from ``start``) whose table's per-pair force error is at most
    ``tolerance_eV_per_A``; linear interpolation's error falls as 1/N², so one more doubling
    than needed is never taken."""
    n = start
    while True:
        errors = table_errors(correction, tabulate(correction, n, inner_A))
        if errors.force_eV_per_A <= tolerance_eV_per_A or n >= limit:
            return n
        n = min(2 * n, limit)


def write_table_file(tables: list[PairTable], path: Path, header: str) -> Path:
    """One LAMMPS table file holding every section (``# header`` lines first); returns ``path``."""
    lines = [f"# {line}" for line in header.splitlines()]
    for table in tables:
        n = len(table.r)
        lines += ["", table.keyword, f"N {n} RSQ {table.inner_A!r} {table.outer_A!r}", ""]
        lines += [f"{i + 1} {r:.16g} {e:.16g} {f:.16g}" for i, (r, e, f) in
                  enumerate(zip(table.r, table.energy, table.force))]
    path.write_text("\n".join(lines) + "\n")
    return path


def per_atom_constants(correction: PairCorrection) -> dict[str, float]:
    """The per-atom constant of ΔU for each species (shift + mean field, eV per atom): in the
    correction's energies, not in the tables (it moves no force and no ensemble average)."""
    from ase.data import chemical_symbols

    with torch.no_grad():
        values = (correction.shifts + correction.mean_field()).double().cpu().tolist()
    return {chemical_symbols[z]: float(v) for z, v in zip(correction.spec.species, values)}


def check_finite(tables: list[PairTable]) -> None:
    """Refuse a table with a NaN or infinite value (a diverged correction), naming its pair."""
    for t in tables:
        if not (np.isfinite(t.energy).all() and np.isfinite(t.force).all()):
            raise ValueError(f"table {t.keyword}: the correction gives non-finite values")

