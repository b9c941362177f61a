"""Train the world's base NequIP model with nequip-train, resumably, then evaluate it.

``python -m recipes.world.train_base [--data data/world/dataset] [--run runs/base_model]
[--runs runs/world] [--max-epochs N] [--threads 1] [--quick] [--publish] [--set KEY=VALUE ...]``

1. Training: ``nequip-train`` (a subprocess) with ``recipes/world/base_model.yaml``; the paths,
   the epoch limit and any ``--set`` go in as Hydra overrides. If ``<run>/last.ckpt`` exists the
   run resumes from it (``++ckpt_path``, nequip's restart: model, optimizer, scheduler, EMA,
   callbacks and epoch restored). The overrides are recorded in ``<run>/train_base.json`` and a
   resume with different ones is refused (nequip does not check); only ``--max-epochs`` may be
   raised. A run that finished (``max_epochs`` or early stopping) is not retrained.
2. Evaluation of ``best.ckpt`` (EMA weights, via :func:`difftre_torch.potentials.nequip_files.load_nequip`,
   forces and stress by autograd): on the test split, and on every finished held-out job
   (``<runs>/heldout_*``) against the teacher's labels (``teacher_*``) and reality's labels,
   per cell size. Energies per atom (meV/atom: RMSE, MAE, mean error = bias, and the RMSE after
   removing the bias, which is what matters for forces and dynamics: reality's D3 energy is
   ~0.1 eV/atom below the teacher's), force components (meV/Å: RMSE, MAE), stress (GPa, RMSE
   over the six Voigt components, ASE sign). Training curve from the CSV logs.
3. MD speed: ASE Langevin (300 K, 1 fs) through
   :class:`~difftre_torch.potentials.ase_calculator.PotentialCalculator` on a 56-atom test
   frame with ``--threads`` torch threads: median ms/step.

Writes ``<run>/metrics.json`` and ``<run>/metrics.md``; ``--publish`` copies the evaluated
checkpoint and both files to ``--publish-to`` (default ``data/world/base_model/``, the checkpoint
as ``base.ckpt``).

Continued training: ``--init-from CKPT`` (with ``--config base_model_finetune.yaml``) starts from
that checkpoint's EMA weights with a fresh optimizer and the config's schedule (nequip's
``ModelFromCheckpoint``); the published checkpoint has its model config resolved back to the
builder config (:func:`write_standalone`), so it loads without the checkpoint it started from. ``--quick``: a tiny model (4 features, 2 layers), one epoch, a few MD steps —
for the tests.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from difftre_torch.checkpoint import atomic_torch_save, atomic_write_json, atomic_write_text

CONFIG = Path(__file__).with_name("base_model.yaml")
QUICK_OVERRIDES = (
    "training_module.model.num_features=4",
    "training_module.model.num_layers=2",
    "training_module.model.radial_mlp_depth=1",
    "training_module.model.radial_mlp_width=8",
    "training_module.model.num_bessels=4",
    "data.train_dataloader.batch_size=2",
    "data.val_dataloader.batch_size=2",
)
_EPOCH_KEY = "trainer.max_epochs="


# ---------------------------------------------------------------------------------------------
# training


def _nequip_train() -> str:
    from difftre_torch.environment import console_script

    return console_script("nequip-train", "install nequip (make setup installs it)")


def _dataset_suffix(data_dir: Path) -> str:
    for suffix in (".extxyz.gz", ".extxyz"):
        if all((data_dir / f"{s}{suffix}").exists() for s in ("train", "val", "test")):
            return suffix
    raise FileNotFoundError(f"{data_dir} has no train/val/test .extxyz[.gz]: run recipes.world.dataset")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resume_point(run_dir: Path, log=print) -> Path | None:
    """The checkpoint to resume from: ``last.ckpt`` if it loads, else ``last.backup.ckpt``.

    Lightning writes ``last.ckpt`` in place, so a run killed while writing it leaves a truncated
    file. Each launch therefore checks that ``last.ckpt`` loads and copies it (atomically) to
    ``last.backup.ckpt``; if it does not load, the backup of the previous launch is used and the
    epochs since then are trained again (said in the log). None: nothing to resume from.
    """
    import torch

    last, backup = run_dir / "last.ckpt", run_dir / "last.backup.ckpt"
    if last.exists():
        try:
            torch.load(last, map_location="cpu", weights_only=False)
        except Exception as error:  # a truncated or corrupt file: any unpickling error
            log(f"[train_base] {last} does not load ({type(error).__name__}: {error}); "
                f"{'resuming from ' + str(backup) if backup.exists() else 'no backup either'}")
        else:
            tmp = backup.with_name(backup.name + ".tmp")
            shutil.copyfile(last, tmp)
            os.replace(tmp, backup)
            return last
    return backup if backup.exists() else None


def init_overrides(checkpoint: Path, compile_mode: str = "eager") -> list[str]:
    """Hydra overrides that replace the config's model by nequip's ModelFromCheckpoint of
    ``checkpoint`` (absolute path: nequip-train runs in the run directory), built in
    ``compile_mode`` ("eager" or "compile": torch.compile'd for training)."""
    checkpoint = checkpoint.resolve()
    if not checkpoint.exists():
        raise FileNotFoundError(f"--init-from {checkpoint}: no such checkpoint")
    return ["~training_module.model",
            f"+training_module.model={{_target_:nequip.model.ModelFromCheckpoint,checkpoint_path:'{checkpoint}',"
            f"compile_mode:{compile_mode}}}"]


def resolved_model_config(config: dict) -> dict:
    """The model's builder config with every ``ModelFromCheckpoint`` node replaced by the builder
    config of the checkpoint it names (followed recursively): what the model *is*, without the
    file it was initialised from."""
    import torch

    while str(config.get("_target_", "")).endswith("ModelFromCheckpoint"):
        parent = torch.load(config["checkpoint_path"], map_location="cpu", weights_only=False)
        config = parent["hyper_parameters"]["model"]
    return dict(config)


def write_standalone(checkpoint: Path, target: Path) -> Path:
    """Copy ``checkpoint`` to ``target`` (atomically) with its model config resolved
    (:func:`resolved_model_config`), so that it loads without the checkpoint a fine-tuning run
    started from; weights, EMA and everything else are unchanged."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hyper = ckpt["hyper_parameters"]
    model = resolved_model_config(hyper["model"])
    if model != hyper["model"]:
        hyper["model"] = model
        hyper["info_dict"]["training_module"]["model"] = model
        atomic_torch_save(ckpt, target)
    else:
        shutil.copyfile(checkpoint, target.with_name(target.name + ".tmp"))
        target.with_name(target.name + ".tmp").replace(target)
    return target


def train(config: Path, data_dir: Path, run_dir: Path, max_epochs: int | None,
          extra_overrides: list[str], threads: int | None, verbose: bool = True) -> dict:
    """Run or resume nequip-train into ``run_dir``; returns the launch record (train_base.json)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / "train_base.json"
    overrides = [f"dataset_dir={data_dir}", f"dataset_suffix={_dataset_suffix(data_dir)}",
                 *extra_overrides]
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    last = run_dir / "last.ckpt"
    if record is not None:
        if record["overrides"] != overrides or record["config_sha256"] != _sha256(config):
            raise RuntimeError(
                f"{run_dir} holds a run made with other overrides or another config "
                f"({record['overrides']}, config sha {record['config_sha256'][:12]}); nequip cannot "
                f"resume it with these. Use another --run, or delete that one."
            )
        if max_epochs is None:
            max_epochs = record["max_epochs"]
        if record.get("finished") and max_epochs <= record["max_epochs"]:
            if verbose:
                print(f"[train_base] {run_dir}: training already finished "
                      f"({record['finished']['reason']}); evaluating", flush=True)
            return record
    elif last.exists():
        raise RuntimeError(f"{last} exists without train_base.json: not a run of this script")
    if max_epochs is None:
        max_epochs = 500
    record = record or {"config": str(config), "config_sha256": _sha256(config),
                        "overrides": overrides, "history": []}
    record["max_epochs"] = max_epochs
    record.pop("finished", None)
    command = [_nequip_train(), "-cp", str(config.parent.resolve()), "-cn", config.stem,
               *overrides, f"{_EPOCH_KEY}{max_epochs}", f"hydra.run.dir={run_dir}"]
    resume = resume_point(run_dir)
    resumed = resume is not None
    if resumed:
        command.append(f"++ckpt_path={resume}")
    env = dict(os.environ, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    entry = {"start": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_from": str(resume) if resumed else None,
             "max_epochs": max_epochs, "threads": threads}
    record["history"].append(entry)
    atomic_write_json(record_path, record)
    if verbose:
        print(f"[train_base] {'resuming' if resumed else 'starting'} nequip-train in {run_dir} "
              f"(log: {run_dir / 'nequip-train.log'})", flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "nequip-train.log", "a") as log:
        log.write(f"\n# {' '.join(command)}\n")
        log.flush()
        log_start = (run_dir / "nequip-train.log").stat().st_size
        proc = subprocess.Popen(command, cwd=run_dir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        # a SIGTERM to this process stops nequip-train too (it resumes from last.ckpt later)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if verbose:
                    sys.stdout.write(line)
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            entry.update(end=time.strftime("%Y-%m-%dT%H:%M:%S"),
                         wall_s=round(time.perf_counter() - t0, 1), rc="interrupted")
            atomic_write_json(record_path, record)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    entry.update(end=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_s=round(time.perf_counter() - t0, 1), rc=rc)
    if rc != 0:
        atomic_write_json(record_path, record)
        tail = (run_dir / "nequip-train.log").read_text()[-3000:]
        raise RuntimeError(f"nequip-train failed (exit {rc}); end of its log:\n{tail}")
    with open(run_dir / "nequip-train.log", "rb") as log:
        log.seek(log_start)
        this_launch = log.read().decode(errors="replace")
    reason = "max_epochs" if f"max_epochs={max_epochs}` reached" in this_launch else "early stopping"
    record["finished"] = {"reason": reason, "at": entry["end"]}
    atomic_write_json(record_path, record)
    return record


def training_curve(run_dir: Path) -> list[dict]:
    """Per-epoch validation (and training-loss) metrics from every CSV log of the run; a resumed
    run's later logs override the same epoch."""
    epochs: dict[int, dict] = {}
    learning_rates: list[tuple[int, dict]] = []  # LearningRateMonitor rows: step, no epoch
    for path in sorted((run_dir / "logs").glob("version_*/metrics.csv"),
                       key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                lr = {k: float(v) for k, v in row.items() if v and k.startswith("lr-")}
                if lr and row.get("step"):
                    learning_rates.append((int(row["step"]), lr))
                if not row.get("epoch"):
                    continue
                values = {k: float(v) for k, v in row.items()
                          if v and (k.startswith("val0_epoch/") or k.startswith("train_loss_epoch/"))}
                if values:
                    entry = epochs.setdefault(int(row["epoch"]), {})
                    entry.update(values)
                    entry["step"] = int(row["step"])
    for entry in epochs.values():  # the rate set at the start of the epoch
        earlier = [lr for step, lr in learning_rates if step < entry["step"]]
        entry.update(earlier[-1] if earlier else {})
    return [{"epoch": e, **v} for e, v in sorted(epochs.items())]


# ---------------------------------------------------------------------------------------------
# evaluation


def errors(potential, frames, source: str = "label") -> dict:
    """:func:`difftre_torch.evaluation.error_summary` of ``potential`` on ``frames`` against the
    frames' own labels (``"label"``) or their ``teacher_*`` labels (``"teacher"``)."""
    from difftre_torch.evaluation import error_summary, frame_labels, predict

    return error_summary(predict(potential, frames), [frame_labels(a, source) for a in frames])


def heldout_frames(runs: Path) -> dict[str, list]:
    """Held-out frames by cell name: the published export (``runs`` holds the ``heldout.json``
    of :mod:`recipes.world.heldout`, e.g. data/world/heldout), or every finished held-out job
    under the campaign folder ``runs`` (cell name from the job's info)."""
    from ase.io import read

    out: dict[str, list] = {}
    index = Path(runs) / "heldout.json"
    if index.exists():
        cells = json.loads(index.read_text())["cells"]
        for cell, entry in cells.items():
            out[cell] = read(Path(runs) / entry["file"], index=":")
        return dict(sorted(out.items(), key=lambda kv: len(kv[1][0])))
    for job in sorted(Path(runs).glob("heldout_*")):
        if (job / "done.json").exists() and (job / "frames.extxyz").exists():
            frames = read(job / "frames.extxyz", index=":")
            if frames:
                out.setdefault(str(frames[0].info.get("cell", job.name)), []).extend(frames)
    return dict(sorted(out.items(), key=lambda kv: len(kv[1][0])))


def md_speed(potential, atoms, steps: int, threads: int | None, warmup: int = 5) -> dict:
    """Median wall time per ASE Langevin step (300 K, 1 fs, friction 0.02/fs) with ``potential``
    on ``atoms``, over chunks of ≤ 10 steps, using ``threads`` torch threads (None: as is); also
    the process CPU time per step, which on a shared machine is the steadier number (with one
    thread it equals the wall time of an idle machine)."""
    import torch
    from ase import units
    from ase.md.langevin import Langevin

    from difftre_torch.potentials.ase_calculator import PotentialCalculator

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        atoms = atoms.copy()
        atoms.calc = PotentialCalculator(potential)
        dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=300.0, friction=0.02 / units.fs,
                       fixcm=False, rng=np.random.default_rng(0))
        dyn.run(warmup)
        chunk, times = min(10, steps), []
        done, cpu0 = 0, time.process_time()
        while done < steps:
            n = min(chunk, steps - done)
            t0 = time.perf_counter()
            dyn.run(n)
            times.append((time.perf_counter() - t0) / n * 1e3)
            done += n
        cpu_ms = (time.process_time() - cpu0) / steps * 1e3
        return {"ms_per_step_median": float(np.median(times)), "ms_per_step_min": float(np.min(times)),
                "cpu_ms_per_step": float(cpu_ms), "steps": steps, "atoms": len(atoms),
                "threads": torch.get_num_threads(),
                "integrator": "ase Langevin 300 K, 1 fs, PotentialCalculator (forces by autograd)"}
    finally:
        torch.set_num_threads(before)


def evaluate_run(checkpoint: Path, data_dir: Path, runs: Path | None, md_steps: int,
                 threads: int | None) -> dict:
    """Test-split and held-out errors and MD speed of ``checkpoint`` (see module doc)."""
    import torch
    from ase.io import read

    from difftre_torch.potentials.nequip_files import load_nequip

    if threads:
        torch.set_num_threads(threads)
    potential = load_nequip(checkpoint)
    suffix = _dataset_suffix(data_dir)
    test = read(data_dir / f"test{suffix}", index=":")
    result: dict = {"checkpoint": str(checkpoint), "model_dtype": potential.source.model_dtype,
                    "r_max_A": potential.r_max_A,
                    "parameters": int(sum(p.numel() for p in potential.parameters())),
                    "model": {k: v for k, v in potential.source.config["model"].items()
                              if isinstance(v, (int, float, str, bool))}}
    result["test"] = errors(potential, test)
    result["heldout"] = {}
    if runs is not None and Path(runs).exists():
        for cell, frames in heldout_frames(Path(runs)).items():
            entry = {"vs_reality": errors(potential, frames)}
            if all("teacher_energy" in a.info for a in frames):
                entry["vs_teacher"] = errors(potential, frames, "teacher")
            result["heldout"][cell] = entry
    md_frame = next((a for a in test if len(a) == 56), test[0])
    result["md_speed"] = md_speed(potential, md_frame, md_steps, threads)
    return result


def markdown(metrics: dict) -> str:
    """The error table of ``metrics`` (metrics.json) as markdown."""
    rows = [("test split (teacher labels)", metrics["test"])]
    for cell, entry in metrics.get("heldout", {}).items():
        for ref in ("vs_teacher", "vs_reality"):
            if ref in entry:
                rows.append((f"held-out {cell}, {ref.replace('vs_', 'vs ')}", entry[ref]))
    lines = [
        f"Base model `{Path(metrics['checkpoint']).name}` ({metrics['parameters']} parameters, "
        f"r_max {metrics['r_max_A']:g} Å, {metrics['model_dtype']}); energies per atom.",
        "",
        "| set | frames | atoms | E RMSE (meV/atom) | E MAE | E bias | E RMSE − bias | F RMSE (meV/Å) "
        "| F in-plane | F out-of-plane | σ RMSE (GPa) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in rows:
        v = lambda key, fmt: format(e[key]["value"], fmt)
        lines.append(
            f"| {name} | {e['frames']} | {e['atoms_per_frame']:.0f} | {v('energy_rmse_meV_per_atom', '.2f')} | "
            f"{v('energy_mae_meV_per_atom', '.2f')} | {v('energy_bias_meV_per_atom', '+.2f')} | "
            f"{v('energy_rmse_debiased_meV_per_atom', '.2f')} | {v('forces_rmse_meV_per_A', '.1f')} | "
            f"{v('forces_in_plane_rmse_meV_per_A', '.1f')} | {v('forces_out_of_plane_rmse_meV_per_A', '.1f')} | "
            f"{v('stress_rmse_GPa', '.3f')} |")
    md = metrics["md_speed"]
    lines += ["", f"MD speed: {md['ms_per_step_median']:.1f} ms/step wall, {md['cpu_ms_per_step']:.1f} ms/step "
                  f"CPU ({md['atoms']} atoms, {md['threads']} thread(s), {md['integrator']})."]
    if metrics.get("training"):
        t = metrics["training"]
        unrecorded = (f" (at most; {t['launches_unrecorded']} of {t['launches']} launches were killed "
                      f"without a record and are bounded by the next launch's start)"
                      if t.get("launches_unrecorded") else "")
        lines.append(f"Training: {t['epochs']} epochs, {t['wall_s']:.0f} s wall{unrecorded}; validation weighted sum "
                     f"{t['val_first']:.4g} (first epoch) → {t['val_best']:.4g} (best).")
    return "\n".join(lines) + "\n"


def launch_walls(history: list[dict]) -> dict:
    """Wall time of nequip-train over the launches (s). A launch killed without a record (the
    machine's session ended) has no ``wall_s``; its span up to the next launch's start bounds it.
    Returns {"wall_s": recorded + bounds, "wall_s_recorded", "launches_unrecorded"}."""
    recorded, bound, unrecorded = 0.0, 0.0, 0
    for k, h in enumerate(history):
        if h.get("wall_s") is not None:
            recorded += float(h["wall_s"])
        else:
            unrecorded += 1
            if k + 1 < len(history):
                start = time.mktime(time.strptime(h["start"], "%Y-%m-%dT%H:%M:%S"))
                bound += time.mktime(time.strptime(history[k + 1]["start"], "%Y-%m-%dT%H:%M:%S")) - start
    return {"wall_s": recorded + bound, "wall_s_recorded": recorded, "launches_unrecorded": unrecorded}


def _training_summary(run_dir: Path, record: dict) -> dict:
    curve = training_curve(run_dir)
    val = [(r["epoch"], r["val0_epoch/weighted_sum"]) for r in curve if "val0_epoch/weighted_sum" in r]
    if not val:
        return {}
    return {
        "epochs": max(r["epoch"] for r in curve) + 1,
        **launch_walls(record.get("history", [])),
        "launches": len(record.get("history", [])),
        "finished": record.get("finished"),
        "val_first": val[0][1], "val_last": val[-1][1], "val_best": min(v for _, v in val),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/world/dataset", help="output of recipes.world.dataset")
    parser.add_argument("--run", default="runs/base_model", help="nequip-train output directory")
    parser.add_argument("--runs", default="runs/world",
                        help="held-out frames: the world campaigns (heldout_* jobs) or the published "
                             "export (data/world/heldout)")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--max-epochs", type=int, default=None, help="default: 500, or the run's")
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP threads (0: leave as is)")
    parser.add_argument("--md-steps", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for nequip-train (repeatable)")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="start from this checkpoint's (EMA) weights with a fresh optimizer "
                             "(nequip's ModelFromCheckpoint; use with --config base_model_finetune.yaml)")
    parser.add_argument("--compile", action="store_true",
                        help="train the torch.compile'd model (nequip's compile_mode: compile): measured "
                             "1.9x faster per frame on one CPU thread after ~6 min of compilation per launch")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 epoch, few MD steps")
    parser.add_argument("--evaluate-only", action="store_true", help="skip training")
    parser.add_argument("--publish", action="store_true", help="copy the model to --publish-to")
    parser.add_argument("--publish-to", default="data/world/base_model")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    data_dir, run_dir = Path(args.data).resolve(), Path(args.run).resolve()
    overrides = list(args.set)
    mode = "compile" if args.compile else "eager"
    if args.init_from:
        overrides = [*init_overrides(Path(args.init_from), mode), *overrides]
    elif args.compile:
        overrides = ["++training_module.model.compile_mode=compile", *overrides]
    max_epochs, md_steps = args.max_epochs, args.md_steps
    if args.quick:
        overrides = [*QUICK_OVERRIDES, *overrides]
        max_epochs, md_steps = max_epochs or 1, min(md_steps, 3)
    threads = args.threads or None
    record_path = run_dir / "train_base.json"
    if args.evaluate_only:
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
    else:
        record = train(Path(args.config).resolve(), data_dir, run_dir, max_epochs, overrides,
                       threads, verbose=not args.quiet)
    checkpoint = run_dir / "best.ckpt"
    if not checkpoint.exists():
        checkpoint = run_dir / "last.ckpt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"no best.ckpt or last.ckpt in {run_dir}")
    metrics = evaluate_run(checkpoint, data_dir, Path(args.runs), md_steps, threads)
    metrics["dataset"] = str(data_dir)
    if args.init_from:  # the provenance of a continued run is its own command line
        metrics["command"] = " ".join(["python -m recipes.world.train_base",
                                       *(sys.argv[1:] if argv is None else argv)])
    metrics["training"] = _training_summary(run_dir, record)
    atomic_write_json(run_dir / "metrics.json", metrics)
    table = markdown(metrics)
    atomic_write_text(run_dir / "metrics.md", table)
    if not args.quiet:
        print(table, flush=True)
    if args.publish:
        target = Path(args.publish_to)
        target.mkdir(parents=True, exist_ok=True)
        write_standalone(checkpoint, target / "base.ckpt")
        shutil.copyfile(run_dir / "metrics.json", target / "metrics.json")
        shutil.copyfile(run_dir / "metrics.md", target / "metrics.md")
        print(f"[train_base] published {checkpoint} -> {target / 'base.ckpt'}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
