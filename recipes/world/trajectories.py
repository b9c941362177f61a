"""The world's MD campaigns, each a list of resumable :class:`~recipes.world.jobs.MDJob`.

``python -m recipes.world.trajectories CAMPAIGN [--shard I/N] [--runs runs/world] [--quick]``

Campaigns (all start from the relaxed 28-atom cells in ``data/world/structures``):

* ``experiment``: reality NPT (LangevinBAOAB, full cell) at 300 K and 1 bar on the 112-atom
  cell, three replicas with their own seeds, 2 ps equilibration + 5 ps production, one frame
  (positions, cell) every 10 fs. Also one teacher replica, to measure teacher-vs-reality.
* ``training``: the DFT-like data. Teacher NVT (Langevin) on the 56-atom training cell at
  100–1000 K, at the teacher's own cell and at cells strained to interlayer spacings
  3.2–3.8 Å (each with a random in-plane strain of ±1.5 %), plus the carbon-vacancy cell;
  one labelled frame every 20 fs after 200 fs of equilibration.
* ``states``: reality NPT on the 112-atom cell at the experiment's other state points
  (:data:`STATE_POINTS`: 150, 375 and 450 K at 1 bar, 300 K at 1 GPa), two replicas each,
  1.5 ps equilibration, then one frame every 10 fs (2.5 ps; 4 ps at 450 K, whose total G(r) is
  published too). Jobs are ordered replica-major, so every state point has one replica before
  any has two.
* ``heldout``: reality NVT at reality's relaxed cell on the 56-, 112-, 252- and 448-atom cells
  at 300 K; labelled frames (reality and, from the same evaluation, the teacher's labels) for
  evaluation only.

``--shard I/N`` runs every N-th job starting at I, so campaigns split over processes.
``--quick`` runs each job for a handful of steps on the given cells (used by the tests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from difftre_torch.sampling.base import SamplerConfig, StatePoint
from recipes.world import calculators
from recipes.world.jobs import MDJob, run_job
from recipes.world.structures import make_cell, with_spacing

STRUCTURES = Path("data/world/structures")
ONE_BAR_GPA = 1.0e-4

TRAINING_TEMPERATURES_K = (100.0, 300.0, 500.0, 700.0, 1000.0)
TRAINING_SPACINGS_A = (3.2, 3.4, 3.6, 3.8, None)  # None: the teacher's own relaxed cell
VACANCY_TEMPERATURES_K = (300.0, 700.0, 1000.0)
VACANCY_SPACINGS_A = (3.3, 3.6, None)


def relaxed_unit(calculator: str, structures: Path = STRUCTURES) -> Atoms:
    """The relaxed 28-atom cell of ``calculator`` written by ``recipes.world.relax``."""
    path = structures / f"{calculator}_unit.extxyz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m recipes.world.relax` first")
    atoms = read(path)
    atoms.calc = None
    return atoms


def experiment_jobs(structures: Path = STRUCTURES) -> list[tuple[MDJob, Atoms]]:
    md = SamplerConfig(timestep_fs=1.0, friction_per_fs=0.01, barostat_tau_fs=500.0)
    state = StatePoint("T300_P1bar", 300.0, pressure_GPa=ONE_BAR_GPA)
    jobs = []
    for calc, seeds in (("reality", (101, 102, 103, 104, 105)), ("teacher", (201,))):
        cell = make_cell(relaxed_unit(calc, structures), "cell112")
        for seed in seeds:
            job = MDJob(name=f"npt300_{calc}_cell112_s{seed}", calculator=calc, md=md, state=state,
                        equilibration_steps=2000, frames=500, stride=10, seed=seed, labels=False,
                        meta={"cell": "cell112"})
            jobs.append((job, cell))
    return jobs


# (temperature K, pressure GPa, production frames): the state points beside 300 K, 1 bar
STATE_POINTS = ((150.0, ONE_BAR_GPA, 250), (450.0, ONE_BAR_GPA, 400), (375.0, ONE_BAR_GPA, 250),
                (300.0, 1.0, 250))
STATE_SEEDS = (111, 112)


def state_job_name(temperature_K: float, pressure_GPa: float, calculator: str, seed: int | str) -> str:
    """``npt<T>_reality_cell112_s<seed>`` at 1 bar, ``npt<T>_<P>GPa_...`` otherwise (seed "*": a glob)."""
    tag = "" if pressure_GPa <= 2 * ONE_BAR_GPA else f"_{pressure_GPa:g}GPa"
    return f"npt{temperature_K:.0f}{tag}_{calculator}_cell112_s{seed}"


def state_jobs(structures: Path = STRUCTURES) -> list[tuple[MDJob, Atoms]]:
    md = SamplerConfig(timestep_fs=1.0, friction_per_fs=0.01, barostat_tau_fs=500.0)
    cell = make_cell(relaxed_unit("reality", structures), "cell112")
    jobs = []
    for seed in STATE_SEEDS:
        for k, (T, P, frames) in enumerate(STATE_POINTS):
            tag = f"T{T:.0f}_P1bar" if P <= 2 * ONE_BAR_GPA else f"T{T:.0f}_P{P:g}GPa"
            job = MDJob(name=state_job_name(T, P, "reality", seed + 10 * k), calculator="reality", md=md,
                        state=StatePoint(tag, T, pressure_GPa=P), equilibration_steps=1500,
                        frames=frames, stride=10, seed=seed + 10 * k, labels=False,
                        meta={"cell": "cell112"})
            jobs.append((job, cell))
    return jobs


def training_jobs(structures: Path = STRUCTURES) -> list[tuple[MDJob, Atoms]]:
    unit = relaxed_unit("teacher", structures)
    rng = np.random.default_rng(7)
    jobs = []
    grid = [("train56", T, s) for T in TRAINING_TEMPERATURES_K for s in TRAINING_SPACINGS_A]
    grid += [("train56_vac", T, s) for T in VACANCY_TEMPERATURES_K for s in VACANCY_SPACINGS_A]
    for k, (cell_name, T, spacing) in enumerate(grid):
        cell = make_cell(unit, cell_name, seed=k)
        scale = 1.0
        if spacing is not None:
            scale = float(rng.uniform(0.985, 1.015))
            cell = with_spacing(cell, spacing, in_plane_scale=scale)
        tag = "own" if spacing is None else f"{spacing:.1f}"
        md = SamplerConfig(timestep_fs=1.0, friction_per_fs=0.02)
        job = MDJob(name=f"train_{cell_name}_T{T:.0f}_d{tag}", calculator="teacher", md=md,
                    state=StatePoint(f"T{T:.0f}", T),
                    equilibration_steps=200, frames=60, stride=20, seed=1000 + k,
                    meta={"cell": cell_name, "spacing_A": spacing if spacing else 0.0,
                          "in_plane_scale": scale})
        jobs.append((job, cell))
    return jobs


def heldout_jobs(structures: Path = STRUCTURES) -> list[tuple[MDJob, Atoms]]:
    unit = relaxed_unit("reality", structures)
    md = SamplerConfig(timestep_fs=1.0, friction_per_fs=0.02)
    jobs = []
    for k, (cell_name, frames) in enumerate(
        (("train56", 40), ("cell112", 40), ("cell252", 30), ("cell448", 25))
    ):
        job = MDJob(name=f"heldout_{cell_name}_T300", calculator="reality", md=md, state=StatePoint("T300", 300.0),
                    equilibration_steps=300, frames=frames, stride=25, seed=3000 + k,
                    meta={"cell": cell_name})
        jobs.append((job, make_cell(unit, cell_name)))
    return jobs


CAMPAIGNS = {"experiment": experiment_jobs, "states": state_jobs, "training": training_jobs, "heldout": heldout_jobs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", choices=sorted(CAMPAIGNS))
    parser.add_argument("--runs", default="runs/world", help="where jobs and checkpoints go")
    parser.add_argument("--structures", default=str(STRUCTURES))
    parser.add_argument("--shard", default="0/1", help="I/N: run jobs I, I+N, I+2N, ...")
    parser.add_argument("--quick", action="store_true", help="a few steps per job (smoke test)")
    parser.add_argument("--only", default=None, help="run only jobs whose name contains this")
    args = parser.parse_args(argv)
    calculators.set_threads()
    index, count = (int(x) for x in args.shard.split("/"))
    jobs = CAMPAIGNS[args.campaign](Path(args.structures))[index::count]
    if args.only:
        jobs = [(j, a) for j, a in jobs if args.only in j.name]
    for job, atoms in jobs:
        if args.quick:
            job.equilibration_steps, job.frames, job.stride, job.checkpoint_every = 2, 2, 2, 3
        print(f"[{args.campaign}] {job.name}: {len(atoms)} atoms", flush=True)
        out = run_job(job, atoms, args.runs)
        print(f"[{args.campaign}] {job.name}: done -> {out}", flush=True)


if __name__ == "__main__":
    main()
