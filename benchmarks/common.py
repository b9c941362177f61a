"""What the benchmark scripts share: device sync and timed wrappers, the machine and its load,
the header lines of a RESULTS.md section, and writing one section of RESULTS.md.

The machine facts themselves (CPU model, usable and busy cores, package versions) come from
:mod:`difftre_torch.environment`; this module only words them for a benchmark header.
"""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from difftre_torch.environment import busy_cores, cpu_model, package_versions, usable_cores

TITLE = "# difftre_torch benchmarks"
"""First line of a RESULTS.md that :func:`write_section` creates."""

# ---------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, seconds: dict, key: str):
    """``function`` wrapped so that each call's wall time (device synchronised before and after)
    adds to ``seconds[key]``; for timing a module function by replacing the module attribute
    (the package's files are not edited). Reset ``seconds`` in place, not by rebinding it."""

    def timed_call(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            sync(device)
            seconds[key] += time.perf_counter() - start

    return timed_call


# ---------------------------------------------------------------------------------------------
# the machine and its load


def machine_description(device: torch.device, threads: int) -> str:
    """"<CPU model>, <n> usable cores, torch threads <t>[, GPU <name>]" for the header."""
    text = f"{cpu_model()}, {usable_cores()} usable cores, torch threads {threads}"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def versions(packages: tuple[str, ...] = ("nequip", "e3nn", "vesin-torch")) -> str:
    """"torch X, nequip Y, …" for the benchmark header (missing packages say so)."""
    found = package_versions(packages)
    return ", ".join([f"torch {torch.__version__}"] + [
        f"{name} {v}" if v != "not installed" else f"{name} not installed" for name, v in found.items()
        if name != "python"])


def measure_load(threads: int | None) -> tuple[float, int, int]:
    """(busy, usable, threads): the cores other processes keep busy (over 1 s, now), the usable
    cores, and ``threads`` or, if None, torch's default less the busy cores (at least 1)."""
    busy, usable = busy_cores(), usable_cores()
    if threads is None:
        threads = max(1, min(torch.get_num_threads(), usable - round(busy)))
    return busy, usable, threads


def load_note(busy: float, usable: int, threads: int) -> str:
    """The start of the notes line: the other load just before the run and the torch threads
    (without a final full stop: each script ends the sentence its own way)."""
    return (f"Just before the run other processes kept about {busy:.1f} of the {usable} usable "
            f"cores busy (/proc/stat over 1 s); torch threads {threads}")


def nequip_fallback(err: Exception, instead: str, note: str, notes: list[str]) -> None:
    """Say that nequip did not train (``err``): on stdout, ending with ``instead``, and in
    ``notes``, ending with ``note``."""
    print(f"nequip did not train ({type(err).__name__}: {str(err)[:300]}); {instead}", flush=True)
    notes.append(f"nequip did not train here ({type(err).__name__}), {note}")


# ---------------------------------------------------------------------------------------------
# RESULTS.md


def command_line(module: str) -> str:
    """The command that ran this process, as ``python -m <module> <its arguments>``."""
    return f"python -m {module}" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")


def now_text() -> str:
    """Local date and time for the header, e.g. ``2025-01-31 14:05 CET``."""
    return datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')


def write_section(path: Path, text: str, section: str) -> None:
    """Replace the ``section`` (e.g. ``## update``) of ``path`` (up to the next ``## `` heading), or append
    it; other sections stay as they are. Creates the file with a title line if missing."""
    from difftre_torch.checkpoint import atomic_write_text

    lines = path.read_text().splitlines() if path.exists() else [TITLE]
    start = next((k for k, line in enumerate(lines) if line.strip() == section), None)
    new = text.rstrip("\n").splitlines()
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += [""] + new
    else:
        end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")),
                   len(lines))
        lines = lines[:start] + new + ([""] if end < len(lines) else []) + lines[end:]
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    os.chmod(path, mode)  # the atomic write goes through a private (0600) temporary file


def device_title(section: str, device) -> str:
    """A RESULTS.md heading per device: ``section`` for CPU runs, ``section on CUDA`` for GPU
    runs, so that one file keeps both."""
    return section if device.type == "cpu" else f"{section} on {device.type.upper()}"
