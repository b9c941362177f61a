"""``python -m recipes.gc3n4 [--config FILE] [--quick] [--out DIR] [--threads N] [--redo STEP ...] [--fresh] [--lambda LAM]``

The user's three objectives for g-C3N4, end to end (see the package docstring):

1. ``structure_base``: the base model's 300 K G(r), g(r) and lattice against the experiment;
2. ``refine``: DiffTRe against the experiment's total G(r) and lattice parameters with force
   matching on the DFT-like data, for the main λ and (full mode) every λ of the scan;
3. ``structure_refined``: the same comparison for each refined model;
4. ``transfer``: errors on held-out frames of every cell and on the DFT test split, binding curves;
5. ``report``: ``<out>/report/REPORT.md``, figures and ``summary.json``; the headline table is
   printed.

Each step writes ``<out>/steps/<step>.json`` atomically when it finishes and is skipped when that
file exists (``--redo STEP`` runs it again); the refinement resumes from its trainer checkpoint.
So a killed run continues where it stopped, and a finished step is never lost. ``<out>/inputs.json``
records the sha256 of the settings and of every input file; a rerun whose inputs differ is
refused (naming them) until ``--fresh`` clears the folder, so results of two experiments never mix.
``--lambda LAM`` runs only the refinement with that λ: started beside the main run (another
core, another GPU), it finishes a λ of the scan that the main run then finds done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from difftre_torch.checkpoint import atomic_write_json
from difftre_torch.potentials.correction import CorrectedPotential
from recipes.gc3n4 import config as config_mod
from recipes.gc3n4.config import RecipeConfig
from recipes.gc3n4.inputs import (
    binding_reference,
    experiment_targets,
    load_model,
    read_frames,
    start_cell,
)

STEPS = ("structure_base", "refine", "structure_refined", "transfer", "report")


def lambdas(config: RecipeConfig) -> list[float]:
    """The main λ first, then the scan's others (full mode)."""
    main = float(config.refine.force_matching_weight)
    return [main] + [float(x) for x in config.refine.lambda_scan if float(x) != main]


def model_key(config: RecipeConfig, lam: float) -> str:
    return "refined" if lam == float(config.refine.force_matching_weight) else f"lambda_{lam:g}"


INPUT_PATHS = ("model", "structure", "experiment", "heldout", "teacher_train", "teacher_test", "binding")


def input_fingerprint(config: RecipeConfig) -> dict[str, str]:
    """sha256 of the settings (all but ``paths.out``) and of every input file (a folder: each
    file in it), keyed by "config" and the file's path. What an output folder was made from."""
    import hashlib

    settings = config.to_json()
    settings["paths"] = {k: v for k, v in settings["paths"].items() if k != "out"}
    settings.pop("source", None)
    out = {"config": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()}
    for name in INPUT_PATHS:
        path = config.path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.exists():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def check_inputs(out: Path, fingerprint: dict[str, str]) -> None:
    """Record ``fingerprint`` in ``<out>/inputs.json``, or refuse (naming what changed) when the
    folder holds results made from other inputs: cached steps and a resumed refinement would
    silently mix the two."""
    record = out / "inputs.json"
    if record.exists():
        before = json.loads(record.read_text())
        changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
        if changed:
            raise RuntimeError(f"{out} holds results made from other inputs (changed: {', '.join(changed)}); "
                               "run with --fresh to delete them, or use another --out")
        return
    atomic_write_json(record, fingerprint)


def clear_outputs(out: Path) -> None:
    """Delete what the pipeline wrote into ``out`` (steps, refinements, report, inputs record)."""
    import shutil

    for name in ("steps", "refine", "report"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "inputs.json").unlink(missing_ok=True)


class Pipeline:
    """Runs the steps in order, caching each step's JSON under ``<out>/steps``; refuses an output
    folder made from other inputs (:func:`check_inputs`) unless ``fresh`` clears it first."""

    def __init__(self, config: RecipeConfig, redo: tuple[str, ...] = (), log=print, fresh: bool = False) -> None:
        self.config = config
        self.out = config.path("out")
        self.redo = set(redo)
        self.log = log
        self.atoms = start_cell(config)
        self.targets = experiment_targets(config)
        if fresh:
            clear_outputs(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        check_inputs(self.out, input_fingerprint(config))

    def _cached(self, step: str, run) -> dict:
        path = self.out / "steps" / f"{step}.json"
        if path.exists() and step not in self.redo:
            self.log(f"[gc3n4] {step}: done before ({path})")
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        self.log(f"[gc3n4] {step}: running")
        result = run()
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(path, result)
        self.log(f"[gc3n4] {step}: finished in {result['wall_s']:.0f} s")
        return result

    def models(self, refined: dict) -> dict[str, object]:
        """name → loader of every model: the base, then each refined one."""
        out = {"base": lambda: load_model(self.config)}
        for key, entry in refined.items():
            out[key] = lambda path=entry["model"]: load_model(self.config, Path(path))
        return out

    def teacher_frames(self, lams: list[float]):
        """The DFT-like training frames for force matching, or None when no λ > 0 needs them."""
        from difftre_torch.force_matching import ReferenceFrames

        if not any(lam > 0 for lam in lams):
            return None
        path = self.config.path("teacher_train")
        return ReferenceFrames.from_atoms(
            read_frames(path, "teacher training frames", "python -m recipes.world.dataset"), source=str(path))

    def refine_one(self, lam: float) -> dict:
        """Only the refinement with force-matching weight ``lam`` (one of the config's λ), so a
        scan's λ can run in another process beside the main run; the main run finds its result
        and skips it. Two processes never train one λ: the trainer holds a run lock."""
        from recipes.gc3n4.refine import refine

        if float(lam) not in lambdas(self.config):
            raise ValueError(f"--lambda {lam:g}: not one of this config's force-matching weights "
                             f"{[f'{x:g}' for x in lambdas(self.config)]} (refine.force_matching_weight, "
                             "refine.lambda_scan)")
        result = refine(self.config, self.atoms, self.targets, self.teacher_frames([lam]), float(lam))
        self.log(f"[gc3n4] refine λ={lam:g}: done in {result['dir']}")
        return result

    def run(self) -> dict:
        from recipes.gc3n4.refine import refine
        from recipes.gc3n4.report import write_report
        from recipes.gc3n4.structure import compare_model
        from recipes.gc3n4.transfer import transfer

        cfg = self.config
        results: dict = {"config": cfg.to_json()}
        results["structure_base"] = self._cached(
            "structure_base", lambda: {"base": compare_model(cfg, load_model(cfg), self.atoms, self.targets)})

        def run_refine() -> dict:
            frames = self.teacher_frames(lambdas(cfg))
            return {model_key(cfg, lam): refine(cfg, self.atoms, self.targets, frames, lam) for lam in lambdas(cfg)}

        results["refine"] = self._cached("refine", run_refine)
        models = self.models({k: v for k, v in results["refine"].items() if k != "wall_s"})
        results["structure_refined"] = self._cached("structure_refined", lambda: {
            name: compare_model(cfg, load(), self.atoms, self.targets, seed_offset=2000)
            for name, load in models.items() if name != "base"})

        def run_transfer() -> dict:
            from recipes.world.heldout import read_heldout

            heldout = read_heldout(cfg.path("heldout"))
            test = read_frames(cfg.path("teacher_test"), "teacher test frames", "python -m recipes.world.dataset")
            reference = binding_reference(cfg)
            out = {name: transfer(cfg, load(), heldout, test, reference) for name, load in models.items()}
            refined = models["refined"]() if "refined" in models else None
            if isinstance(refined, CorrectedPotential):
                from recipes.gc3n4.ceiling import pair_ceiling

                out["refined"]["pair_ceiling"] = pair_ceiling(refined.base, refined.correction, heldout)
            return out

        results["transfer"] = self._cached("transfer", run_transfer)
        results["binding_reference"] = binding_reference(cfg)
        results["lattice"] = self.targets.lattice
        report = write_report(results, self.out / "report", cfg)
        self.log(report["headline"])
        self.log(f"[gc3n4] report: {report['report']}")
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.gc3n4", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="recipe YAML")
    parser.add_argument("--quick", action="store_true", help="the CPU settings (`quick:` of the config)")
    parser.add_argument("--out", default=None, help="output directory (default: paths.out)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--redo", nargs="*", default=(), choices=STEPS, help="steps to run again")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the output folder's earlier results first (needed after an input changed)")
    parser.add_argument("--lambda", dest="lam", type=float, default=None, metavar="LAM",
                        help="only the refinement with this force-matching weight (one of the config's), "
                             "then stop: runs a λ of the scan in a second process beside the main run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"paths": {"out": args.out}} if args.out else None
    config = config_mod.load(args.config, quick=args.quick, overrides=overrides)
    pipeline = Pipeline(config, tuple(args.redo), fresh=args.fresh)
    if args.lam is not None:
        pipeline.refine_one(args.lam)
    else:
        pipeline.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
