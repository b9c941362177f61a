"""Step "refine": DiffTRe of the base model against the experiment, with force matching on DFT.

The loss (:mod:`difftre_torch.loss`) is

    L(θ) = w_G · mean_r[((⟨G⟩_θ − G_exp)/σ_G)²] + w_L · Σ_{a, d} mean[((⟨L⟩_θ − L_exp)/σ_L)²]
           + λ · L_FM(θ),

with ⟨·⟩_θ reweighted NPT averages at the experiment's T and P (the total G(r) through the
instrument's Q range and window, as the .gr header states; not the partials, which no
experiment measures), a the in-plane lattice parameter and d the interlayer spacing, and L_FM the energy + force MSE (eV²/atom², eV²/Å²) on the teacher's
(DFT-like) training frames. ``refine.parameters`` says what is trained: a pair correction
added to the frozen base (default; :mod:`difftre_torch.potentials.correction`), every weight of
the model, or both. The trainer writes
TensorBoard events and a checkpoint after every update into ``<out>/refine/lambda_<λ>/``;
a rerun resumes from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ase import Atoms

from difftre_torch.force_matching import ReferenceFrames
from difftre_torch.trainer import DiffTReTrainer, TrainerConfig
from recipes.gc3n4.config import RecipeConfig
from recipes.gc3n4.inputs import ExperimentTargets, load_model, refinable
from recipes.gc3n4.structure import make_sampler, npt_point


def run_dir(config: RecipeConfig, lam: float) -> Path:
    return config.path("out") / "refine" / f"lambda_{lam:g}"


def trainer_config(config: RecipeConfig, lam: float) -> TrainerConfig:
    t = config.trainer
    return TrainerConfig(
        updates=t.updates, learning_rate=t.learning_rate, adam_betas=tuple(t.adam_betas),
        lr_schedule=t.lr_schedule, resample_ratio=t.resample_ratio, chunk_size=t.chunk_size,
        force_matching_weight=float(lam), fm_batch_frames=t.fm_batch_frames,
        grad_clip_norm=t.grad_clip_norm, seed=t.seed, select=t.select,
        select_min_n_eff_ratio=t.select_min_n_eff_ratio, final_sample=False, progress=False,
    )


def refine(config: RecipeConfig, atoms: Atoms, targets: ExperimentTargets,
           teacher_frames: Callable[[], ReferenceFrames], lam: float) -> dict:
    """Refine the base model with force-matching weight ``lam``; resumes from the run's
    checkpoint. ``teacher_frames`` loads the DFT-like frames of the force matching (called only
    when ``lam`` > 0 and the refinement has not finished before). Returns {"dir", "model" (path
    of the refined checkpoint), "summary", "history"}."""
    out = run_dir(config, lam)
    done = out / "refine_result.json"
    if done.exists():
        return json.loads(done.read_text())
    potential = refinable(config, load_model(config))
    sampler = make_sampler(config, atoms, [npt_point(config)], seed_offset=1000)
    trainer = DiffTReTrainer(potential, atoms, [npt_point(config)], targets.fit,
                             config=trainer_config(config, lam), out_dir=out, sampler=sampler,
                             reference_frames=teacher_frames() if lam > 0 else None)
    summary = trainer.fit(resume=trainer.checkpoint_path.exists())
    history = [{"update": r["update"], "loss": r["loss"], "n_eff_ratio": r["n_eff_ratio"],
                "resampled": r["resampled"], "state": r["state"]} for r in trainer.history]
    result = {"dir": str(out), "lambda": lam, "model": summary["refined_potential"],
              "loss_initial": summary["loss_initial"], "loss_final": summary["loss_final"],
              "resamples": summary["resamples"], "time_s": summary["time_s"],
              "blow_ups": summary["blow_ups"], "selected": summary["selected"], "history": history}
    from difftre_torch.checkpoint import atomic_write_json

    atomic_write_json(done, result)
    return result
