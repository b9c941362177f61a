"""The cells and models of the sampling benchmark: fcc Ar with LennardJones, fcc Cu with a small
NequIP model trained here on EMT labels, that model compiled by ``nequip-compile``, and g-C3N4
with the stand-in world's shipped DeePMD-kit model (``data/world/deepmd_model/model.pth``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import nequip_fallback


@dataclass
class System:
    """One benchmark cell: ASE atoms, the state point and the MD settings that keep it stable."""

    name: str
    atoms: object
    temperature_K: float
    timestep_fs: float
    friction_per_fs: float
    min_distance_A: float


def lj_systems() -> list[System]:
    from ase.build import bulk

    return [System(f"fcc Ar {n}³ cells", bulk("Ar", "fcc", a=5.26, cubic=True).repeat(n), 80.0, 5.0, 0.02, 1.5)
            for n in (3, 5)]


def nequip_systems() -> list[System]:
    from ase.build import bulk

    return [System(f"fcc Cu {n}³ cells", bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n), 300.0, 2.0, 0.02, 1.5)
            for n in (3, 5)]


NEQUIP_DESCRIPTION = ("NequIP (nequip-train, 3 epochs on 16 EMT-labelled rattled 32-atom fcc Cu cells; float32, "
                      "l_max 1, 16 features, 2 layers, r_max 4 Å)")


def training_frames(n_frames: int = 16, seed: int = 11) -> list:
    """EMT-labelled fcc Cu, 2×2×2 conventional cells (32 atoms): lattice constant 3.61 Å scaled
    by ±2 %, positions rattled by 0.1 Å (EMT is at home in fcc Cu: its MD is stable)."""
    from ase.build import bulk

    from difftre_torch.testing import emt_labelled

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.61 * (0.98 + 0.04 * k / max(1, n_frames - 1)), cubic=True).repeat(2)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        frames.append(emt_labelled(atoms))
    return frames


def train_nequip(workdir: Path) -> Path:
    """nequip-train (:func:`difftre_torch.testing.train_tiny_nequip`: 3 epochs, 16 features) on
    :func:`training_frames` in ``workdir``; returns ``last.ckpt`` (RuntimeError on failure)."""
    from difftre_torch.testing import train_tiny_nequip

    return train_tiny_nequip(workdir, training_frames(), type_names=("Cu",), seed=11, max_epochs=3,
                             num_features=16, radial_mlp_width=16, num_bessels=8, train_batch=4,
                             val_batch=8)


DEEPMD_MODEL = Path(__file__).resolve().parents[2] / "data" / "world" / "deepmd_model" / "model.pth"


def deepmd_systems() -> list[System]:
    """The world's teacher-relaxed g-C3N4 unit (28 atoms) as 2×2×1 and 3×3×1 cells."""
    from ase.io import read

    unit = read(Path(__file__).resolve().parents[2] / "data" / "world" / "structures" / "teacher_unit.extxyz")
    return [System(f"g-C3N4 {n}×{n}×1", unit.repeat((n, n, 1)), 300.0, 1.0, 0.01, 0.8) for n in (2, 3)]


def load_model(model: str, workdir: Path, device: torch.device, required: bool, notes: list[str]):
    """(potential, systems, description) for ``model``; None if nequip does not train here and it
    was not asked for by name (then a note says so)."""
    if model == "lj":
        from difftre_torch.potentials import LennardJones

        return (LennardJones(3.405, 0.0104, 8.5).to(device), lj_systems(),
                "LennardJones (σ 3.405 Å, ε 0.0104 eV, r_c 8.5 Å, float64), fcc argon at 80 K, Δt 5 fs")
    if model == "deepmd":
        from difftre_torch.potentials.deepmd import load_deepmd

        potential = load_deepmd(DEEPMD_MODEL, device=device)
        return (potential, deepmd_systems(),
                "DeePMD-kit se_e2_a (the world's shipped model: dp --pt train, float64, r_c 6 Å; its own forces "
                "and virial), g-C3N4 at 300 K, Δt 1 fs")
    try:
        t0 = time.perf_counter()
        checkpoint = train_nequip(workdir)
        trained_s = time.perf_counter() - t0
        from difftre_torch.potentials.nequip_files import load_nequip

        potential = load_nequip(checkpoint, device=device)
    except Exception as err:  # noqa: BLE001 - any failure means: skip it (or stop)
        if required:
            raise
        nequip_fallback(err, "skipping it", "so only lj was measured.", notes)
        return None
    print(f"trained the NequIP model in {trained_s:.0f} s", flush=True)
    return potential, nequip_systems(), f"{NEQUIP_DESCRIPTION}, trained in {trained_s:.0f} s; fcc Cu at 300 K, Δt 2 fs"


def compile_model(potential, system: System, device: torch.device, workdir: Path):
    """(compiled potential, seconds): ``nequip-compile --mode aotinductor --target batch`` of the
    eager model's checkpoint, loaded and checked against the eager model near ``system``."""
    from difftre_torch.potentials.compiled import check_frames, check_same_energies, compile_nequip
    from difftre_torch.potentials.nequip_files import load_nequip

    start = time.perf_counter()
    path = compile_nequip(potential.source.path, workdir / "model.nequip.pt2", device=device)
    compile_s = time.perf_counter() - start
    compiled = load_nequip(path, device=device)
    agreement = check_same_energies(potential, compiled, *check_frames(system.atoms))
    print(f"compiled the NequIP model in {compile_s:.0f} s; max |ΔU| {agreement.max_abs_energy_eV:.2g} eV, "
          f"max |ΔF| {agreement.max_abs_force_eV_A:.2g} eV/Å vs eager", flush=True)
    return compiled, compile_s
