"""What a result was made with: package versions and the machine, for provenance records."""

from __future__ import annotations

import os
import platform
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
