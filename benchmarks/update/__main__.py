"""Command line of the update benchmark: ``python -m benchmarks.update`` (see the package's
docstring); with the hidden ``--worker TASK N`` it is also the fresh process that measures one N."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import load_note, measure_load, nequip_fallback, write_section
from benchmarks.update import __doc__ as DOC
from benchmarks.update.report import section, title
from benchmarks.update.systems import train_tiny_nequip
from benchmarks.update.workers import measure, measure_memory, measure_time


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.update",
                                     description=DOC.split("\n")[0])
    parser.add_argument("--sizes", type=_positive_int, nargs="+", default=[100, 1000, 10000],
                        help="numbers of snapshots N (the first is the memory reference)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=["lj", "nequip"], default=None,
                        help="default: nequip if nequip-train works here, else lj")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    parser.add_argument("--chunk-size", type=_positive_int, default=100)
    parser.add_argument("--repeats", type=_positive_int, default=3)
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads; default: torch's default, less the cores other "
                             "processes keep busy (measured over 1 s before the run), at least 1")
    parser.add_argument("--notes", default="", help="free text appended to the notes line")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_worker_task(args) -> None:
    """The fresh process for one N: measure_<TASK>, its JSON on the last line of stdout."""
    task, n_snapshots = args.worker[0], int(args.worker[1])
    if task == "memory":
        out = measure_memory(n_snapshots, args.model, args.checkpoint, args.device,
                             args.chunk_size, args.threads)
    else:
        out = measure_time(n_snapshots, args.model, args.checkpoint, args.device,
                           args.chunk_size, args.repeats, args.threads)
    print(json.dumps(out))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker_task(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    started = time.perf_counter()
    busy, usable, args.threads = measure_load(args.threads)
    notes = [load_note(busy, usable, args.threads)
             + (" (fewer than torch's default, so as not to oversubscribe the cores)."
                if args.threads < torch.get_num_threads() else ".")]
    if busy >= 0.5:
        notes.append("CPU timings are shared-machine timings: absolute times vary with the other "
                     "load, the ratio (interleaved runs) much less.")
    with tempfile.TemporaryDirectory(prefix="difftre_bench_") as tmp:
        model, checkpoint = args.model or "nequip", None
        model_text = "LennardJones (σ 3.4 Å, ε 0.0104 eV, r_c 8.5 Å, float64), rattled fcc Ar"
        if model == "nequip":
            try:
                t0 = time.perf_counter()
                checkpoint = str(train_tiny_nequip(Path(tmp)))
                seconds = time.perf_counter() - t0
                from difftre_torch.testing import TINY_NEQUIP_DESCRIPTION
                model_text = f"{TINY_NEQUIP_DESCRIPTION}, trained in {seconds:.0f} s; rattled rock-salt C/N"
                print(f"trained the tiny NequIP model in {seconds:.0f} s", flush=True)
            except Exception as err:  # noqa: BLE001 - any failure means: fall back (or stop)
                if args.model == "nequip":
                    raise
                nequip_fallback(err, "using lj", "so lj was used.", notes)
                model = "lj"
        rows = []
        for n in args.sizes:
            row = measure(n, args, checkpoint, model)
            rows.append(row)
            print(f"N={n}: update {row['update_s']:.3f} s, fwd+bwd {row['fwd_bwd_s']:.3f} s, "
                  f"peak {row['peak_MB']:.1f} MB", flush=True)
    notes.append(f"Whole run {time.perf_counter() - started:.0f} s. Peak memory counts what the "
                 "update allocates beyond the store (allocated before; 'store MB'): one chunk's "
                 "graph and the O(N) energies, weights and cotangents. " + args.notes)
    text = section(rows, args, model_text, device, [n.strip() for n in notes if n.strip()])
    print("\n" + text)
    write_section(args.out, text, title(device))
    print(f"wrote the '{title(device)}' section of {args.out}")


if __name__ == "__main__":
    main()
