"""The default job's "experiment": the RDF of a Lennard-Jones argon fluid from an independent code path.

``python -m recipes.lj_reference [--out difftre_torch/data/lj_argon] [--replicas 4] [--steps 20000]``
``python -m recipes.lj_reference --temperature 108 --density 0.8 --repeat 4 --out recipes/lj_liquid``
(another state point: any T, ρ* and fcc repeat; the defaults are the shipped example's)

Reference system (reduced units T* = k_B T/ε = 1.5, ρ* = ρσ³ = 0.8, a dense supercritical
fluid): argon-like σ* = 3.405 Å, ε = 0.0104 eV (k_B·120.7 K), T = 181 K, 108 atoms in a cubic
box of 17.47 Å, cut-off 8.5 Å (2.5σ*), energy shifted at the cut-off. The trajectory is made
with ASE's own ``LennardJones`` calculator (``smooth=False``, not this package's potential)
and ASE's Langevin integrator (5 fs, γ = 0.01/fs), so the target does not share code with the
model that is refined against it. g(r) is this package's :func:`partial_rdfs` (its
normalisation, N_b − δ_ab, is the one the trainer's observable uses; ASE's ``get_rdf`` differs
by N/(N − 1), see :mod:`difftre_torch.observables.rdf`), on 0.1 Å bins up to 8.5 Å, averaged
over snapshots every 100 fs after 10 ps of equilibration; σ(r) is the standard error over the
independent replicas.

Writes ``lj_argon_rdf.csv`` (r Å, g, σ) and ``lj_argon_start.extxyz`` (the fcc start, 108 atoms)
and records the command, seed and wall time in ``PROVENANCE.md`` (written by hand from the
printed summary).
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.io import write

import difftre_torch
from difftre_torch.checkpoint import atomic_write_text
from difftre_torch.observables import partial_rdfs
from difftre_torch.sampling.ase_md import build_integrator, initialise_velocities
from difftre_torch.sampling.base import SamplerConfig, StatePoint

DEFAULT_OUT = Path(difftre_torch.__file__).resolve().parent / "data" / "lj_argon"  # shipped package data
SIGMA_A = 3.405
EPSILON_EV = 0.0104
CUTOFF_A = 8.5
TEMPERATURE_K = 181.0
REDUCED_DENSITY = 0.8
R_MAX_A, N_BINS = 8.5, 85


def start_structure(reduced_density: float = REDUCED_DENSITY, repeat: int = 3):
    """4·repeat³ argon atoms on an fcc lattice at ρ* = ρσ*³ (cubic box; default 108 atoms, ρ* = 0.8)."""
    volume_per_atom = SIGMA_A ** 3 / reduced_density
    a = (4.0 * volume_per_atom) ** (1.0 / 3.0)
    return bulk("Ar", "fcc", a=a, cubic=True).repeat(repeat)


def run_replica(seed: int, equilibration_steps: int, production_steps: int, stride: int,
                temperature_K: float = TEMPERATURE_K, reduced_density: float = REDUCED_DENSITY,
                repeat: int = 3):
    atoms = start_structure(reduced_density, repeat)
    atoms.calc = AseLennardJones(sigma=SIGMA_A, epsilon=EPSILON_EV, rc=CUTOFF_A, smooth=False)
    config = SamplerConfig(timestep_fs=5.0, friction_per_fs=0.01)
    rng = np.random.default_rng(seed)
    initialise_velocities(atoms, temperature_K, rng)
    dyn = build_integrator(atoms, config, StatePoint(f"T{temperature_K:g}", temperature_K), rng)
    dyn.run(equilibration_steps)
    positions, cells, temps = [], [], []
    for _ in range(production_steps // stride):
        dyn.run(stride)
        positions.append(atoms.get_positions().copy())
        cells.append(atoms.cell.array.copy())
        temps.append(atoms.get_temperature())
    pos = torch.tensor(np.stack(positions))
    cell = torch.tensor(np.stack(cells))
    r, partials = partial_rdfs(pos, cell, torch.tensor(atoms.numbers), R_MAX_A, N_BINS)
    return r.numpy(), partials[(18, 18)].mean(0).numpy(), float(np.mean(temps))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--name", default="lj_argon", help="file stem: <name>_rdf.csv, <name>_start.extxyz")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE_K, help="K")
    parser.add_argument("--density", type=float, default=REDUCED_DENSITY, help="reduced density ρσ*³")
    parser.add_argument("--repeat", type=int, default=3, help="fcc conventional cells per edge (4·n³ atoms)")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--equilibration", type=int, default=2000, help="steps of 5 fs")
    parser.add_argument("--steps", type=int, default=20000, help="production steps of 5 fs")
    parser.add_argument("--stride", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    curves, temps = [], []
    for k in range(args.replicas):
        r, g, temp = run_replica(args.seed + k, args.equilibration, args.steps, args.stride,
                                 args.temperature, args.density, args.repeat)
        curves.append(g)
        temps.append(temp)
        print(f"replica {k}: mean kinetic T {temp:.1f} K", flush=True)
    curves = np.stack(curves)
    mean = curves.mean(0)
    sem = curves.std(0, ddof=1) / np.sqrt(len(curves))
    floor = 1e-3  # bins where no replica has a pair (r < ~3 Å) get a small σ, not zero
    sem = np.maximum(sem, floor)
    out = Path(args.out)
    t_star = args.temperature * units.kB / EPSILON_EV
    rows = [f"# r_A,g,sigma  (LJ argon fluid, T* = {t_star:.3g}, rho* = {args.density:g}, "
            f"{4 * args.repeat ** 3} atoms; recipes/lj_reference.py)"]
    rows += [f"{a:.4f},{b:.6f},{c:.6f}" for a, b, c in zip(r, mean, sem)]
    atomic_write_text(out / f"{args.name}_rdf.csv", "\n".join(rows) + "\n")
    write(out / f"{args.name}_start.extxyz", start_structure(args.density, args.repeat))
    summary = {"command": "python -m recipes.lj_reference " + " ".join(sys.argv[1:] if argv is None else argv),
               "replicas": args.replicas, "seed": args.seed, "mean_temperature_K": float(np.mean(temps)),
               "wall_s": round(time.perf_counter() - t0, 1), "peak_g": float(mean.max()),
               "peak_r_A": float(r[mean.argmax()])}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
