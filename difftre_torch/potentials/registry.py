"""Potential kinds a config can name (``potential: {kind: ..., ...}``), each with typed options.

A kind is one :class:`PotentialKind`: its options dataclass (every field with unit, default and
meaning in ``metadata["doc"]``; the config reference is generated from them) and a ``build``
function ``(options, resolve) -> nn.Module`` that returns a potential of the energy contract
(:mod:`difftre_torch.potentials.base`) with its parameters trainable. ``resolve`` turns a path of
the config into an absolute one. Adding a model family is one options class, one build function
and one :func:`register` call; nothing else changes.

``potential.correction`` (any kind): the learnable pair correction of
:mod:`difftre_torch.potentials.correction` added on top of the base (:func:`add_correction`).

A ``*.correction.pt`` file written by a refinement (a base plus its correction) loads through
the same kind as its base (:func:`load_model_file`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from ase.data import chemical_symbols


@dataclass(frozen=True)
class PotentialKind:
    """name; options: its dataclass; build(options, resolve) -> module; load_file(path, options)
    -> module: a model file of this kind written by a refinement (None: kinds without a file
    format of their own, whose refined state_dict loads into a fresh build)."""

    name: str
    options: type
    build: Callable
    doc: str = ""
    load_file: Callable | None = None


POTENTIALS: dict[str, PotentialKind] = {}


def register(name: str, options: type, doc: str = "", load_file: Callable | None = None):
    """Decorator: ``build(options, resolve)`` becomes the builder of kind ``name``."""
    def wrap(fn: Callable) -> Callable:
        POTENTIALS[name] = PotentialKind(name, options, fn, doc or (fn.__doc__ or "").strip().splitlines()[0],
                                         load_file)
        return fn
    return wrap


def resolve_device(device: str) -> str:
    """"auto" → "cuda" where torch sees a GPU, else "cpu"; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------- Lennard-Jones


@dataclass
class LennardJonesOptions:
    sigma_A: float = field(metadata={"doc": "σ of 4ε[(σ/r)¹² − (σ/r)⁶] (Å)"})
    epsilon_eV: float = field(metadata={"doc": "ε, the well depth (eV)"})
    cutoff_A: float | None = field(default=None, metadata={"doc": "cut-off radius (Å); null: 3σ"})

    def __post_init__(self) -> None:
        for name in ("sigma_A", "epsilon_eV", "cutoff_A"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a finite number > 0, got {value}")
        if self.cutoff_A is not None and self.cutoff_A <= self.sigma_A:
            raise ValueError(f"cutoff_A must exceed sigma_A, got {self.cutoff_A} <= {self.sigma_A}")


@register("lennard_jones", LennardJonesOptions)
def build_lennard_jones(options: LennardJonesOptions, resolve) -> torch.nn.Module:
    """A single-species Lennard-Jones pair potential (parameters ``sigma``, ``epsilon``)."""
    from difftre_torch.potentials.analytic import LennardJones

    return LennardJones(options.sigma_A, options.epsilon_eV, options.cutoff_A)


# ----------------------------------------------------------------------------- NequIP


@dataclass
class NequipOptions:
    path: str = field(metadata={"doc": "the model file: nequip-train .ckpt, .nequip.zip package, "
                                       ".nequip.pth (TorchScript) or a refined *.correction.pt"})
    dtype: Literal["float32", "float64"] | None = field(
        default=None, metadata={"doc": "compute dtype (null: as trained); float64 rebuilds the model"})
    device: str = field(default="auto", metadata={"doc": "cpu, cuda, cuda:N or auto (cuda where available)"})
    chemical_species_to_atom_type_map: dict[str, str] | None = field(
        default=None, metadata={"doc": "element → the model's type name, where they differ"})
    sampling_model: str | None = field(
        default=None, metadata={"doc": "a compiled .nequip.pt2 (nequip-compile --target batch) to sample with"})
    compile_for_sampling: bool = field(
        default=False, metadata={"doc": "run nequip-compile on `path` into <out>/compiled/ and sample with it"})
    recompile: bool = field(default=False, metadata={"doc": "re-export the compiled model after each update"})

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise ValueError(f"path: expected the model file, got {self.path!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device: expected cpu, cuda, cuda:N or auto, got {self.device!r}")
        for element in self.chemical_species_to_atom_type_map or {}:
            if element not in chemical_symbols[1:]:
                raise ValueError(f"chemical_species_to_atom_type_map: {element!r} is not an element symbol "
                                 "(H, He, …, as in the structure file)")
        if self.sampling_model is not None and self.compile_for_sampling:
            raise ValueError("give sampling_model or compile_for_sampling, not both")
        if self.recompile and self.sampling_model is None and not self.compile_for_sampling:
            raise ValueError("recompile needs sampling_model or compile_for_sampling")
        if self.sampling_model is not None and not self.sampling_model.endswith(".nequip.pt2"):
            raise ValueError(f"sampling_model: expected a .nequip.pt2 (nequip-compile --mode aotinductor "
                             f"--target batch), got {self.sampling_model}")


def load_model_file(path: Path, options: "NequipOptions") -> torch.nn.Module:
    """``path`` as a potential: a NequIP file, or a ``*.correction.pt`` (base + pair correction,
    the base read with the same options)."""
    from difftre_torch.potentials.nequip_files import load_nequip

    device, dtype = resolve_device(options.device), None if options.dtype is None else DTYPES[options.dtype]
    return _with_correction(path, lambda p: load_nequip(
        p, device=device, dtype=dtype, chemical_species_to_atom_type_map=options.chemical_species_to_atom_type_map))


def _with_correction(path: Path, base) -> torch.nn.Module:
    """``base(path)``, or for a ``*.correction.pt`` the corrected potential over ``base`` of the
    file it names."""
    from difftre_torch.potentials.io import CORRECTION_SUFFIX, load_corrected

    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    return load_corrected(path, base) if path.name.endswith(CORRECTION_SUFFIX) else base(path)


@register("nequip", NequipOptions, load_file=load_model_file)
def build_nequip(options: NequipOptions, resolve) -> torch.nn.Module:
    """A NequIP model (nequip 0.19), energy-only; forces and stress by our autograd."""
    return load_model_file(resolve(options.path), options)


# ----------------------------------------------------------------------------- DeePMD-kit


@dataclass
class DeepMDOptions:
    path: str = field(metadata={"doc": "the model file: a frozen .pth (dp --pt freeze), a training checkpoint "
                                       "(model.ckpt.pt), a DeePMD v2 .pb (converted with dp convert-backend) "
                                       "or a refined *.correction.pt"})
    device: str = field(default="auto", metadata={"doc": "cpu, cuda, cuda:N or auto (cuda where available)"})
    chemical_species_to_type_map: dict[str, str] | None = field(
        default=None, metadata={"doc": "element → the model's type_map name, where they differ"})

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise ValueError(f"path: expected the model file, got {self.path!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device: expected cpu, cuda, cuda:N or auto, got {self.device!r}")
        if Path(self.path).suffix not in (".pth", ".pt", ".pb"):
            raise ValueError(f"path: expected a DeePMD-kit model (.pth, .pt checkpoint or .pb), got {self.path}")
        for element in self.chemical_species_to_type_map or {}:
            if element not in chemical_symbols[1:]:
                raise ValueError(f"chemical_species_to_type_map: {element!r} is not an element symbol "
                                 "(H, He, …, as in the structure file)")


def load_deepmd_file(path: Path, options: DeepMDOptions) -> torch.nn.Module:
    """``path`` as a potential: a DeePMD-kit file, or a ``*.correction.pt`` over one."""
    from difftre_torch.potentials.deepmd import load_deepmd

    return _with_correction(path, lambda p: load_deepmd(
        p, device=resolve_device(options.device), chemical_species_to_type_map=options.chemical_species_to_type_map))


@register("deepmd", DeepMDOptions, load_file=load_deepmd_file)
def build_deepmd(options: DeepMDOptions, resolve) -> torch.nn.Module:
    """A DeePMD-kit 3.x model (PyTorch backend; .pb converted), its own forces and virial."""
    return load_deepmd_file(resolve(options.path), options)


# ----------------------------------------------------------------------------- the pair correction


@dataclass
class CorrectionOptions:
    cutoff_A: float = field(default=8.0, metadata={"doc": "smooth cut-off r_c of the correction (Å)"})
    centers_A: list[float] = field(default_factory=lambda: [3.0, 3.75, 4.5, 5.25, 6.0, 6.75, 7.5],
                                   metadata={"doc": "centres μ_k of the Gaussian radial functions (Å)"})
    width_A: float = field(default=0.75, metadata={"doc": "width w of the Gaussians (Å)"})
    train_base: bool = field(default=False, metadata={"doc": "train the base model's weights too "
                                                             "(false: only the correction's coefficients)"})

    def __post_init__(self) -> None:
        for name in ("cutoff_A", "width_A"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a length > 0 Å, got {value}")
        centers = list(self.centers_A)
        if not centers or not all(math.isfinite(c) and 0 <= c < self.cutoff_A for c in centers):
            raise ValueError(f"centers_A: expected at least one centre, each in [0, cutoff_A = {self.cutoff_A}) Å, "
                             f"got {centers}")
        if len(set(centers)) != len(centers):
            raise ValueError(f"centers_A: expected distinct centres, got {centers}")


def add_correction(base: torch.nn.Module, options: CorrectionOptions, atoms) -> torch.nn.Module:
    """``base`` plus a zero pair correction ΔU over the species of ``atoms`` (its mean-field
    offset at ``atoms``'s partial densities); the base is frozen unless ``options.train_base``.
    See :mod:`difftre_torch.potentials.correction`."""
    from difftre_torch.potentials.ase_calculator import potential_device_dtype
    from difftre_torch.potentials.correction import (
        CorrectedPotential,
        PairCorrection,
        PairCorrectionSpec,
        species_densities,
    )

    species = sorted(set(int(z) for z in atoms.numbers))
    device, dtype = potential_device_dtype(base)
    spec = PairCorrectionSpec(species=species, cutoff_A=options.cutoff_A, centers_A=list(options.centers_A),
                              width_A=options.width_A,
                              reference_densities_per_A3=species_densities(atoms.numbers, atoms.get_volume(), species))
    return CorrectedPotential(base, PairCorrection(spec, dtype=dtype, device=device), train_base=options.train_base)


def set_trainable(potential: torch.nn.Module, names: list[str] | None, where: str) -> None:
    """Only the parameters named in ``names`` require grad (None: leave as built)."""
    if names is None:
        return
    params = dict(potential.named_parameters())
    missing = sorted(set(names) - set(params))
    if missing:
        raise ValueError(f"{where}: unknown parameter(s) {missing}; the potential has {sorted(params)[:12]}")
    for name, p in params.items():
        p.requires_grad_(name in names)
