"""Command line of the sampling benchmark: ``python -m benchmarks.sampling`` (see the package's
docstring)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.common import load_note, measure_load, write_section
from benchmarks.sampling import __doc__ as DOC
from benchmarks.sampling.models import compile_model, load_model
from benchmarks.sampling.report import section, title
from benchmarks.sampling.timing import measure_system


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampling", description=DOC.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=["lj", "nequip", "deepmd"], nargs="+", default=None,
                        help="models to measure, one table each (default: nequip, if nequip-train "
                             "works here, then lj)")
    parser.add_argument("--replicas", type=int, nargs="+", default=None,
                        help="batch sizes R (default 1 8 32 on CPU, 1 8 32 128 on CUDA)")
    parser.add_argument("--seconds", type=float, default=5.0, help="target length of each timed round")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; default: torch's default less the cores other processes "
                             "keep busy (measured over 1 s before the run), at least 1")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    parser.add_argument("--compiled", action="store_true",
                        help="nequip: also time the batched sampler with the model compiled by nequip-compile "
                             "(AOTInductor, --target batch; one compile, about a minute on CPU)")
    parser.add_argument("--compile-step", action="store_true",
                        help="also time the batched sampler with its integrator step under torch.compile and "
                             "the per-step flags read at the checks only (SamplerConfig.compile_step, "
                             "deferred_checks; with --compiled the compiled model's rows use both too)")
    parser.add_argument("--notes", default="", help="free text appended to the notes line")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    replicas = args.replicas or ([1, 8, 32] if device.type == "cpu" else [1, 8, 32, 128])
    started = time.perf_counter()
    busy, usable, args.threads = measure_load(args.threads)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    notes = [load_note(busy, usable, args.threads) + "."]
    if busy >= 0.5:
        notes.append("CPU timings are shared-machine timings: absolute rates vary with the other load.")
    blocks = []
    with tempfile.TemporaryDirectory(prefix="difftre_sampling_") as tmp:
        for model in args.model or ["nequip", "lj"]:
            loaded = load_model(model, Path(tmp), device, required=args.model is not None, notes=notes)
            if loaded is None:
                continue
            potential, systems, model_text = loaded
            compiled = None
            if args.compiled and model == "nequip":
                compiled, compile_s = compile_model(potential, systems[0], device, Path(tmp))
                model_text += f"; compiled with nequip-compile in {compile_s:.0f} s"
            rows = []
            for system in systems:
                rows += measure_system(system, potential, device, replicas, args.seconds, compiled,
                                       args.compile_step)
            blocks.append((model_text, rows))
    notes.append(f"Whole run {time.perf_counter() - started:.0f} s. {args.notes}")
    text = section(blocks, args, device, [n.strip() for n in notes if n.strip()])
    print("\n" + text)
    write_section(args.out, text, title(device, args.model))
    print(f"wrote the '{title(device, args.model)}' section of {args.out}")


if __name__ == "__main__":
    main()
