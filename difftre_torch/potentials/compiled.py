"""Sampling with a compiled NequIP model (AOTInductor ``.nequip.pt2``) while gradients use the eager one.

DiffTRe needs two things from the model: trajectories (forces, many times per snapshot) and
U_θ(S_i), ∂U_θ(S_i)/∂θ on the stored snapshots. Only the second needs θ as parameters; the
first can run on a faster compiled copy, *provided the copy is the same function as the eager
model at the θ being sampled*. This module makes that copy and guards it:

* :func:`compile_nequip`: nequip's own ``nequip-compile INPUT OUTPUT --mode aotinductor
  --device DEVICE --target batch`` (a subprocess: nequip-compile sets process-wide state) on a
  ``.ckpt`` or ``.nequip.zip``, written atomically. ``--target batch`` is nequip's batched
  target (inputs with ``batch``/``num_atoms``, outputs atomic_energy, total_energy, forces,
  stress; any number of frames), the one the batched sampler needs; ``ase`` and
  ``pair_nequip`` are single-frame targets.
* :func:`check_same_energies`: energies (and forces) of eager and compiled models on the same
  frames, within the float tolerance of the lower of the two dtypes; a ``ValueError`` naming
  both files, the largest absolute and relative differences and the tolerance otherwise.
* :class:`CompiledSampling`: what the trainer samples with (``DiffTReTrainer(...,
  sampling_potential=CompiledSampling(...))``). Its :meth:`~CompiledSampling.for_sampling`
  returns the compiled model only while the eager model's parameters and buffers are
  bit-identical to those the compiled model was checked against; otherwise it re-exports
  (``recompile=True``: ``save_nequip`` → ``nequip-compile`` → load → check) or falls back to the
  eager model (default). The energy check runs every time a compiled model is (re)loaded.

Semantics, and why. A ``.nequip.pt2`` has no parameters: it is frozen at the θ̃ it was exported
from. After the first optimiser step it is a different potential from the eager model, and
sampling with it would give snapshots from the wrong ensemble: the stored U_θ̃ (computed by
the eager model, :func:`difftre_torch.objective.fill_store`) would then not be the energies
the snapshots were drawn with, and the reweighting w_i ∝ exp(−β(U_θ − U_θ̃)) would be biased
with nothing to show it. So the compiled model is used exactly while θ is unchanged — the
first sample of a fresh run, and any resample before the first step — and, with
``recompile=True``, re-exported at each later resample. Re-exporting costs one
``nequip-compile`` (measured below) plus a load per resample, so it pays only when one
sampling round takes longer than that; the default is the safe fallback. Whichever model
samples, the trainer's stores hold U_θ̃ from the *eager* model at the sampled θ, so
reweighting stays exact; a compiled model that differs from the eager one within the check's
tolerance changes only which (equally valid) trajectory is drawn.

Measured (nequip 0.19.1, torch 2.13.0+cpu, 2 CPU cores shared with two other busy processes;
the tiny test model of :func:`difftre_torch.testing.train_tiny_nequip`, 8 atoms):
``nequip-compile --mode aotinductor --target batch --device cpu`` 38 s with an empty
Inductor cache, 32 s with a warm one, 46–47 s under heavier load; loading the ``.nequip.pt2``
1.5–4 s. Eager vs compiled on
C4N4 frames: max |ΔE| 4e-9 eV (|E| ≈ 13 eV), max |ΔF| 1.4e-9 eV/Å; on 216 atoms (|E| ≈ 348 eV)
max |ΔE| 1.7e-8 eV. Energy + forces of 2 × 216 atoms: compiled 6.1 ms, eager 12.2 ms. A re-export
(``save_nequip`` + ``nequip-compile``) inside a trainer run: 32 s. ``python -m benchmarks.sampling
--model nequip --replicas 8 --compiled`` (16-feature Cu model, 1 torch thread): compile 31 s,
max |ΔU| 4.7e-7 eV on 108 atoms; BatchedSampler R = 8 with the compiled model 2.6× (108 atoms)
and 2.4× (500 atoms) the replica-steps/s of the eager model.

Units: Å, eV, eV/Å; cells as rows.
"""

from __future__ import annotations

import os
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difftre_torch.potentials.base import Potential, evaluate

COMPILE_TARGETS = ("batch", "ase", "pair_nequip")  # nequip's --target choices (scripts/_compile_utils.py)


def _nequip_compile_script() -> str:
    """Path of ``nequip-compile`` next to this interpreter, else on PATH."""
    from difftre_torch.environment import console_script

    return console_script("nequip-compile", "is nequip installed?")


class NequipCompileError(RuntimeError):
    """``nequip-compile`` failed; ``stderr`` holds what it wrote there."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


def compile_command(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                    device: str | torch.device = "cpu", target: str = "batch",
                    extra_args: tuple[str, ...] = (), script: str = "nequip-compile") -> list[str]:
    """The ``nequip-compile`` command line of :func:`compile_nequip` (``script``: the program)."""
    return [script, str(input_path), str(output_path), "--mode", "aotinductor", "--device", str(device),
            "--target", target, *extra_args]


def compile_nequip(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                   device: str | torch.device = "cpu", target: str = "batch",
                   extra_args: tuple[str, ...] = ()) -> Path:
    """``nequip-compile INPUT OUTPUT --mode aotinductor --device DEVICE --target TARGET``.

    input_path: a ``.ckpt`` or ``.nequip.zip`` (what :func:`~difftre_torch.potentials.nequip_files.save_nequip`
    writes is accepted). output_path: must end in ``.nequip.pt2`` (nequip's rule); written
    atomically (compiled to a temporary name in the same folder, then renamed). device: where
    the compiled model will run (an AOTI model runs only there). target: nequip's compile target;
    ``batch`` for the samplers here, ``pair_nequip`` for LAMMPS. extra_args: more nequip-compile
    options (e.g. ``("--modifiers", "enable_CuEquivariance")``). Returns the output path;
    :class:`NequipCompileError` (a RuntimeError) with nequip-compile's output on failure.
    """
    input_path, output_path = Path(input_path).resolve(), Path(output_path).resolve()
    if not output_path.name.endswith(".nequip.pt2"):
        raise ValueError(f"compile_nequip: the output must end in .nequip.pt2 (nequip-compile's rule), "
                         f"got {output_path.name}")
    if target not in COMPILE_TARGETS:
        raise ValueError(f"compile_nequip: target must be one of {COMPILE_TARGETS}, got {target!r}")
    if not input_path.exists():
        raise FileNotFoundError(f"compile_nequip: {input_path} does not exist")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    stem = output_path.name[: -len(".nequip.pt2")]
    partial = output_path.with_name(f".{stem}.partial-{os.getpid()}.nequip.pt2")
    command = compile_command(input_path, partial, device=device, target=target, extra_args=extra_args,
                              script=_nequip_compile_script())
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0 or not partial.exists():
            raise NequipCompileError(f"compile_nequip: nequip-compile failed for {input_path} "
                                     f"(exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}",
                                     result.stderr)
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)
    return output_path


# ---------------------------------------------------------------------------------------------
# the load-time check


@dataclass
class EnergyAgreement:
    """How closely two models agreed on B check frames of N atoms.

    max_abs_energy_eV, max_rel_energy: max over frames of |U_c − U_e| and |U_c − U_e| / |U_e|.
    max_abs_force_eV_A: max over frames, atoms, components of |F_c − F_e|.
    rtol, atol_eV: the tolerance |ΔU| ≤ atol + rtol |U_e| (forces: |ΔF| ≤ atol + rtol max|F_e|).
    dtype: the dtype the tolerance was taken from. frames: B.
    """

    max_abs_energy_eV: float
    max_rel_energy: float
    max_abs_force_eV_A: float
    rtol: float
    atol_eV: float
    dtype: str
    frames: int


def _compute_dtype(potential: Potential) -> torch.dtype:
    """The dtype a potential computes in: its first floating parameter's, else the model_dtype
    recorded in a nequip source (an AOTInductor model has no parameters), else float64."""
    if isinstance(potential, torch.nn.Module):
        for p in potential.parameters():
            if p.is_floating_point():
                return p.dtype
    name = getattr(getattr(potential, "source", None), "model_dtype", "") or "float64"
    return {"float32": torch.float32, "float64": torch.float64}.get(name, torch.float64)


# torch.testing.assert_close's default (rtol, atol) per dtype, the usual "same to float tolerance"
_ASSERT_CLOSE_TOLERANCES = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7)}


def least_precise(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype with the largest machine epsilon."""
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def default_tolerance(*dtypes: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) of ``torch.testing.assert_close`` for the least precise of ``dtypes``
    (float32: 1.3e-6, 1e-5; float64: 1e-7, 1e-7), atol read as eV (or eV/Å for forces)."""
    return _ASSERT_CLOSE_TOLERANCES[least_precise(*dtypes)]


def _name(potential: Potential, fallback: str) -> str:
    source = getattr(potential, "source", None)
    return str(getattr(source, "path", None) or fallback)


def check_same_energies(eager: Potential, compiled: Potential, positions: torch.Tensor,
                        cells: torch.Tensor, numbers: torch.Tensor, *, rtol: float | None = None,
                        atol_eV: float | None = None, forces: bool = True) -> EnergyAgreement:
    """Check that ``compiled`` gives the energies (and forces) of ``eager`` on the same frames.

    positions [B, N, 3] Å, cells [B, 3, 3] Å (rows), numbers [N]; evaluated as float64 (nequip's
    data dtype) on each model's device. Passes when, for every frame b,
    |U_c(b) − U_e(b)| ≤ atol + rtol |U_e(b)| and (``forces``) every |F_c − F_e| ≤ atol + rtol
    max|F_e|. rtol, atol_eV: default :func:`default_tolerance` of the two models' compute dtypes
    (a float32 model against a float64 rebuild of it is held to float32 tolerance). Returns the
    :class:`EnergyAgreement`; raises ValueError naming both models' files, the largest
    differences and the tolerance when they disagree.
    """
    from difftre_torch.potentials.ase_calculator import potential_device_dtype

    dtypes = (_compute_dtype(eager), _compute_dtype(compiled))
    default = default_tolerance(*dtypes)
    rtol = default[0] if rtol is None else float(rtol)
    atol_eV = default[1] if atol_eV is None else float(atol_eV)
    results = []
    for model in (eager, compiled):
        device, _ = potential_device_dtype(model)
        ev = evaluate(model, positions.to(device, torch.float64), cells.to(device, torch.float64),
                      numbers.to(device), forces=forces)
        results.append((ev.energy.detach().cpu().double(),
                        None if ev.forces is None else ev.forces.detach().cpu().double()))
    (e_eager, f_eager), (e_comp, f_comp) = results
    d_energy = (e_comp - e_eager).abs()
    agreement = EnergyAgreement(
        max_abs_energy_eV=float(d_energy.max()),
        max_rel_energy=float((d_energy / e_eager.abs().clamp_min(torch.finfo(torch.float64).tiny)).max()),
        max_abs_force_eV_A=float((f_comp - f_eager).abs().max()) if forces else float("nan"),
        rtol=rtol, atol_eV=atol_eV, dtype=str(least_precise(*dtypes)).replace("torch.", ""),
        frames=int(positions.shape[0]))
    energy_ok = bool((d_energy <= atol_eV + rtol * e_eager.abs()).all())
    force_ok = not forces or bool(((f_comp - f_eager).abs() <= atol_eV + rtol * f_eager.abs().max()).all())
    if not (energy_ok and force_ok):
        raise ValueError(
            f"the compiled model {_name(compiled, '<compiled model in memory>')} does not give the "
            f"energies of the eager model {_name(eager, '<eager model in memory>')} on "
            f"{agreement.frames} check frame(s): max |ΔU| = {agreement.max_abs_energy_eV:.3g} eV, "
            f"max |ΔU|/|U| = {agreement.max_rel_energy:.3g}"
            + (f", max |ΔF| = {agreement.max_abs_force_eV_A:.3g} eV/Å" if forces else "")
            + f"; tolerance |ΔU| ≤ {atol_eV:.3g} eV + {rtol:.3g}·|U| ({agreement.dtype}). Was it "
            f"compiled from this model, at these parameters? (A .nequip.pt2 is frozen at the "
            f"parameters it was exported with.)")
    return agreement


def check_frames(atoms, n_frames: int = 4, *, rattle_A: float = 0.05, strain: float = 0.01,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames for :func:`check_same_energies` near a structure: ``atoms`` rattled by Gaussian
    displacements of ``rattle_A`` Å (per component) under a random symmetric strain of at most
    ``strain`` per component. Returns positions [n, N, 3] Å, cells [n, 3, 3] Å (rows), numbers
    [N] (float64, int64)."""
    rng = np.random.default_rng(seed)
    positions, cells = [], []
    for _ in range(n_frames):
        eps = rng.uniform(-strain, strain, (3, 3))
        deform = np.eye(3) + (eps + eps.T) / 2
        positions.append((atoms.positions + rng.normal(scale=rattle_A, size=atoms.positions.shape)) @ deform)
        cells.append(atoms.cell.array @ deform)
    return (torch.tensor(np.stack(positions)), torch.tensor(np.stack(cells)),
            torch.as_tensor(atoms.numbers, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# what the trainer samples with


def _parameter_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_parameters(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return state.keys() == snapshot.keys() and all(torch.equal(state[k], v) for k, v in snapshot.items())


class CompiledSampling:
    """A compiled copy of an eager :class:`~difftre_torch.potentials.nequip.NequIPPotential` for
    sampling, valid only at the parameters it was checked against (see the module docstring).

    eager: the trainable model (the trainer's ``potential``). compiled: a ``.nequip.pt2`` path
    (loaded on the eager model's device) or an already loaded compiled potential. frames:
    (positions [B,N,3] Å, cells [B,3,3] Å, numbers [N]) for :func:`check_same_energies`, e.g.
    :func:`check_frames` of the simulated system. recompile: re-export with
    :func:`compile_nequip` when θ has changed (eager model from a ``.ckpt`` or ``.nequip.zip``
    only; nequip-compile takes its example frames from the checkpoint's training data, which
    must still be where the checkpoint says); otherwise sample with the eager model from then
    on. workdir: where re-exports go
    (default: next to ``compiled``), each replacing the previous one. rtol, atol_eV: the check's
    tolerance (default from the dtypes). extra_args: more nequip-compile options.

    ``history`` lists every (re)load: file, seconds to compile and load, the
    :class:`EnergyAgreement`. ``description`` says what the last :meth:`for_sampling` returned.
    """

    def __init__(self, eager, compiled, frames: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *,
                 recompile: bool = False, workdir: str | os.PathLike | None = None,
                 rtol: float | None = None, atol_eV: float | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.eager = eager
        self.frames = frames
        self.recompile = bool(recompile)
        self.tolerance = {"rtol": rtol, "atol_eV": atol_eV}
        self.extra_args = tuple(extra_args)
        source = getattr(eager, "source", None)
        if self.recompile and getattr(source, "format", None) not in ("checkpoint", "package"):
            raise ValueError("CompiledSampling: recompile=True needs an eager model loaded from a .ckpt or "
                             ".nequip.zip (nequip-compile's inputs)")
        default_dir = Path(compiled).resolve().parent if isinstance(compiled, (str, os.PathLike)) else Path.cwd()
        self.workdir = Path(workdir) if workdir is not None else default_dir
        self.history: list[dict] = []
        self.description = "not used yet"
        self._exports = 0
        self._written: Path | None = None
        self._load(compiled, compile_s=0.0)

    @property
    def device(self) -> torch.device:
        from difftre_torch.potentials.ase_calculator import potential_device_dtype

        return potential_device_dtype(self.eager)[0]

    def _load(self, compiled, compile_s: float) -> None:
        """Load (if a path) and check ``compiled`` against the eager model at the current θ."""
        t0 = time.perf_counter()
        if isinstance(compiled, (str, os.PathLike)):
            from difftre_torch.potentials.nequip_files import load_nequip

            compiled = load_nequip(compiled, device=self.device)
        if not getattr(compiled, "inference_only", False):
            raise ValueError("CompiledSampling: expected a compiled (.nequip.pt2) model")
        agreement = check_same_energies(self.eager, compiled, *self.frames, **self.tolerance)
        self.compiled = compiled
        self._theta = _parameter_snapshot(self.eager)
        self.history.append({"path": _name(compiled, "<in memory>"), "compile_s": compile_s,
                             "load_and_check_s": time.perf_counter() - t0, "agreement": agreement})

    def _export(self) -> None:
        """save_nequip the eager model at the current θ, nequip-compile it, load and check it."""
        from difftre_torch.potentials.nequip_files import save_nequip

        self._exports += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        stem = self.workdir / f"sampling_{self._exports}"
        t0 = time.perf_counter()
        ckpt = save_nequip(self.eager, stem.with_suffix(".ckpt"))
        path = compile_nequip(ckpt, stem.with_suffix(".nequip.pt2"), device=self.device, extra_args=self.extra_args)
        compile_s = time.perf_counter() - t0
        self._load(path, compile_s)
        previous, self._written = self._written, path
        if previous is not None:  # keep only the current export (and its .ckpt)
            previous.unlink(missing_ok=True)
            previous.with_name(previous.name[: -len(".nequip.pt2")] + ".ckpt").unlink(missing_ok=True)

    def is_current(self) -> bool:
        """True when the eager model's parameters and buffers equal those the compiled model was
        checked against (bit for bit)."""
        return _same_parameters(self.eager, self._theta)

    def for_sampling(self) -> Potential:
        """The potential to sample with at the eager model's current θ: the compiled model if it
        is current (after re-exporting it, with ``recompile``), else the eager model."""
        if not self.is_current():
            if not self.recompile:
                if not self.description.startswith("eager"):
                    warnings.warn(f"CompiledSampling: the parameters changed since {self.history[-1]['path']} "
                                  f"was checked; sampling with the eager model from now on "
                                  f"(recompile=True re-exports instead)", stacklevel=2)
                self.description = "eager (parameters changed since the compiled model was checked)"
                return self.eager
            self._export()
        self.description = f"compiled {self.history[-1]['path']}"
        return self.compiled
