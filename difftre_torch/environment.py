"""What a result was made with: package versions and the machine (and its load), for provenance
records."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """{"python": X, name: installed version or "not installed"} for each distribution name."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    """{"cpu": model, "cores": logical CPUs, "platform": OS string}."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}


def usable_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_cores(seconds: float = 1.0) -> float:
    """Usable cores kept busy by other processes: the non-idle share of each usable CPU's
    /proc/stat line over ``seconds`` while this process sleeps, summed (0.0 without /proc)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def sample() -> dict[str, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as handle:
            for line in handle:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if usable is not None and int(name[3:]) not in usable:
                    continue
                values = [int(v) for v in fields[:8]]
                out[name] = (sum(values), values[3] + values[4])  # total, idle + iowait
        return out

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError):
        return 0.0
    busy = 0.0
    for name, (total, idle) in after.items():
        total0, idle0 = before.get(name, (total, idle))
        if total > total0:
            busy += 1.0 - (idle - idle0) / (total - total0)
    return busy


def console_script(name: str, install: str) -> str:
    """Path of the console script ``name`` (nequip-train, dp, ...) next to this interpreter, else
    on PATH; FileNotFoundError saying ``install`` (how to get it) where there is none."""
    import shutil
    import sys

    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to this interpreter or on PATH: {install}")
    return found
