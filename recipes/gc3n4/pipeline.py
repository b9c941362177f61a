"""``python -m recipes.gc3n4 [--config FILE] [--quick] [--out DIR] [--threads N] [--redo STEP ...] [--fresh] [--lambda LAM]``

The user's three objectives for g-C3N4, end to end (see the package docstring):

1. ``structure_base``: the base model's 300 K G(r), g(r) and lattice against the experiment;
2. ``refine``: DiffTRe against the experiment's total G(r) and lattice parameters with force
   matching on the DFT-like data, for the main λ and (full mode) every λ of the scan;
3. ``structure_refined``: the same comparison for each refined model;
4. ``transfer``: errors on held-out frames of every cell and on the DFT test split, binding curves;
5. ``report``: ``<out>/report/REPORT.md``, figures and ``summary.json``; the headline table is
   printed.

The work is a list of items, one per step and model (``refine`` of λ = 0, ``transfer`` of the
base, …). Each item writes ``<out>/steps/<step>/<model>.json`` atomically when it finishes and is
skipped when that file exists (``--redo STEP`` runs the step's items again); a step whose items
are all done is also written whole to ``<out>/steps/<step>.json``. The refinement resumes from its
trainer checkpoint. So a killed run continues where it stopped, and a finished result is never
lost. ``<out>/inputs.json`` records the sha256 of the settings and of every input file; a rerun
whose inputs differ is refused (naming them) until ``--fresh`` clears the folder, so results of
two experiments never mix.

Several processes may run the same command on one output folder (two cores, two GPUs): an item
in progress holds ``<out>/steps/<step>/<model>.lock``, and the others take the next item that is
free and whose inputs are done (a model's structure and transfer items wait for its refinement),
or wait for one. ``--lambda LAM`` limits a process to the items of one λ's model (its refinement,
structure and transfer) and stops without a report.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from difftre_torch.checkpoint import LockHeld, atomic_write_json, run_lock
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


@dataclass(frozen=True)
class Item:
    """One unit of work: ``step`` for model ``name``; ``needs`` are the (step, name) items whose
    results it reads (done first, by this or another process)."""

    step: str
    name: str
    run: Callable[[], dict]
    needs: tuple[tuple[str, str], ...] = ()


class Pipeline:
    """Runs the work items (:class:`Item`) in order, caching each under ``<out>/steps``; refuses
    an output folder made from other inputs (:func:`check_inputs`) unless ``fresh`` clears it
    first. ``poll_s``: how often a process with nothing free to do looks again; an item found
    held is tried again when its lock file is gone, or after ``recheck_s`` (a holder that died
    leaves its lock behind, which the next try takes over)."""

    def __init__(self, config: RecipeConfig, redo: tuple[str, ...] = (), log=print, fresh: bool = False,
                 poll_s: float = 30.0, recheck_s: float = 600.0) -> None:
        import shutil

        self.config = config
        self.out = config.path("out")
        self.redo = set(redo)
        self.log = log
        self.poll_s = poll_s
        self.recheck_s = recheck_s
        self.atoms = start_cell(config)
        self.targets = experiment_targets(config)
        if fresh:
            clear_outputs(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        check_inputs(self.out, input_fingerprint(config))
        for step in self.redo:
            (self.out / "steps" / f"{step}.json").unlink(missing_ok=True)
            shutil.rmtree(self.out / "steps" / step, ignore_errors=True)

    # ---- the items ------------------------------------------------------------------------
    @functools.cached_property
    def _teacher_frames(self):
        from difftre_torch.force_matching import ReferenceFrames

        path = self.config.path("teacher_train")
        return ReferenceFrames.from_atoms(
            read_frames(path, "teacher training frames", "python -m recipes.world.dataset"), source=str(path))

    @functools.cached_property
    def _transfer_inputs(self) -> tuple:
        from recipes.world.heldout import read_heldout

        cfg = self.config
        heldout = read_heldout(cfg.path("heldout"))
        test = read_frames(cfg.path("teacher_test"), "teacher test frames", "python -m recipes.world.dataset")
        return heldout, test, binding_reference(cfg)

    def _model(self, name: str, done: dict):
        if name == "base":
            return load_model(self.config)
        return load_model(self.config, Path(done[("refine", name)]["model"]))

    def items(self, done: dict) -> list[Item]:
        """Every item in the order one process runs them: the base's structure, each λ's
        refinement, each refined model's structure, the transfer of every model. ``done`` maps
        (step, name) to results as they come in (the runs read their inputs from it)."""
        from recipes.gc3n4.refine import refine
        from recipes.gc3n4.structure import compare_model
        from recipes.gc3n4.transfer import transfer

        cfg = self.config
        keys = [(lam, model_key(cfg, lam)) for lam in lambdas(cfg)]
        out = [Item("structure_base", "base", lambda: compare_model(cfg, load_model(cfg), self.atoms, self.targets))]
        for lam, key in keys:
            out.append(Item("refine", key, lambda lam=lam: refine(
                cfg, self.atoms, self.targets, lambda: self._teacher_frames, lam)))
        for _, key in keys:
            out.append(Item("structure_refined", key, lambda key=key: compare_model(
                cfg, self._model(key, done), self.atoms, self.targets, seed_offset=2000), (("refine", key),)))

        def run_transfer(name: str) -> dict:
            model = self._model(name, done)
            result = transfer(cfg, model, *self._transfer_inputs)
            if name == "refined" and isinstance(model, CorrectedPotential):
                from recipes.gc3n4.ceiling import pair_ceiling

                result["pair_ceiling"] = pair_ceiling(model.base, model.correction, self._transfer_inputs[0])
            return result

        out.append(Item("transfer", "base", lambda: run_transfer("base")))
        for _, key in keys:
            out.append(Item("transfer", key, lambda key=key: run_transfer(key), (("refine", key),)))
        return out

    # ---- the scheduler --------------------------------------------------------------------
    def _step_file(self, step: str) -> Path:
        return self.out / "steps" / f"{step}.json"

    def _item_file(self, item: Item) -> Path:
        return self.out / "steps" / item.step / f"{item.name}.json"

    def _finished(self, item: Item) -> dict | None:
        whole = self._step_file(item.step)
        if whole.exists():
            step = json.loads(whole.read_text())
            if item.name in step:
                return step[item.name]
        path = self._item_file(item)
        return json.loads(path.read_text()) if path.exists() else None

    def work(self, only: str | None = None) -> dict[tuple[str, str], dict]:
        """Run every item not done yet (only model ``only``'s, when given) and return
        {(step, name): result} of them all. Takes the first item whose inputs are done and that
        no other process holds; with none free, waits ``poll_s`` and looks again."""
        done: dict[tuple[str, str], dict] = {}
        items = [i for i in self.items(done) if only is None or i.name == only]
        told: set[tuple[str, str]] = set()
        held: dict[tuple[str, str], tuple[Path, float]] = {}  # item → (lock file, when found held)
        while len(done) < len(items):
            ran = False
            for item in items:
                key = (item.step, item.name)
                if key in done:
                    continue
                result = self._finished(item)
                if result is not None:
                    done[key] = result
                    if key not in told:
                        self.log(f"[gc3n4] {item.step} {item.name}: done before")
                    told.add(key)
                    continue
                if any(need not in done for need in item.needs):
                    continue
                if key in held:
                    lock, since = held[key]
                    if lock.exists() and time.monotonic() - since < self.recheck_s:
                        continue
                path = self._item_file(item)
                try:
                    with run_lock(path.parent, f"{item.name}.lock"):
                        if not path.exists():  # finished by another process meanwhile?
                            t0 = time.perf_counter()
                            self.log(f"[gc3n4] {item.step} {item.name}: running")
                            result = item.run()
                            result["wall_s"] = round(time.perf_counter() - t0, 1)
                            atomic_write_json(path, result)
                            self.log(f"[gc3n4] {item.step} {item.name}: finished in {result['wall_s']:.0f} s")
                        done[key] = json.loads(path.read_text())
                        told.add(key)
                except LockHeld as busy:
                    held[key] = (busy.path, time.monotonic())
                    if key not in told:
                        self.log(f"[gc3n4] {item.step} {item.name}: another process works on it ({busy})")
                        told.add(key)
                    continue
                ran = True
                break  # back to the first item: earlier items first
            if not ran and len(done) < len(items):
                time.sleep(self.poll_s)
        return {(i.step, i.name): done[(i.step, i.name)] for i in items}

    def _assemble(self, done: dict) -> dict:
        """{step: {name: result, ..., "wall_s": total of its items}} of every step in ``done``,
        each written whole to ``<out>/steps/<step>.json`` (read back when it exists)."""
        steps: dict[str, dict] = {}
        for step in dict.fromkeys(step for step, _ in done):
            path = self._step_file(step)
            if path.exists():
                steps[step] = json.loads(path.read_text())
                continue
            entry: dict = {}
            wall = 0.0
            for (of, name), result in done.items():
                if of == step:
                    result = dict(result)
                    wall += float(result.pop("wall_s", 0.0) or 0.0)
                    entry[name] = result
            entry["wall_s"] = round(wall, 1)
            atomic_write_json(path, entry)
            steps[step] = entry
        return steps

    def run_model(self, lam: float) -> dict:
        """Only the items of the model refined with force-matching weight ``lam`` (one of the
        config's λ): its refinement, structure and transfer, so that a second process can take
        a λ of the scan; returns {step: result}."""
        if float(lam) not in lambdas(self.config):
            raise ValueError(f"--lambda {lam:g}: not one of this config's force-matching weights "
                             f"{[f'{x:g}' for x in lambdas(self.config)]} (refine.force_matching_weight, "
                             "refine.lambda_scan)")
        name = model_key(self.config, float(lam))
        done = self.work(only=name)
        self.log(f"[gc3n4] model {name} (λ={lam:g}): done")
        return {step: result for (step, _), result in done.items()}

    def run(self) -> dict:
        from recipes.gc3n4.report import write_report

        cfg = self.config
        results: dict = {"config": cfg.to_json()}
        results.update(self._assemble(self.work()))
        results["binding_reference"] = binding_reference(cfg)
        results["lattice"] = self.targets.lattice
        while True:  # two processes finishing together write the report one after the other
            try:
                with run_lock(self.out / "steps", "report.lock"):
                    report = write_report(results, self.out / "report", cfg)
                break
            except LockHeld:
                time.sleep(self.poll_s)
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
                        help="only the items of the model refined with this force-matching weight (one of "
                             "the config's): its refinement, structure and transfer, then stop")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"paths": {"out": args.out}} if args.out else None
    config = config_mod.load(args.config, quick=args.quick, overrides=overrides)
    pipeline = Pipeline(config, tuple(args.redo), fresh=args.fresh)
    if args.lam is not None:
        pipeline.run_model(args.lam)
    else:
        pipeline.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
