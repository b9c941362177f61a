"""Step "structure": a model's g-C3N4 at 300 K against the experiment.

Two samples of the model (:mod:`difftre_torch.compare`):

* ``npt``: NPT at the experiment's T and P from the DFT-relaxed cell: the model's own density,
  lattice parameters and total scattering, what a user's MD would give;
* ``nvt_exp``: NVT at the experiment's mean cell (a and the interlayer spacing d of
  lattice.json; c = layers · d along the start cell's c, so the volume is the experiment's even
  where its layers have slid): the local structure at the right density, separating "wrong
  cell" from "wrong structure at a given cell".

Both are compared through the experiment file's own Q range and window (the targets' options),
with R_w and χ²/bin against the experiment's σ and the model's block σ.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from ase import Atoms

from difftre_torch.compare import sample_and_compare
from difftre_torch.sampling.sampler import AseSampler, SamplerConfig, StatePoint
from recipes.gc3n4.config import RecipeConfig
from recipes.gc3n4.inputs import NPT, NVT, ExperimentTargets, at_lattice


def sampler_config(config: RecipeConfig, seed_offset: int = 0) -> SamplerConfig:
    """The library sampler config from the recipe's ``sampler`` section."""
    from difftre_torch.sampling.batched import BatchedSamplerConfig

    fields = {k: v for k, v in asdict(config.sampler).items() if k not in ("kind", "replicas")}
    fields["seed"] = config.sampler.seed + seed_offset
    cls = BatchedSamplerConfig if config.sampler.kind == "batched" else SamplerConfig
    return cls(**fields)


def make_sampler(config: RecipeConfig, atoms: Atoms, points: list[StatePoint], seed_offset: int = 0):
    """A BatchedSampler or AseSampler (``sampler.kind``) for ``points`` starting from ``atoms``."""
    sc = sampler_config(config, seed_offset)
    if config.sampler.kind == "batched":
        from difftre_torch.sampling.batched import BatchedSampler

        return BatchedSampler(atoms, points, sc)
    return AseSampler(atoms, points, sc)


def npt_point(config: RecipeConfig) -> StatePoint:
    s = config.system
    return StatePoint(NPT, s.temperature_K, s.pressure_GPa, config.sampler.replicas)


def compare_model(config: RecipeConfig, potential, atoms: Atoms, targets: ExperimentTargets,
                  seed_offset: int = 0) -> dict:
    """NPT and NVT-at-the-experimental-cell comparisons of ``potential`` (JSON-ready dict)."""
    numbers = torch.as_tensor(atoms.numbers, dtype=torch.long)
    out = {}
    npt = make_sampler(config, atoms, [npt_point(config)], seed_offset)
    out[NPT] = sample_and_compare(potential, npt, numbers, targets.report,
                                  n_blocks=config.compare.n_blocks)[NPT].to_json()
    a = float(targets.lattice["a_A"])
    c = config.system.layers_per_unit * float(targets.lattice["spacing_A"])
    fixed = at_lattice(atoms, a, c, config.system.repeats)
    structural = [t for t in targets.report if t.observable in ("G", "rdf")]
    nvt = make_sampler(config, fixed, [StatePoint(NVT, config.system.temperature_K, None, config.sampler.replicas)],
                       seed_offset)
    out[NVT] = sample_and_compare(potential, nvt, numbers, structural,
                                  n_blocks=config.compare.n_blocks)[NVT].to_json()
    out["blow_ups"] = list(getattr(npt, "blow_ups", [])) + list(getattr(nvt, "blow_ups", []))
    return out
