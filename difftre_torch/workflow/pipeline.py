"""``difftre refine``: the whole job of a config, as work items that several processes can share.

Items, one per step and model: the base model's structure comparison, each λ's refinement
(``trainer.force_matching_weight`` and ``force_matching.scan``), each refined model's comparison,
the evaluation of every model on the labelled frame sets; then the report
(:mod:`difftre_torch.workflow.report`). The main λ's model is called "refined", the others
"lambda_<λ>".

Each item writes ``<out>/steps/<step>/<model>.json`` atomically when it finishes and is skipped
when that file exists (``redo`` runs a step's items again); a refinement resumes from its trainer
checkpoint, so a killed run continues where it stopped and a finished result is never lost.
``<out>/inputs.json`` records the sha256 of the settings and of every input file; a rerun whose
inputs differ is refused (naming them) until ``fresh`` clears the folder.

Several processes may run the same command on one output folder: an item in progress holds
``<out>/steps/<step>/<model>.lock`` (:func:`~difftre_torch.checkpoint.run_lock`), and the others
take the next item that is free and whose inputs are done (a model's comparison and evaluation
wait for its refinement), or wait for one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from difftre_torch.checkpoint import LockHeld, atomic_write_json, remove_stale_temp_files, run_lock
from difftre_torch.config import ConfigError, JobConfig

STEPS = ("structure_base", "refine", "structure_refined", "evaluate", "report")


def input_files(job: JobConfig) -> list[Path]:
    """Every file the job reads (a folder: each file in it)."""
    paths = [job.system.structure]
    opts = job.potential.options
    for name in ("path", "sampling_model"):
        if getattr(opts, name, None):
            paths.append(getattr(opts, name))
    paths += [t.file for t in job.targets + (job.compare.targets or []) if t.file]
    if job.force_matching is not None:
        paths.append(job.force_matching.file)
    paths += [s.file for s in job.evaluation.sets]
    if job.evaluation.binding is not None:
        paths += [p for p in (job.evaluation.binding.structure, job.evaluation.binding.references) if p]
    out = []
    for p in dict.fromkeys(paths):
        path = job.resolve(p)
        out += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return out


def input_fingerprint(job: JobConfig) -> dict[str, str]:
    """sha256 of the settings (:meth:`JobConfig.fingerprint`) and of every input file."""
    out = {"config": job.fingerprint()}
    for f in input_files(job):
        if f.exists():
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def check_inputs(out: Path, fingerprint: dict[str, str]) -> None:
    """Record ``fingerprint`` in ``<out>/inputs.json``, or refuse when the folder holds results
    made from other inputs (cached steps and a resumed refinement would mix the two)."""
    record = out / "inputs.json"
    if record.exists():
        before = json.loads(record.read_text())
        changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
        if changed:
            raise ConfigError(f"{out} holds results made from other inputs (changed: {', '.join(changed)}); "
                              "run with --fresh to delete them, or use another --out")
        return
    atomic_write_json(record, fingerprint)


def clear_outputs(out: Path) -> None:
    """Delete what the pipeline wrote into ``out`` (steps, refinements, report, inputs record)."""
    for name in ("steps", "refine", "report"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "inputs.json").unlink(missing_ok=True)


@dataclass(frozen=True)
class Item:
    """One unit of work: ``step`` for model ``name``; ``needs``: (step, name) items it reads."""

    step: str
    name: str
    run: Callable[[], dict]
    needs: tuple[tuple[str, str], ...] = ()


def refined_models(job: JobConfig) -> list[tuple[float, str]]:
    """(λ, model key) of every model the job refines (none with ``trainer.updates = 0``)."""
    return [(lam, job.model_key(lam)) for lam in job.lambdas] if job.trainer.updates > 0 else []


def model_of_lambda(job: JobConfig, lam: float) -> str:
    """The key of the model refined with force-matching weight ``lam`` (``--lambda``); a
    ConfigError when ``lam`` is not one of the job's weights."""
    if float(lam) not in job.lambdas:
        raise ConfigError(f"--lambda {lam:g}: not one of this config's force-matching weights "
                          f"{[f'{x:g}' for x in job.lambdas]} (trainer.force_matching_weight, "
                          "force_matching.scan)")
    return job.model_key(float(lam))


class Pipeline:
    """Runs the work items of ``job`` in order, caching each under ``<out>/steps``. ``poll_s``:
    how often a process with nothing free to do looks again; an item found held is tried again
    when its lock file is gone, or after ``recheck_s``."""

    def __init__(self, job: JobConfig, out: Path | None = None, redo: tuple[str, ...] = (),
                 log: Callable[[str], None] = print, fresh: bool = False, poll_s: float = 30.0,
                 recheck_s: float = 600.0, primary: bool = True) -> None:
        from difftre_torch.workflow.build import build_system, build_targets, compare_entries

        self.job = job
        self.out = Path(out) if out is not None else job.out_dir
        self.redo = set(redo)
        self.log = log
        self.poll_s = poll_s
        self.recheck_s = recheck_s
        self.atoms = build_system(job)
        self.fit_targets = build_targets(job, job.targets)
        self.report_targets = build_targets(job, compare_entries(job), "compare.targets"
                                            if job.compare.targets is not None else "targets")
        if not primary:  # a rank other than 0: rank 0 has prepared the folder
            check_inputs(self.out, input_fingerprint(job))
            return
        if fresh:
            clear_outputs(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.out, recursive=True)  # of writes a killed process left
        check_inputs(self.out, input_fingerprint(job))
        for step in self.redo:
            (self.out / "steps" / f"{step}.json").unlink(missing_ok=True)
            shutil.rmtree(self.out / "steps" / step, ignore_errors=True)

    # ---- inputs, loaded when an item needs them ------------------------------------------
    @functools.cached_property
    def _frames(self):
        from difftre_torch.workflow.build import reference_frames

        return reference_frames(self.job)

    @functools.cached_property
    def _sets(self) -> dict:
        from difftre_torch.workflow.build import read_frames

        return {s.name: read_frames(self.job, s.file, f"evaluation.sets ({s.name}).file")
                for s in self.job.evaluation.sets}

    def _model(self, name: str, done: dict):
        from difftre_torch.workflow.build import build_base_potential

        if name == "base":
            return build_base_potential(self.job)
        return build_base_potential(self.job, Path(done[("refine", name)]["model"]))

    def _refinable(self):
        from difftre_torch.workflow.build import build_potential

        return build_potential(self.job, self.atoms)

    def items(self, done: dict) -> list[Item]:
        """Every item in the order one process runs them."""
        from difftre_torch.workflow import steps

        job = self.job
        keys = refined_models(job)
        out = [Item("structure_base", "base", lambda: steps.compare_model(
            job, self._model("base", done), self.atoms, self.report_targets, self.fit_targets,
            steps.SEED_OFFSETS["compare_base"], self.log))]
        for lam, key in keys:
            out.append(Item("refine", key, lambda lam=lam: steps.refine(
                job, self.out, self.atoms, self.fit_targets, lam, self._refinable, lambda: self._frames)))
        for _, key in keys:
            out.append(Item("structure_refined", key, lambda key=key: steps.compare_model(
                job, self._model(key, done), self.atoms, self.report_targets, self.fit_targets,
                steps.SEED_OFFSETS["compare_refined"], self.log), (("refine", key),)))
        if job.evaluation.sets or job.evaluation.binding is not None:
            def run_evaluate(name: str) -> dict:
                return steps.evaluate_model(job, self._model(name, done), self._sets if job.evaluation.sets else {},
                                            None, ceiling=name == "refined" and job.potential.correction is not None,
                                            log=self.log)

            out.append(Item("evaluate", "base", lambda: run_evaluate("base")))
            for _, key in keys:
                out.append(Item("evaluate", key, lambda key=key: run_evaluate(key), (("refine", key),)))
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
        """Run every item not done yet (only model ``only``'s, when given); {(step, name): result}."""
        done: dict[tuple[str, str], dict] = {}
        items = [i for i in self.items(done) if only is None or i.name == only]
        told: set[tuple[str, str]] = set()
        held: dict[tuple[str, str], tuple[Path, float]] = {}
        while len(done) < len(items):
            ran = False
            for number, item in enumerate(items, 1):
                key = (item.step, item.name)
                if key in done:
                    continue
                result = self._finished(item)
                if result is not None:
                    done[key] = result
                    if key not in told:
                        self.log(f"[difftre] {item.step} {item.name}: done before")
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
                        if not path.exists():
                            t0 = time.perf_counter()
                            self.log(f"[difftre] ({number}/{len(items)}) {item.step} {item.name}: running")
                            result = item.run()
                            result["wall_s"] = round(time.perf_counter() - t0, 1)
                            atomic_write_json(path, result)
                            self.log(f"[difftre] {item.step} {item.name}: finished in {result['wall_s']:.0f} s")
                        done[key] = json.loads(path.read_text())
                        told.add(key)
                except LockHeld as busy:
                    held[key] = (busy.path, time.monotonic())
                    if key not in told:
                        self.log(f"[difftre] {item.step} {item.name}: another process works on it ({busy})")
                        told.add(key)
                    continue
                ran = True
                break
            if not ran and len(done) < len(items):
                time.sleep(self.poll_s)
        return {(i.step, i.name): done[(i.step, i.name)] for i in items}

    def _assemble(self, done: dict) -> dict:
        """{step: {name: result, ..., "wall_s": total}}, each written to ``<out>/steps/<step>.json``."""
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

    def refine_on_ranks(self, ranks, only: str | None = None) -> None:
        """Every refinement not finished yet (only model ``only``'s, when given), all ``ranks``
        together (:mod:`difftre_torch.distributed`); rank 0 holds the item's lock and writes its
        result, so a later :meth:`run` on rank 0 finds them done."""
        from difftre_torch.workflow import steps

        job = self.job
        keys = refined_models(job)
        for lam, key in keys:
            if only is not None and key != only:
                continue
            item = Item("refine", key, lambda: {})
            if ranks.broadcast(self._finished(item) is not None, "agreeing on the finished refinements"):
                continue
            path = self._item_file(item)
            with contextlib.ExitStack() as stack:
                held = None
                if ranks.is_main:
                    try:
                        stack.enter_context(run_lock(path.parent, f"{item.name}.lock"))
                    except LockHeld as busy:
                        held = str(busy)
                held = ranks.broadcast(held, "taking the refinement's lock")
                if held is not None:
                    raise LockHeld(held)
                t0 = time.perf_counter()
                if ranks.is_main:
                    self.log(f"[difftre] refine {key}: running on {ranks.world_size} ranks ({ranks.backend})")
                result = steps.refine(job, self.out, self.atoms, self.fit_targets, lam, self._refinable,
                                      lambda: self._frames, ranks)
                if ranks.is_main:
                    result["wall_s"] = round(time.perf_counter() - t0, 1)
                    atomic_write_json(path, result)
                    self.log(f"[difftre] refine {key}: finished in {result['wall_s']:.0f} s")
        ranks.barrier("finishing the refinements")

    def run_model(self, lam: float) -> dict:
        """Only the items of the model refined with force-matching weight ``lam``."""
        name = model_of_lambda(self.job, lam)
        done = self.work(only=name)
        self.log(f"[difftre] model {name} (λ={lam:g}): done")
        return {step: result for (step, _), result in done.items()}

    def results(self) -> dict:
        """Run every item, then gather the results the report reads."""
        from difftre_torch.workflow.steps import binding_reference

        results: dict = {"config": self.job.to_json(), "source": self.job.source,
                         "job": {"raw": self.job.raw, "base_dir": str(self.job.base_dir), "source": self.job.source}}
        results.update(self._assemble(self.work()))
        results["binding_reference"] = binding_reference(self.job)
        return results

    def run(self) -> dict:
        """Every item, then the report (written under a lock); returns the report's paths and
        headline table."""
        from difftre_torch.workflow.report import write_report

        results = self.results()
        while True:
            try:
                with run_lock(self.out / "steps", "report.lock"):
                    atomic_write_json(self.out / "steps" / "results.json", results)
                    report = write_report(results, self.out / "report", self.job)
                break
            except LockHeld:
                time.sleep(self.poll_s)
        self.log(report["headline"])
        self.log(f"[difftre] report: {report['report']}")
        return report
