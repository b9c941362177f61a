"""The wheel: only ``difftre_torch`` installed, the default job's data shipped, the ``difftre`` script.

The wheel is built from a copy of the repository's files (tracked and untracked-but-not-ignored),
not in place: an in-tree build leaves ``build/lib`` behind, and setuptools copies everything in
it into later wheels, so a stale ``build/lib/recipes`` would hide or fake a result here.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import difftre_torch

ROOT = Path(__file__).resolve().parents[1]
LJ_ARGON_FILES = ("lj_argon.yaml", "lj_argon_rdf.csv", "lj_argon_start.extxyz", "PROVENANCE.md")
NOT_SHIPPED = (".git", ".venv", "venv", "build", "dist", "outputs", "runs", "__pycache__")


def _copy_source_tree(dest: Path) -> None:
    """Copy the files git would see (or, outside a checkout, the tree minus build products)."""
    try:
        listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                                 check=True, capture_output=True, text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*NOT_SHIPPED, "*.egg-info"))
        return
    for name in listing:
        source = ROOT / name
        if source.is_file():  # skips files deleted in the work tree but still in the index
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    out = tmp_path_factory.mktemp("wheel")
    _copy_source_tree(source)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--disable-pip-version-check", "-w", str(out), str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("difftre_torch-*.whl")
    return built


def test_wheel_installs_only_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "recipes" not in top_level and "benchmarks" not in top_level, sorted(top_level)
    assert top_level == {"difftre_torch", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert "difftre_torch/cli.py" in names and "difftre_torch/__main__.py" in names


def test_wheel_has_every_module(wheel):
    """packages = find: skips folders without ``__init__.py``; their modules would be lost silently."""
    names = set(zipfile.ZipFile(wheel).namelist())
    package = Path(difftre_torch.__file__).resolve().parent
    modules = {f"difftre_torch/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
               if "__pycache__" not in p.parts}
    missing = sorted(modules - names)
    assert not missing, f"not in the wheel (a folder without __init__.py?): {missing}"


def test_wheel_ships_the_default_job(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in LJ_ARGON_FILES if f"difftre_torch/data/lj_argon/{f}" not in names]
    assert not missing, missing
    from difftre_torch.cli import shipped_examples  # the reader finds it inside the package
    DEFAULT_CONFIG = shipped_examples()["lj_argon"]
    assert DEFAULT_CONFIG.is_file() and DEFAULT_CONFIG.parent == Path(difftre_torch.__file__).resolve().parent / "data" / "lj_argon"


def test_wheel_entry_point_and_version(wheel):
    archive = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    entry_points = configparser.ConfigParser()
    entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
    assert entry_points["console_scripts"]["difftre"].strip() == "difftre_torch.cli:main"
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    version = next(line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Version:"))
    assert version == difftre_torch.__version__ == wheel.name.split("-")[1]
