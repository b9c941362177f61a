"""The steps of a refinement job, each a function of (job, inputs) → a JSON-ready dict.

* :func:`compare_model` (objective 1): a model sampled at every ``compare`` state point, its
  averages against the experiment (:mod:`difftre_torch.compare`: R_w, χ²/bin with block errors);
  at a fixed (NVT) cell the observables of the cell alone are left out.
* :func:`refine` (objective 2): DiffTRe at the ``refine`` state points against ``targets``, with
  force matching (λ) on the labelled frames; TensorBoard and a checkpoint after every update in
  ``<out>/refine/lambda_<λ>/``; resumes from it.
* :func:`evaluate_model` (objective 3): a model against labelled frames of any cell size
  (:mod:`difftre_torch.evaluation`: energy RMSE per atom absolute and with the mean offset
  removed, force RMSE total / in-plane / out-of-plane, stress; bootstrap 95 % intervals; the
  per-frame errors kept for paired differences), the interlayer binding curve and the
  pair-correction ceiling where the config asks.

Seeds: the base model's comparison samples with ``sampler.seed``, the refinement with
``sampler.seed + 1000``, a refined model's comparison with ``sampler.seed + 2000``, so that no
two samples share a noise stream. Each compared state point has a sampler of its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from ase import Atoms

from difftre_torch.config import JobConfig
from difftre_torch.distributed import SINGLE, Ranks
from difftre_torch.experiment.target import Target
from difftre_torch.workflow.build import cell_at_targets, comparable, make_sampler, targets_for_cell

SEED_OFFSETS = {"compare_base": 0, "refine": 1000, "compare_refined": 2000}


def compare_model(job: JobConfig, potential, atoms: Atoms, targets: list[Target], fit_targets: list[Target],
                  seed_offset: int = 0, log: Callable[[str], None] = print) -> dict:
    """{point: Comparison JSON, "blow_ups": [...]} over the ``compare`` state points."""
    from difftre_torch.compare import sample_and_compare

    numbers = torch.as_tensor(atoms.numbers, dtype=torch.long)
    out: dict = {}
    blow_ups: list = []
    for point in [p for p in job.state_points if p.compare]:
        start = atoms
        if point.cell == "targets":
            start = cell_at_targets(atoms, targets_for_cell(point, fit_targets + targets, job.state_points),
                                    f"{job.source}: state_points ({point.name})")
        mine = comparable(targets, point)
        if not mine:
            continue
        steps = job.sampler.equilibration_steps + job.sampler.snapshots_per_replica * job.sampler.stride
        log(f"  sampling {point.name}: {point.replicas} replica(s) × {steps} MD steps of {len(atoms)} atoms")
        t0 = time.perf_counter()
        sampler = make_sampler(job, start, [point], seed_offset)
        out[point.name] = sample_and_compare(potential, sampler, numbers, mine,
                                             n_blocks=job.compare.n_blocks)[point.name].to_json()
        wall = time.perf_counter() - t0
        log(f"  sampled {point.name} in {wall:.0f} s ({point.replicas * steps / wall:.1f} replica-steps/s)")
        blow_ups += list(getattr(sampler, "blow_ups", []))
    out["blow_ups"] = blow_ups
    return out


def run_dir(job: JobConfig, out: Path, lam: float) -> Path:
    return out / "refine" / f"lambda_{lam:g}"


def refine(job: JobConfig, out: Path, atoms: Atoms, fit_targets: list[Target], lam: float,
           potential_factory: Callable, frames_factory: Callable, ranks: Ranks = SINGLE) -> dict:
    """Refine with force-matching weight ``lam``; resumes from the run's checkpoint. The trainer
    settings are ``trainer`` with ``force_matching_weight = lam`` and no final sample (the
    refined model's comparison samples it). Returns {"dir", "lambda", "model", "loss_initial",
    "loss_final", "resamples", "time_s", "blow_ups", "selected", "history"}. On several
    ``ranks`` every rank calls it; rank 0 writes ``refine_result.json``."""
    from difftre_torch.checkpoint import atomic_write_json

    directory = run_dir(job, out, lam)
    done = directory / "refine_result.json"
    if ranks.broadcast(done.exists(), "agreeing on the finished refinements"):
        return json.loads(done.read_text()) if ranks.is_main else {}
    trainer = make_trainer(job, directory, atoms, fit_targets, lam, potential_factory(),
                           frames_factory if lam > 0 else None, ranks)
    resume = ranks.broadcast(trainer.checkpoint_path.exists(), "agreeing on the checkpoint")
    summary = trainer.fit(resume=resume)
    if not ranks.is_main:
        return {}
    history = [{"update": r.update, "loss": r.loss, "n_eff_ratio": r.n_eff_ratio,
                "resampled": r.resampled, "state": r.state} for r in trainer.history]
    result = {"dir": str(directory), "lambda": lam, "model": summary.refined_potential,
              "loss_initial": summary.loss_initial, "loss_final": summary.loss_final,
              "resamples": summary.resamples, "time_s": summary.time_s,
              "blow_ups": summary.blow_ups, "selected": summary.selected, "history": history}
    atomic_write_json(done, result)
    return result


def make_trainer(job: JobConfig, directory: Path, atoms: Atoms, fit_targets: list[Target], lam: float,
                 potential, frames_factory: Callable | None = None, ranks: Ranks = SINGLE):
    """The :class:`~difftre_torch.trainer.DiffTReTrainer` of one refinement: the ``refine`` state
    points sampled by ``sampler.kind`` (seed + 1000), ``trainer`` with ``force_matching_weight =
    lam`` and no final sample, compiled sampling where the potential asks for it (on several
    ``ranks``, each rank compiles into its own folder, ``ranks/rank<r>/compiled``)."""
    from difftre_torch.trainer import DiffTReTrainer
    from difftre_torch.workflow.build import build_sampling_potential

    points = [p for p in job.state_points if p.refine]
    sampler = make_sampler(job, atoms, points, SEED_OFFSETS["refine"], ranks)
    config = replace(job.trainer, force_matching_weight=float(lam), final_sample=False)
    compile_dir = directory / "ranks" / f"rank{ranks.rank}" if ranks.active else directory
    return DiffTReTrainer(potential, atoms, [p.state_point() for p in points], fit_targets, config=config,
                          out_dir=directory, sampler=sampler, ranks=ranks,
                          reference_frames=frames_factory() if frames_factory is not None and lam > 0 else None,
                          sampling_potential=build_sampling_potential(job, potential, atoms, compile_dir))


def evaluate_model(job: JobConfig, potential, sets: dict[str, list[Atoms]], binding_reference: dict | None,
                   ceiling: bool = False, log: Callable[[str], None] = print) -> dict:
    """{"sets": {name: {"atoms", "frames", "vs_<ref>": summary, "per_frame_vs_<ref>": ...}},
    "binding": curve (optional), "pair_ceiling": ... (optional)}."""
    from difftre_torch.evaluation import error_summary, frame_errors, frame_errors_json, frame_labels, predict

    out: dict = {"sets": {}}
    entries = {s.name: s for s in job.evaluation.sets}
    for name, frames in sets.items():
        t0 = time.perf_counter()
        pred = predict(potential, frames)
        log(f"  evaluated on {name}: {len(frames)} frames of {len(frames[0])} atoms in "
            f"{time.perf_counter() - t0:.0f} s")
        entry: dict = {"atoms": len(frames[0]), "frames": len(frames)}
        for ref, source in entries[name].references.items():
            labels = [frame_labels(a, source) for a in frames]
            entry[f"vs_{ref}"] = error_summary(pred, labels, n_boot=job.evaluation.n_boot)
            entry[f"per_frame_vs_{ref}"] = frame_errors_json(frame_errors(pred, labels))
        out["sets"][name] = entry
    if job.evaluation.binding is not None:
        out["binding"] = model_binding(job, potential)
    if ceiling and job.evaluation.ceiling is not None:
        from difftre_torch.analysis.ceiling import pair_ceiling

        c = job.evaluation.ceiling
        chosen = {n: f for n, f in sets.items() if c.reference in entries[n].references
                  and (c.sets is None or n in c.sets)}
        source = lambda ref: None if ref is None else next(  # noqa: E731
            entries[n].references[ref] for n in chosen)
        out["pair_ceiling"] = pair_ceiling(potential.base, potential.correction, chosen,
                                           reference=source(c.reference), relative_to=source(c.relative_to))
    return out


def model_binding(job: JobConfig, potential) -> dict:
    """The model's interlayer binding curve (:mod:`difftre_torch.analysis.binding`)."""
    from ase.io import read

    from difftre_torch.analysis.binding import binding_curve, curve_minimum
    from difftre_torch.potentials.ase_calculator import PotentialCalculator

    b = job.evaluation.binding
    unit = read(job.resolve(b.structure))
    unit.calc = None
    spacings = [float(s) for s in b.spacings_A]
    energies = binding_curve(PotentialCalculator(potential), unit, spacings, b.reference_spacing_A, b.layers)
    return {"spacing_A": spacings, "meV_per_atom": [float(e) for e in energies],
            "minimum": curve_minimum(np.asarray(spacings), energies)}


def binding_reference(job: JobConfig) -> dict | None:
    """Reference curves of ``evaluation.binding.references`` (JSON), or None."""
    b = job.evaluation.binding
    if b is None or b.references is None:
        return None
    return json.loads(job.resolve(b.references).read_text())
