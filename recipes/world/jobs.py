"""Resumable MD jobs for the stand-in world: run, record frames, checkpoint, resume.

A job is one ASE MD trajectory (:mod:`difftre_torch.sampling.ase_md`) with a world calculator:
equilibration, then one frame every ``stride`` steps. Everything the job has recorded and the
integrator's exact state go into one checkpoint file, written atomically every
``checkpoint_every`` steps, so a killed job continues where it stopped and produces the same
frames it would have produced uninterrupted. A finished job writes ``frames.extxyz`` (with
energy, forces, stress; and for reality the teacher's labels as ``teacher_*`` arrays) and
``done.json``.

Units: Å, eV, eV/Å, stress eV/Å³ (ASE sign), fs, K.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from difftre_torch.checkpoint import atomic_torch_save, atomic_write_json, load_checkpoint
from difftre_torch.sampling.ase_md import (
    blow_up_reason,
    build_integrator,
    initialise_velocities,
    integrator_state,
    restore_integrator_state,
)
from difftre_torch.sampling.base import SamplerConfig, StatePoint
from recipes.world import calculators


@dataclass
class MDJob:
    """One world trajectory. ``md``: the integrator settings and blow-up limits (time step,
    friction, barostat time; its round settings are not used: the job's own
    ``equilibration_steps``, ``frames`` and ``stride`` are). ``state``: temperature, and pressure
    for NPT. ``labels``: store energy/forces/stress per frame (else geometry)."""

    name: str
    calculator: str
    md: SamplerConfig
    state: StatePoint
    equilibration_steps: int
    frames: int
    stride: int
    seed: int
    labels: bool = True
    checkpoint_every: int = 200
    meta: dict = field(default_factory=dict)


def recorded_state(job: dict) -> dict:
    """Ensemble ("nvt"/"npt"), temperature_K and pressure_GPa (None for NVT) of a job as its
    done.json records it: ``job["state"]``, or ``job["md"]`` in files written before the MD
    settings and the state point were split."""
    if "state" in job:
        state = job["state"]
        pressure = state.get("pressure_GPa")
        return {"ensemble": "nvt" if pressure is None else "npt", "temperature_K": state.get("temperature_K"),
                "pressure_GPa": pressure}
    md = job.get("md", {})
    return {"ensemble": md.get("ensemble"), "temperature_K": md.get("temperature_K"),
            "pressure_GPa": md.get("pressure_GPa") if md.get("ensemble") == "npt" else None}


def _teacher_component(calc):
    """For reality (a SumCalculator) the teacher's own results, already computed; else None."""
    mixer = getattr(calc, "mixer", None)
    return mixer.calcs[0].results if mixer is not None else None


def _record(atoms: Atoms, labels: bool) -> dict:
    frame = {
        "positions": atoms.get_positions().astype(np.float64),
        "cell": atoms.cell.array.copy(),
        "temperature_K": float(atoms.get_temperature()),
    }
    if labels:
        frame["energy"] = float(atoms.get_potential_energy())
        frame["forces"] = atoms.get_forces(apply_constraint=False).astype(np.float64)
        frame["stress"] = atoms.get_stress(voigt=True).astype(np.float64)
        teacher = _teacher_component(atoms.calc)
        if teacher is not None:
            frame["teacher_energy"] = float(teacher["energy"])
            frame["teacher_forces"] = np.asarray(teacher["forces"], dtype=np.float64)
            frame["teacher_stress"] = np.asarray(teacher["stress"], dtype=np.float64)
    return frame


def frames_to_atoms(structure: Atoms, frames: list[dict], info: dict | None = None) -> list[Atoms]:
    """Recorded frames as ASE Atoms with single-point results (energy, forces, stress)."""
    out = []
    for k, frame in enumerate(frames):
        atoms = Atoms(structure.numbers, positions=frame["positions"], cell=frame["cell"], pbc=True)
        atoms.info.update(info or {})
        atoms.info["frame"] = k
        atoms.info["temperature_K"] = frame["temperature_K"]
        if "energy" in frame:
            atoms.calc = SinglePointCalculator(
                atoms, energy=frame["energy"], forces=frame["forces"], stress=frame["stress"]
            )
        if "teacher_energy" in frame:
            atoms.info["teacher_energy"] = frame["teacher_energy"]
            atoms.info["teacher_stress"] = frame["teacher_stress"]
            atoms.arrays["teacher_forces"] = frame["teacher_forces"]
        out.append(atoms)
    return out


def run_job(job: MDJob, structure: Atoms, out_dir: str | Path, device: str | None = None) -> Path:
    """Run (or resume, or skip if finished) ``job`` from ``structure``; returns its directory."""
    out = Path(out_dir) / job.name
    out.mkdir(parents=True, exist_ok=True)
    if (out / "done.json").exists():
        return out
    ckpt_path = out / "checkpoint.pt"
    atoms = structure.copy()
    atoms.calc = calculators.make(job.calculator, device)
    rng = np.random.default_rng(job.seed)
    initialise_velocities(atoms, job.state.temperature_K, rng)
    dyn = build_integrator(atoms, job.md, job.state, rng)
    frames: list[dict] = []
    discarded = 0
    wall = 0.0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        restore_integrator_state(dyn, ckpt["state"])
        frames, discarded, wall = ckpt["frames"], ckpt["discarded"], ckpt["wall_s"]
    reference_volume = structure.get_volume()
    total = job.equilibration_steps + job.frames * job.stride
    last_good = integrator_state(dyn)
    t0 = time.perf_counter() - wall

    def save() -> None:
        atomic_torch_save(
            {"job": asdict(job), "state": integrator_state(dyn), "frames": frames,
             "discarded": discarded, "wall_s": time.perf_counter() - t0},
            ckpt_path,
        )

    while dyn.nsteps < total:
        dyn.run(1)
        step = dyn.nsteps
        if step % 10 == 0 or step == total:
            reason = blow_up_reason(atoms, job.md, reference_volume)
            if reason is not None:
                # Discard frames recorded since the last good state and restart from it with
                # fresh noise (same seed stream advanced), so the job still finishes.
                print(f"[{job.name}] step {step}: {reason}; restarting from step "
                      f"{last_good['nsteps']}", flush=True)
                keep = max(0, (last_good["nsteps"] - job.equilibration_steps) // job.stride)
                discarded += len(frames) - keep
                del frames[keep:]
                rng_state = dyn.rng.bit_generator.state
                restore_integrator_state(dyn, last_good)
                dyn.rng.bit_generator.state = rng_state
                continue
        if step > job.equilibration_steps and (step - job.equilibration_steps) % job.stride == 0:
            frames.append(_record(atoms, job.labels))
        if step % job.checkpoint_every == 0:
            last_good = integrator_state(dyn)
            save()
    save()
    info = {"job": job.name, "calculator": job.calculator, **job.meta,
            "temperature_target_K": job.state.temperature_K, "ensemble": job.state.ensemble}
    write(out / "frames.extxyz", frames_to_atoms(structure, frames, info))
    atomic_write_json(out / "done.json", {
        "job": json.loads(json.dumps(asdict(job))),
        "n_frames": len(frames),
        "discarded_frames": discarded,
        "wall_s": round(time.perf_counter() - t0, 1),
        "steps": int(dyn.nsteps),
    })
    return out
