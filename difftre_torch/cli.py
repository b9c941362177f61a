"""``difftre``: the command line (``python -m difftre_torch`` does the same).

Subcommands::

    difftre refine CONFIG [--resume] [--fresh] [--out DIR] [--set KEY=VALUE ...]
    difftre check CONFIG [--set KEY=VALUE ...]
    difftre compare CONFIG [--model FILE] [--frames FILE ... [--types C N | --data FILE] [--skip N]] [--set ...]
    difftre evaluate CONFIG [--model FILE ...] [--set ...]
    difftre report OUT
    difftre export lammps OUT_DIR CONFIG_OR_RUN [--model FILE] [--types C N ...]

Every failure the user can fix prints one line naming the file, the field and what was expected
(exit code 2); MD that keeps blowing up stops with one line naming the state point, replica,
step and reason (exit code 3); a rank of a torchrun launch that lost the others, or that torchrun
stopped, says so in one line naming the rank (exit code 4); anything else is one line too (exit code 1). ``--debug`` shows
the traceback instead. At start the command chooses torch's CPU thread count for the job's work
size and the free cores, and prints it (:mod:`difftre_torch.threads`; ``--threads`` overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

EXAMPLES = {
    "refine": "difftre refine lj_argon --set trainer.updates=4 --out outputs/try   (a shipped example)\n"
              "  difftre refine recipes/gc3n4/quick.yaml\n"
              "  torchrun --nproc-per-node 2 -m difftre_torch refine lj_argon --set state_points.0.replicas=2"
              "   (2 ranks)",
    "check": "difftre check recipes/gc3n4/quick.yaml",
    "compare": "difftre compare recipes/gc3n4/quick.yaml --model outputs/gc3n4_quick/refine/lambda_1000/"
               "refined_potential.correction.pt\n"
               "  difftre compare recipes/gc3n4/quick.yaml --frames dump.lammpstrj --types C N --skip 20   (your LAMMPS run)",
    "evaluate": "difftre evaluate recipes/gc3n4/quick.yaml --model data/world/base_model/base.ckpt",
    "report": "difftre report outputs/gc3n4_quick",
    "export": "difftre export lammps lammps_model outputs/gc3n4_quick   (the main refined model of a finished run)\n"
              "  difftre export lammps lammps_model recipes/gc3n4/quick.yaml --model FILE.correction.pt --types C N",
}


def _version() -> str:
    from difftre_torch import __version__

    return __version__


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("config", help="job config (YAML or TOML; see docs/config.md), or the name of a shipped "
                                      "example: " + ", ".join(shipped_examples()))
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set trainer.updates=4 (repeatable; values are YAML)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: chosen from the work size and the free cores, "
                        "printed at start; also $DIFFTRE_THREADS)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="difftre", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Refine a machine-learned interatomic potential against experiment (DiffTRe).",
        epilog="examples:\n" + "\n".join(f"  {v}" for v in EXAMPLES.values()))
    top.add_argument("--version", action="version", version=f"difftre_torch {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("refine", "the whole job: structure vs experiment, refinement (every λ), refined structure, "
                      "evaluation on labelled frames, report")
    _common(p)
    p.add_argument("--out", default=None, help="output folder (default: output.dir of the config)")
    p.add_argument("--resume", action="store_true", help="accepted for habit: a run always continues "
                                                          "from what its output folder holds")
    p.add_argument("--fresh", action="store_true", help="delete the output folder's earlier results first")
    p.add_argument("--redo", nargs="*", default=(), help="steps to run again (structure_base, refine, "
                                                         "structure_refined, evaluate)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, metavar="LAM",
                   help="only the model refined with this force-matching weight, then stop")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between looks when another process holds "
                                                            "the next item")
    p.add_argument("--rank-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before the run stops with an "
                        "error (a rank that died or hangs); default 600")

    p = add("check", "validate a config and its files and print what would run, without sampling")
    _common(p)

    p = add("compare", "a model's ensemble (or frames you already have) against the experiment: R_w, "
                       "χ²/bin, lattice, overlay figure")
    _common(p)
    p.add_argument("--model", default=None, help="model file (default: the config's potential)")
    p.add_argument("--frames", nargs="*", default=None,
                   help="trajectories to compare instead of sampling, each one replica with its frames in time order: "
                        "LAMMPS text dumps (.gz too), LAMMPS data files, or anything ase.io reads (extxyz, XDATCAR, ...)")
    p.add_argument("--types", nargs="+", default=None, metavar="ELEMENT",
                   help="element of LAMMPS type 1, 2, ... of dumps and data files, e.g. --types C N")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="a LAMMPS data file whose Masses name the types (instead of, or checked against, --types)")
    p.add_argument("--skip", type=int, default=0, help="leading frames of each trajectory to drop (equilibration)")
    p.add_argument("--every", type=_positive_int, default=1, help="keep every k-th frame after --skip")
    p.add_argument("--state-point", default=None, help="the state point the frames belong to (default: the first)")
    p.add_argument("--out", default=None, help="output folder (default: <output.dir>/compare)")

    p = add("evaluate", "models against the config's labelled frame sets: errors with bootstrap intervals, "
                        "paired differences")
    _common(p)
    p.add_argument("--model", nargs="*", default=None, help="model files (default: the config's potential)")
    p.add_argument("--out", default=None, help="output folder (default: <output.dir>/evaluate)")

    p = add("export", "write a refined model for an MD engine: LAMMPS pair styles (NequIP, DeePMD-kit), the pair "
                      "correction as pair_style table files, and the input snippet in.refined")
    p.add_argument("engine", choices=["lammps"], help="the MD engine")
    p.add_argument("out", help="output folder")
    p.add_argument("config", help="the output folder of a finished `difftre refine` (exports its main refined model), "
                                  "or a job config (YAML or TOML) with --model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--model", default=None, help="the model file to export (default: the run's main refined model)")
    p.add_argument("--types", nargs="+", default=None, metavar="ELEMENT",
                   help="element of LAMMPS type 1, 2, ... (default: the structure's elements by atomic number)")
    p.add_argument("--table-points", type=_positive_int, default=None,
                   help="points of each table (default: the fewest, doubling from 1000, whose per-pair force "
                        "error is at most --force-tolerance)")
    p.add_argument("--force-tolerance", type=float, default=1e-6, help="per-pair force error of the tables, eV/Å")
    p.add_argument("--inner", type=float, default=0.5, help="tables' inner radius, Å (a closer pair stops LAMMPS)")
    p.add_argument("--no-compile", action="store_true", help="do not run nequip-compile (compile.sh holds the command)")
    p.add_argument("--compile-device", default="cpu", help="nequip-compile --device: where LAMMPS will run (cpu, cuda)")
    p.add_argument("--fold", action="store_true",
                   help="NequIP: fold the pair correction into the model (one .nequip.pt2 for pair_style nequip, "
                        "neighbour list to the correction's cut-off) instead of pair_style table files")
    _common(p, config=False)

    p = add("report", "re-render REPORT.md, figures and summary.json from a finished output folder")
    p.add_argument("out", help="the output folder of `difftre refine`")
    _common(p, config=False)
    return top


def shipped_examples() -> dict[str, Path]:
    """Jobs that ship inside the package (``difftre refine lj_argon``): name → config file."""
    root = Path(__file__).resolve().parent / "data"
    return {p.parent.name: p for p in sorted(root.glob("*/*.yaml")) if p.stem == p.parent.name}


def config_path(name: str) -> Path:
    """``name`` as a file, or the config of the shipped example of that name."""
    path = Path(name)
    if not path.exists() and name in shipped_examples():
        return shipped_examples()[name]
    return path


def _job(args, quiet: bool = False):
    """The config, loaded and checked; torch's thread count set for its work (printed unless
    ``quiet``). Under a launcher the ranks on one node share its cores (``LOCAL_WORLD_SIZE``)."""
    import os

    from difftre_torch import threads
    from difftre_torch.config import load_job
    from difftre_torch.environment import usable_cores

    job = load_job(config_path(args.config), args.overrides)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    usable = max(1, usable_cores() // per_node) if per_node > 1 else None
    choice = threads.choose_threads(_atoms_per_step(job), args.threads, usable=usable)
    threads.apply(choice)
    if not quiet:
        print(choice.describe(), flush=True)
    return job


def _atoms_per_step(job) -> int | None:
    """Atoms one MD step evaluates: the structure's atoms × the replicas sampled in one batch
    (the batched sampler: the refined state points together, or one compared state point), or
    the structure's atoms (one replica at a time); None when the structure cannot be read (the
    job's own checks report that)."""
    from difftre_torch.workflow.build import build_system

    try:
        n_atoms = len(build_system(job))
    except Exception:  # noqa: BLE001 - reported by check_job with the file and field
        return None
    if job.sampler_kind != "batched":
        return n_atoms
    together = sum(p.replicas for p in job.state_points if p.refine)
    return n_atoms * max([together] + [p.replicas for p in job.state_points])


def cmd_check(args) -> int:
    from difftre_torch.workflow.build import check_job

    job = _job(args)
    t0 = time.perf_counter()
    for line in check_job(job):
        print(line)
    print(f"difftre check: {job.source} is valid ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_refine(args) -> int:
    from difftre_torch import distributed

    ranks = distributed.start(args.rank_timeout)
    try:
        return _refine(args, ranks)
    finally:
        distributed.stop(ranks)


def _refine(args, ranks) -> int:
    """``difftre refine``; under a launcher (torchrun) every rank refines together, then rank 0
    alone runs the comparisons, evaluations and the report (:mod:`difftre_torch.distributed`)."""
    from difftre_torch import distributed
    from difftre_torch.workflow.build import check_job
    from difftre_torch.workflow.pipeline import Pipeline, model_of_lambda

    say = (lambda s: print(s, flush=True)) if ranks.is_main else (lambda s: None)
    job = _job(args, quiet=not ranks.is_main)
    if args.out:  # the plan printed below names the folder written to
        job.output = replace(job.output, dir=str(args.out))
    for line in check_job(job, load_models=False):
        say(line)
    only = None if args.lam is None else model_of_lambda(job, args.lam)
    out = job.out_dir
    if ranks.active:
        say(f"[difftre] {ranks.world_size} ranks ({ranks.backend}, rank 0 on {ranks.device}, "
            f"timeout {ranks.timeout_s:g} s): they refine together, then rank 0 compares and reports")
        if ranks.is_main:
            pipeline = Pipeline(job, out, tuple(args.redo), log=say, fresh=args.fresh, poll_s=args.poll)
        ranks.barrier("preparing the output folder")
        if not ranks.is_main:
            pipeline = Pipeline(job, out, (), log=say, poll_s=args.poll, primary=False)
        pipeline.refine_on_ranks(ranks, only)
        distributed.stop(ranks)
        if not ranks.is_main:
            return 0
    else:
        pipeline = Pipeline(job, out, tuple(args.redo), log=say, fresh=args.fresh, poll_s=args.poll)
    if args.lam is not None:
        pipeline.run_model(args.lam)
    else:
        pipeline.run()
    return 0


def cmd_compare(args) -> int:
    from difftre_torch.workflow.tools import compare

    job = _job(args)
    out = Path(args.out) if args.out else job.out_dir / "compare"
    if args.frames is None and (args.types or args.data or args.skip or args.every != 1):
        from difftre_torch.config import ConfigError

        raise ConfigError("--types, --data, --skip and --every apply to --frames")
    if args.skip < 0:
        from difftre_torch.config import ConfigError

        raise ConfigError(f"--skip: expected a number of frames >= 0, got {args.skip}")
    result = compare(job, out, model=args.model, frames=args.frames, state_point=args.state_point,
                     types=args.types, data_file=args.data, skip=args.skip, every=args.every,
                     log=lambda s: print(s, flush=True))
    print(result["table"])
    print(f"wrote {out}")
    return 0


def cmd_evaluate(args) -> int:
    from difftre_torch.workflow.tools import evaluate

    job = _job(args)
    out = Path(args.out) if args.out else job.out_dir / "evaluate"
    result = evaluate(job, out, models=args.model)
    print(result["table"])
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    from difftre_torch.workflow.report import write_report

    out = Path(args.out)
    job, results = _finished_run(out)
    report = write_report(results, out / "report", job)
    print(report["headline"])
    print(f"wrote {report['report']}")
    return 0


def _finished_run(folder: Path) -> tuple:
    """The job and results of a finished output folder (``steps/results.json``)."""
    from difftre_torch.config import ConfigError, parse_job

    path = folder / "steps" / "results.json"
    if not path.exists():
        raise ConfigError(f"{folder}: no finished job here ({path} does not exist); run `difftre refine` first, "
                          "or give a config and --model")
    results = json.loads(path.read_text())
    saved = results["job"]
    return parse_job(saved["raw"], saved["base_dir"], saved["source"]), results


def cmd_export(args) -> int:
    from difftre_torch.config import ConfigError
    from difftre_torch.export.lammps import ExportError, LammpsExportOptions
    from difftre_torch.workflow.tools import export_model

    source = Path(args.config)
    if source.is_dir():
        if args.overrides:
            raise ConfigError("--set applies to a config file, not to a finished run's folder")
        job, results = _finished_run(source)
    else:
        job, results = _job(args), None
    try:
        options = LammpsExportOptions(table_points=args.table_points, inner_A=args.inner,
                                      force_tolerance_eV_per_A=args.force_tolerance, compile=not args.no_compile,
                                      compile_device=args.compile_device, fold=args.fold)
    except ExportError as exc:
        raise ConfigError(f"export: {exc}") from None
    out = Path(args.out)
    record = export_model(job, out, args.engine, model=args.model, types=args.types, options=options,
                          results=results, run_folder=source if source.is_dir() else None, log=lambda s: print(s, flush=True))
    print("\n".join(record["pair_lines"]))
    print(f"wrote {out} (include {out / 'in.refined'} after read_data)")
    return 0


COMMANDS = {"refine": cmd_refine, "check": cmd_check, "compare": cmd_compare, "evaluate": cmd_evaluate,
            "report": cmd_report, "export": cmd_export}


def _warnings_as_log_lines() -> None:
    """Warnings (an MD blow-up rolled back, a fallback taken) as one line each in the run's log
    on stdout, ``[difftre] warning: <message>``; stderr is kept for the error that stops a run."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
        print(f"[difftre] warning: {text}", flush=True)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    from difftre_torch.threads import prepare_openmp

    prepare_openmp()  # before torch starts OpenMP: waiting threads sleep instead of spinning
    args = parser().parse_args(argv)
    _warnings_as_log_lines()
    import matplotlib

    matplotlib.use("Agg")
    if args.debug:
        return COMMANDS[args.command](args)
    import os

    from difftre_torch.checkpoint import LockHeld
    from difftre_torch.config import ConfigError
    from difftre_torch.distributed import RankFailure, launched
    from difftre_torch.sampling.blowups import MDBlowUpError

    where = f" (rank {os.environ.get('RANK', '0')})" if launched() else ""

    def say(kind: str, exc: BaseException) -> None:
        one_line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"difftre {args.command}{where}: {kind}: {one_line}", file=sys.stderr, flush=True)

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError, IsADirectoryError, LockHeld, ValueError) as exc:
        say("error", exc)
        return 2
    except MDBlowUpError as exc:
        say("MD failed", exc)
        return 3
    except RankFailure as exc:
        say("stopped", exc)
        return 4
    except KeyboardInterrupt:
        print(f"difftre {args.command}: interrupted; the same command continues from the last checkpoint",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen input: one line, --debug for more
        say("internal error", f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
