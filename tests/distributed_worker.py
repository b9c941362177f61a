"""One sample and one gradient of a small Lennard-Jones system, alone or as one rank of several.

Run by tests/test_distributed.py: ``python tests/distributed_worker.py OUT`` (one process) and
``torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py OUT`` (two gloo ranks).
Both sample the same replicas (4 per state point, seeds by global replica index), then take the
DiffTRe gradient at a θ away from the sampling θ̃ (so the weights are not uniform) of an RDF
target (NVT), a lattice target and a pressure target (NPT; the pressure depends on θ), and the
force-matching gradient of one minibatch drawn from two systems. Then two more rounds at moved
θ fill a pool of three trajectories per state point (MBAR): its free energies, pooled loss,
N_eff and gradient, the Gauss–Newton residuals and Jacobian, the loss's jackknife noise and force
matching's Hessian. Rank 0 writes the numbers to OUT.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from ase.build import bulk

from difftre_torch import distributed
from difftre_torch.convergence import block_labels, jackknife_loss_error
from difftre_torch.curvature import snapshot_jacobians, target_residuals
from difftre_torch.experiment.target import Target
from difftre_torch.force_matching import ReferenceFrames, force_matching_gradient, sample_minibatch
from difftre_torch.gradient import difftre_gradient
from difftre_torch.potentials import LennardJones
from difftre_torch.potentials.base import evaluate
from difftre_torch.sampling.base import SamplerConfig, StatePoint
from difftre_torch.sampling.batched import BatchedSampler
from difftre_torch.trainer import DiffTReTrainer, TrainerConfig

SIGMA, EPSILON, CUTOFF = 3.3, 0.0104, 5.2


def labelled_frames() -> ReferenceFrames:
    """Jittered fcc argon cells of 32 and 108 atoms, labelled by LJ with σ = 3.4 Å."""
    rng = np.random.default_rng(5)
    teacher = LennardJones(3.4, EPSILON, CUTOFF)
    groups = []
    for repeat, count in ((2, 5), (3, 4)):
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat)
        positions = torch.tensor(atoms.positions + rng.normal(0, 0.08, (count, len(atoms), 3)))
        cells = torch.tensor(atoms.cell.array).expand(count, 3, 3).clone()
        numbers = torch.tensor(atoms.numbers)
        ev = evaluate(teacher, positions, cells, numbers, forces=True)
        groups.append((numbers, positions, cells, ev.energy.detach(), ev.forces.detach()))
    return ReferenceFrames(groups, "jittered fcc argon")


def main(out: str) -> None:
    ranks = distributed.start(timeout_s=120.0)
    torch.set_num_threads(1)
    atoms = bulk("Ar", "fcc", a=5.30, cubic=True).repeat(2)
    points = [StatePoint("nvt", 90.0, replicas=4), StatePoint("npt", 90.0, pressure_GPa=0.05, replicas=4)]
    owned = distributed.replica_share([4, 4], ranks.rank, ranks.world_size) if ranks.active else None
    sampler = BatchedSampler(atoms, points, SamplerConfig(
        timestep_fs=5.0, equilibration_steps=60, reequilibration_steps=10, snapshots_per_replica=6,
        stride=5, min_distance_A=1.5, progress=False, seed=3, barostat_tau_fs=200.0), owned=owned)
    r = torch.linspace(2.6, 5.0, 13, dtype=torch.float64)
    targets = [
        Target("rdf", "rdf", torch.ones(13), x=r, state_point="nvt", options={"bin_width_A": 0.2}),
        Target("lattice", "lattice_length", torch.tensor([10.4, 10.4, 10.4]), sigma=torch.full((3,), 0.05),
               state_point="npt"),
        Target("pressure", "pressure", torch.tensor([0.0]), sigma=torch.tensor([0.05]), state_point="npt"),
    ]
    potential = LennardJones(SIGMA, EPSILON, CUTOFF)
    frames = labelled_frames()
    trainer = DiffTReTrainer(potential, atoms, points, targets, sampler=sampler, out_dir="unused",
                             config=TrainerConfig(progress=False, tensorboard=False, chunk_size=5,
                                                  force_matching_weight=1.0, pool_size=3),
                             reference_frames=frames, ranks=ranks, callbacks=[])
    trainer._sample()
    with torch.no_grad():  # θ ≠ θ̃: non-uniform weights
        potential.sigma.add_(0.01)
        potential.epsilon.mul_(1.05)
    result = difftre_gradient(potential, trainer.stores, trainer.loss_fn, trainer.params,
                              chunk_fn=trainer.chunk_fn, chunk_size=5, ranks=ranks)
    batch = sample_minibatch(frames, 7, np.random.default_rng(11))
    fm = force_matching_gradient(potential, frames, batch, trainer.params, ranks=ranks)
    first_local, first_sizes = [len(s) for s in trainer.stores], list(trainer.sizes)
    for _ in range(2):  # two more trajectories at other θ: a pool of three
        with torch.no_grad():
            potential.sigma.add_(0.004)
        trainer._sample()
    pooled = difftre_gradient(potential, trainer.stores, trainer.loss_fn, trainer.params,
                              chunk_fn=trainer.chunk_fn, chunk_size=5, ranks=ranks)
    values = [{**s.observables, **v} for s, v in zip(trainer.stores, pooled.values)]
    jacobians = [snapshot_jacobians(potential, s, trainer.chunk_fn, trainer.params, 5) for s in trainer.stores]
    residuals = target_residuals(trainer.grouped, trainer.point_names, pooled.weights, values, jacobians,
                                 [s.kT_eV for s in trainer.stores], ranks)
    labels = [block_labels(s, p.segments, 2, 4) for s, p in zip(trainer.stores, trainer.pools)]
    noise = jackknife_loss_error(trainer.loss_fn, pooled.weights, values, labels, ranks)
    fm_curvature = force_matching_gradient(potential, frames, batch, trainer.params, ranks=ranks, curvature=True)
    record = {
        "pool_f": [p.f for p in trainer.pools], "pool_loss": pooled.loss, "pool_n_eff": pooled.n_eff,
        "pool_grads": pooled.grads, "pool_sizes": [p.size for p in trainer.pools], "r": residuals.r,
        "J": residuals.J, "loss_se": noise, "fm_hessian": fm_curvature.hessian,
        "world_size": ranks.world_size,
        "snapshots": first_sizes,
        "local_snapshots": first_local,
        "loss": result.loss, "parts": result.parts, "n_eff": result.n_eff,
        "grads": result.grads, "fm_loss": fm.loss, "fm_parts": fm.parts, "fm_grads": fm.grads,
        "stats": trainer.sample_stats, "bytes_reduced": ranks.bytes_reduced,
    }
    gathered = ranks.gather(record, "collecting the results")
    if ranks.is_main:
        torch.save(gathered, out)
    distributed.stop(ranks)


if __name__ == "__main__":
    main(sys.argv[1])
