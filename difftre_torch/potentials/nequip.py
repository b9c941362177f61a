"""NequIP-framework models (nequip 0.19) as potentials: load, evaluate energy-only, write back.

In (``load_nequip``):

* ``.ckpt`` (a ``nequip-train`` Lightning checkpoint) and ``.nequip.zip`` (``nequip-package
  build``): loaded with nequip's own loader as an eager ``GraphModel`` (EMA weights when the run
  used EMA), parameters trainable;
* ``.nequip.pth`` (TorchScript, older nequip/torch): ``torch.jit.load`` without freezing,
  parameters set trainable;
* ``.nequip.pt2`` (AOTInductor): inference only. It has no parameters; the energy is
  differentiable once in positions and cell, with the compiled model's own forces and
  stress/virial supplying that derivative, so :func:`~difftre_torch.potentials.base.evaluate`
  works for sampling. Second derivatives, and :meth:`NequIPPotential.trainable_parameters`,
  raise a clear error.

Out (``save_nequip``): a ``.ckpt`` for checkpoint and package inputs (accepted by
``nequip-package build`` and ``nequip-compile``), a ``.nequip.pth`` for TorchScript inputs.

The model is used *energy-only*: nequip's ``ForceStressOutput`` is switched off
(``do_derivatives = False``, the flag its ``disable_ForceStressOutput`` modifier sets) and forces
and stress come from ``evaluate`` by autograd, F = −∂U/∂x, so d/dθ of a force loss is a plain
double backward through the energy graph. Positions and cell go in as float64 (nequip's data
dtype); the model computes in its own ``model_dtype``; the energy [B] comes back in the dtype of
the positions. Graph: full neighbour list (both i→j and j→i) up to the model's ``r_max`` from
:func:`difftre_torch.neighbors.neighbor_pairs` (vesin, the same search as nequip's ``vesin``
backend); ``edge_index[0]`` is the centre i, ``edge_index[1]`` the neighbour j and nequip forms
r_ij = x_j − x_i + S·cell (cell rows) from the positions and cell tensors, so gradients flow. A
model with per-edge-type cutoffs gets every edge up to ``r_max``; its cutoff envelopes zero the
longer ones (correct, just not pruned).

Measured with nequip 0.19.1, torch 2.13.0+cpu, e3nn 0.6.0 (this file's tests; 2 CPU cores):

* ``nequip-compile --mode torchscript`` on torch ≥ 2.10: HELD, refused with
  ``ValueError: TorchScript compilation is deprecated and not supported in PyTorch >= 2.10``.
  nequip's own ``save_torchscript_model`` (e3nn ``script``) still scripts and saves a
  ``.nequip.pth`` on torch 2.13; ``torch.jit.load`` gives it in eval mode with its parameters.
* ``.nequip.pt2`` has no parameters: HELD. ``nequip-compile --mode aotinductor`` worked on this
  CPU (gcc, 30–50 s for the tiny test model on 2 shared cores; compiling and checking it
  against the eager model: :mod:`difftre_torch.potentials.compiled`); nequip wraps the AOTI runner in a
  ``DictInputOutputWrapper`` with zero parameters, run under ``torch.inference_mode``.
* Models load in training mode and keep their force graph only then: HELD.
  ``load_saved_model`` returns a ``GraphModel`` with ``training=True``; ``ForceStressOutput``
  takes forces with ``create_graph=self.training``, so after ``.eval()`` the forces carry no
  graph to θ. (Irrelevant here: the model is energy-only.)
* ``.double()`` on a float32 model fails: HELD, ``RuntimeError: expected m1 and m2 to have the
  same dtype, but got: float != double`` (modules cache ``model_dtype`` as plain attributes).
  The working route, used by ``load_nequip(dtype=...)``: rebuild from the model config with
  ``model_dtype`` replaced (following ``ModelFromPackage``/``ModelFromCheckpoint`` references
  to the builder config) and load the state dict; float64 energies equal float32 ones to
  float32 tolerance.
* Energy-only model + forces by our autograd gives dU/dθ and the force-matching double backward
  cleanly: HELD (finite, matches a float64 central finite difference).
* ``set_global_state()`` changes torch's default dtype globally: HELD, float32 → float64 on the
  first call; it also reseeds every RNG (``seed_everything(123)``), sets a JIT fusion strategy,
  e3nn optimisation defaults, ``PYTORCH_JIT_USE_NNC_NOT_NVFUSER=1``, and the
  ``file_system`` multiprocessing sharing strategy. ``_nequip_state`` restores the default
  dtype and the RNG states; the other process-wide settings stay.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from difftre_torch.checkpoint import _atomic_write, atomic_torch_save, atomic_write_text
from difftre_torch.neighbors import Pairs, neighbor_pairs, pair_vectors

SOLE_MODEL_KEY = "sole_model"  # nequip's key for a single model in a checkpoint's ModuleDict
_DATA_DTYPE = torch.float64  # nequip's data dtype (positions, cell, shifts), whatever the model dtype
_FORMATS = ("checkpoint", "package", "torchscript", "aotinductor")


@dataclass
class NequIPSource:
    """Where a :class:`NequIPPotential` came from, kept so that :func:`save_nequip` can write back.

    format: one of "checkpoint" (.ckpt), "package" (.nequip.zip), "torchscript" (.nequip.pth),
    "aotinductor" (.nequip.pt2). path: absolute path of the file read. model_dtype: the dtype
    the file's model was trained in ("float32"/"float64"). model_key: model inside a
    checkpoint's ModuleDict. config: the model config (checkpoint ``hyper_parameters``, the
    package's ``config.yaml`` as a dict, or the TorchScript/AOTI metadata). checkpoint: the
    whole original checkpoint dict (format "checkpoint" only). state_dtypes: dtype of each
    state_dict entry of the model as stored (weights are cast back to these when written).
    extra_files: TorchScript extra files to write back unchanged.
    """

    format: str
    path: str
    model_dtype: str
    model_key: str = SOLE_MODEL_KEY
    config: dict = field(default_factory=dict)
    checkpoint: dict | None = None
    state_dtypes: dict = field(default_factory=dict)
    extra_files: dict | None = None


_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"nequip models run in float32 or float64, not {dtype}")
    return _DTYPE_NAMES[dtype]


@contextlib.contextmanager
def _nequip_state():
    """nequip's ``set_global_state()``, with the default dtype at float64 inside and torch's
    default dtype and the RNG states (it reseeds everything) restored on exit."""
    from lightning.pytorch.utilities.seed import isolate_rng
    from nequip.utils.global_state import set_global_state

    default_dtype = torch.get_default_dtype()
    try:
        with isolate_rng():
            set_global_state()
            torch.set_default_dtype(_DATA_DTYPE)
            yield
    finally:
        torch.set_default_dtype(default_dtype)


def _force_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """nequip's ``ForceStressOutput`` modules (eager, packaged or TorchScript), found by duck type."""
    return [m for _, m in model.named_modules() if hasattr(m, "do_derivatives") and hasattr(m, "func")]


@contextlib.contextmanager
def _force_output(model: torch.nn.Module, enabled: bool):
    """Temporarily set ``do_derivatives`` of every ``ForceStressOutput`` (e.g. for writing back)."""
    modules = _force_modules(model)
    before = [bool(m.do_derivatives) for m in modules]
    try:
        for m in modules:
            m.do_derivatives = enabled
        yield
    finally:
        for m, flag in zip(modules, before):
            m.do_derivatives = flag


class _CompiledEnergy(torch.autograd.Function):
    """U(x, h) from an AOTInductor model; its backward is the model's own −F and ∂U/∂h.

    With strain ε acting as x → x(1+ε), h → h(1+ε) (rows), ∂U/∂ε = xᵀ∂U/∂x + hᵀ∂U/∂h, so
    ∂U/∂h = h⁻ᵀ (∂U/∂ε + xᵀF) with ∂U/∂ε = Vσ (ASE sign) = −W (nequip's virial).
    """

    @staticmethod
    def forward(ctx, positions, cell, energy, forces, dU_dstrain):
        ctx.save_for_backward(positions, cell, forces, dU_dstrain)
        return energy

    @staticmethod
    def backward(ctx, grad_energy):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "this NequIPPotential wraps an AOTInductor (.nequip.pt2) model: it is inference-only "
                "and gives forces and stress, but no second derivatives (force matching) and no "
                "gradient in parameters. Load the .ckpt or .nequip.zip it was compiled from instead."
            )
        positions, cell, forces, dU_dstrain = ctx.saved_tensors
        g = grad_energy[:, None, None]
        grad_positions = -forces * g
        rhs = dU_dstrain + torch.einsum("bik,bil->bkl", positions, forces)
        grad_cell = torch.linalg.solve(cell.transpose(1, 2), rhs) * g
        return grad_positions, grad_cell, None, None, None


class NequIPPotential(torch.nn.Module):
    """A nequip model as a potential: ``energy = potential(positions, cell, numbers)``.

    positions [B, N, 3] Å, cell [B, 3, 3] Å (rows, periodic in 3D), numbers [N] int64 atomic
    numbers → energy [B] eV, total energy U_θ of each snapshot, in the dtype of positions.

    model: a nequip ``GraphModel`` (eager or from a package), a TorchScript nequip model, or
    (``compiled=True``) nequip's wrapper of an AOTInductor model (``input_keys``,
    ``output_keys``). type_names: the model's atom types, in index order. r_max_A: cutoff of
    the neighbour list. chemical_species_to_atom_type_map: element symbol → type name; default
    identity (type names are element symbols). Eager/TorchScript models are made energy-only
    here (their ``ForceStressOutput`` is switched off).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        type_names: list[str],
        r_max_A: float,
        *,
        chemical_species_to_atom_type_map: dict[str, str] | None = None,
        compiled: bool = False,
        source: NequIPSource | None = None,
    ):
        super().__init__()
        from ase.data import atomic_numbers

        self.model = model
        self.type_names = list(type_names)
        self.r_max_A = float(r_max_A)
        self.compiled = bool(compiled)
        self.source = source
        species_map = chemical_species_to_atom_type_map or {t: t for t in self.type_names}
        table = torch.full((119,), -1, dtype=torch.long)
        for symbol, type_name in species_map.items():
            if symbol not in atomic_numbers:
                raise ValueError(f"NequIPPotential: {symbol!r} is not a chemical element symbol")
            if type_name not in self.type_names:
                raise ValueError(
                    f"NequIPPotential: {symbol} maps to type {type_name!r}, which the model does "
                    f"not have (its types: {self.type_names})"
                )
            table[atomic_numbers[symbol]] = self.type_names.index(type_name)
        self.register_buffer("type_of_number", table, persistent=False)
        if self.compiled:
            # An AOTI model has no floating tensors of its own: this empty float64 buffer makes
            # potential_device_dtype() report its device and nequip's data dtype (not cpu).
            self.register_buffer("data_dtype_anchor", torch.zeros(0, dtype=_DATA_DTYPE), persistent=False)
        else:
            modules = _force_modules(model)
            if not modules:
                raise ValueError(
                    "NequIPPotential: no ForceStressOutput found in the model; expected a nequip "
                    ">= 0.7 GraphModel (or its TorchScript form)"
                )
            for m in modules:
                m.do_derivatives = False  # energy-only; forces by autograd in evaluate()
            for p in model.parameters():
                p.requires_grad_(True)

    @property
    def inference_only(self) -> bool:
        """True for an AOTInductor model: no parameters, no second derivatives."""
        return self.compiled

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """θ: the parameters that require grad (raises for an inference-only model)."""
        if self.compiled:
            raise RuntimeError(
                "this NequIPPotential wraps an AOTInductor (.nequip.pt2) model, which has no "
                "trainable parameters; load the .ckpt or .nequip.zip it was compiled from to refine it"
            )
        return [p for p in self.parameters() if p.requires_grad]

    def atom_types(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers [N] → the model's type indices [N] (ValueError naming unknown elements)."""
        from ase.data import chemical_symbols

        numbers = numbers.to(self.type_of_number.device).long()
        if numbers.numel() and (numbers.min() < 0 or numbers.max() >= self.type_of_number.numel()):
            raise ValueError(f"NequIPPotential: invalid atomic numbers {numbers.unique().tolist()}")
        types = self.type_of_number[numbers]
        if bool((types < 0).any()):
            unknown = sorted({chemical_symbols[int(z)] for z in numbers[types < 0].unique()})
            raise ValueError(
                f"NequIPPotential: the model does not know element(s) {', '.join(unknown)}; "
                f"its types are {self.type_names}"
            )
        return types

    def graph(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor,
              pairs: Pairs | None = None) -> dict:
        """The batched nequip AtomicDataDict of B snapshots (float64 positions, cell, shifts).

        pairs: optional precomputed full pair list covering every pair within ``r_max_A`` (e.g.
        a Verlet list with a skin); the edges beyond ``r_max_A`` are dropped here, so the graph
        is the one a fresh search would give (up to edge order)."""
        from nequip.data import AtomicDataDict as K

        B, N, _ = positions.shape
        device = positions.device
        types = self.atom_types(numbers).to(device)
        if pairs is None:
            pairs = neighbor_pairs(positions, cell, self.r_max_A, full=True)
        else:
            if not pairs.full:
                raise ValueError("NequIPPotential: a precomputed pair list must be full (both i→j and j→i)")
            with torch.no_grad():
                keep = pair_vectors(positions.detach(), cell.detach(), pairs).norm(dim=-1) < self.r_max_A
            pairs = Pairs(batch=pairs.batch[keep], i=pairs.i[keep], j=pairs.j[keep],
                          shifts=pairs.shifts[keep], full=True)
        offset = pairs.batch * N
        return {
            K.POSITIONS_KEY: positions.to(_DATA_DTYPE).reshape(B * N, 3),
            K.CELL_KEY: cell.to(_DATA_DTYPE),
            K.PBC_KEY: torch.ones(B, 3, dtype=torch.bool, device=device),
            K.EDGE_INDEX_KEY: torch.stack([pairs.i + offset, pairs.j + offset]),
            K.EDGE_CELL_SHIFT_KEY: pairs.shifts.to(_DATA_DTYPE),
            K.ATOM_TYPE_KEY: types.repeat(B),
            K.BATCH_KEY: torch.arange(B, device=device).repeat_interleave(N),
            K.NUM_NODES_KEY: torch.full((B,), N, dtype=torch.long, device=device),
        }

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor,
                pairs: Pairs | None = None) -> torch.Tensor:
        if positions.ndim != 3 or cell.shape != (positions.shape[0], 3, 3):
            raise ValueError(
                f"NequIPPotential: expected positions [B,N,3] and cell [B,3,3], got "
                f"{tuple(positions.shape)} and {tuple(cell.shape)}"
            )
        from nequip.data import AtomicDataDict as K

        data = self.graph(positions, cell, numbers, pairs)
        if self.compiled:
            return self._compiled_energy(positions, cell, data).to(positions.dtype)
        energy = self.model(data)[K.TOTAL_ENERGY_KEY]
        return energy.reshape(positions.shape[0]).to(positions.dtype)

    def _compiled_energy(self, positions, cell, data) -> torch.Tensor:
        """Energy, forces and ∂U/∂ε of an AOTI model, one call per frame for single-frame targets."""
        from nequip.data import AtomicDataDict as K

        B, N, _ = positions.shape
        if K.BATCH_KEY in self.model.input_keys:
            frames = [data]
        else:  # "ase" / "pair_nequip" targets take one frame without batch keys
            frames = []
            edge_batch = data[K.EDGE_INDEX_KEY][0] // N
            for b in range(B):
                mask = edge_batch == b
                frames.append({
                    K.POSITIONS_KEY: data[K.POSITIONS_KEY][b * N:(b + 1) * N],
                    K.CELL_KEY: data[K.CELL_KEY][b:b + 1],
                    K.EDGE_INDEX_KEY: data[K.EDGE_INDEX_KEY][:, mask] - b * N,
                    K.EDGE_CELL_SHIFT_KEY: data[K.EDGE_CELL_SHIFT_KEY][mask],
                    K.ATOM_TYPE_KEY: data[K.ATOM_TYPE_KEY][b * N:(b + 1) * N],
                })
        energy, forces, dU_dstrain = [], [], []
        for frame in frames:
            inputs = {k: v.detach() for k, v in frame.items()}
            out = {k: v.clone() for k, v in self.model(inputs).items()}  # leave inference mode
            nb = out[K.FORCE_KEY].shape[0] // N
            if K.TOTAL_ENERGY_KEY in out:
                energy.append(out[K.TOTAL_ENERGY_KEY].reshape(nb))
            else:
                energy.append(out[K.PER_ATOM_ENERGY_KEY].reshape(nb, N).sum(1))
            forces.append(out[K.FORCE_KEY].reshape(nb, N, 3))
            if K.STRESS_KEY in out:
                volume = torch.linalg.det(inputs[K.CELL_KEY]).abs()
                dU_dstrain.append(out[K.STRESS_KEY].reshape(nb, 3, 3) * volume[:, None, None])
            else:
                dU_dstrain.append(-out[K.VIRIAL_KEY].reshape(nb, 3, 3))
        x = data[K.POSITIONS_KEY].reshape(B, N, 3)
        h = data[K.CELL_KEY]
        return _CompiledEnergy.apply(
            x, h, torch.cat(energy).to(x.dtype), torch.cat(forces).to(x.dtype),
            torch.cat(dU_dstrain).to(x.dtype),
        )


# ---------------------------------------------------------------------------------------------
# loading


def _format_of(path: Path) -> str:
    name = path.name
    if name.endswith(".nequip.zip"):
        return "package"
    if name.endswith(".pt2"):
        return "aotinductor"
    if name.endswith(".pth"):
        return "torchscript"
    if zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in names):
            return "torchscript"
    return "checkpoint"


def _package_config(package_path: str | os.PathLike) -> dict:
    """The training config stored in a .nequip.zip (``model/config.yaml``) as a dict."""
    import yaml
    from nequip.model.saved_models.package import _suppress_package_importer_exporter_warnings

    with _suppress_package_importer_exporter_warnings():
        importer = torch.package.PackageImporter(str(package_path))
        return yaml.safe_load(importer.load_text("model", "config.yaml"))


def _with_model_dtype(config: Any, dtype_name: str) -> Any:
    """Model config with every ``model_dtype`` replaced, ModelFromPackage/ModelFromCheckpoint
    nodes replaced by the builder config they were made from (followed recursively)."""
    if isinstance(config, list):
        return [_with_model_dtype(c, dtype_name) for c in config]
    if not isinstance(config, dict):
        return config
    target = str(config.get("_target_", ""))
    if target.endswith("ModelFromPackage"):
        inner = _package_config(config["package_path"])["training_module"]["model"]
        return _with_model_dtype(inner, dtype_name)
    if target.endswith("ModelFromCheckpoint"):
        ckpt = torch.load(config["checkpoint_path"], map_location="cpu", weights_only=False)
        return _with_model_dtype(ckpt["hyper_parameters"]["model"], dtype_name)
    return {
        k: dtype_name if k == "model_dtype" else _with_model_dtype(v, dtype_name)
        for k, v in config.items()
    }


def _rebuild(model: torch.nn.Module, model_config: dict, dtype_name: str) -> torch.nn.Module:
    """The same model built in ``dtype_name`` from its config, weights copied (cast) from ``model``."""
    from hydra.utils import get_method

    config = _with_model_dtype(model_config, dtype_name)
    builder = get_method(config.pop("_target_"))
    rebuilt = builder(**config)
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError as err:
        raise RuntimeError(
            f"load_nequip: rebuilding the model in {dtype_name} from its config gave a different "
            f"module layout (is the installed nequip the one it was made with?): {err}"
        ) from err
    return rebuilt


def load_nequip(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    chemical_species_to_atom_type_map: dict[str, str] | None = None,
    model_key: str = SOLE_MODEL_KEY,
) -> NequIPPotential:
    """Load a nequip model file as an energy-only :class:`NequIPPotential` (see module docstring).

    path: ``.ckpt``, ``.nequip.zip``, ``.nequip.pth`` or ``.nequip.pt2``. dtype: the model's
    compute dtype (None: as trained). A different dtype rebuilds the model from its config
    (checkpoint and package only; ``.double()`` does not work on nequip models).
    chemical_species_to_atom_type_map: element → type name when type names are not elements.
    model_key: which model of a multi-model checkpoint. The origin is kept in ``.source``.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"load_nequip: {path} does not exist")
    fmt = _format_of(path)
    device = torch.device(device)
    with _nequip_state():
        if fmt in ("checkpoint", "package"):
            from nequip.model.saved_models.load_utils import load_saved_model

            model = load_saved_model(str(path), compile_mode="eager", model_key=model_key)
            if fmt == "checkpoint":
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
                config, model_config = checkpoint["hyper_parameters"], checkpoint["hyper_parameters"]["model"]
            else:
                checkpoint = None
                config = _package_config(path)
                model_config = config["training_module"]["model"]
            metadata = dict(model.metadata)
            source = NequIPSource(
                fmt, str(path), metadata["model_dtype"], model_key, config, checkpoint,
                state_dtypes={k: v.dtype for k, v in model.state_dict().items()},
            )
            wanted = metadata["model_dtype"] if dtype is None else _dtype_name(dtype)
            if wanted != metadata["model_dtype"]:
                model = _rebuild(model, model_config, wanted)
            model.eval()
            compiled = False
        elif fmt == "torchscript":
            names = [n for n in zipfile.ZipFile(path).namelist() if "/extra/" in n]
            extra = {n.split("/extra/", 1)[1]: "" for n in names}
            model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
            metadata = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
            if dtype is not None and _dtype_name(dtype) != metadata["model_dtype"]:
                raise ValueError(
                    "load_nequip: a TorchScript model cannot change dtype (it has no model config); "
                    "load the .ckpt or .nequip.zip it was made from"
                )
            source = NequIPSource(fmt, str(path), metadata["model_dtype"], model_key, metadata,
                                  extra_files={k: extra[k] for k in extra})
            compiled = False
        else:
            from nequip.model.inference_models import load_compiled_model

            if dtype is not None:
                raise ValueError("load_nequip: an AOTInductor (.nequip.pt2) model cannot change dtype")
            model, metadata = load_compiled_model(str(path), device)
            metadata = {k: v for k, v in metadata.items()}
            source = NequIPSource(fmt, str(path), str(metadata.get("model_dtype", "")), model_key,
                                  {k: str(v) for k, v in metadata.items()})
            compiled = True
    type_names = metadata["type_names"]
    if isinstance(type_names, str):
        type_names = type_names.split(" ")
    potential = NequIPPotential(
        model, type_names, float(metadata["r_max"]),
        chemical_species_to_atom_type_map=chemical_species_to_atom_type_map,
        compiled=compiled, source=source,
    )
    return potential.to(device)


# ---------------------------------------------------------------------------------------------
# writing back


def _provenance(potential: NequIPPotential) -> dict:
    src = potential.source
    return {
        "written_by": "difftre_torch.potentials.nequip.save_nequip",
        "written_at": datetime.now(timezone.utc).isoformat(),
        "source_format": src.format,
        "source_path": src.path,
    }


def _cast_like(value: torch.Tensor, like: torch.Tensor, key: str) -> torch.Tensor:
    if value.shape != like.shape:
        raise ValueError(f"save_nequip: {key} has shape {tuple(value.shape)}, the checkpoint {tuple(like.shape)}")
    return value.detach().to(device="cpu", dtype=like.dtype).clone()


def _refined_state_dict(potential: NequIPPotential, state_dict: dict, model_key: str) -> dict:
    """The checkpoint's state_dict with the model's weights (and EMA copies) replaced."""
    prefix = f"model.{model_key}."
    new = dict(state_dict)
    for key, value in potential.model.state_dict().items():
        if prefix + key in new:
            new[prefix + key] = _cast_like(value, new[prefix + key], prefix + key)
    missing = [k for k, _ in potential.model.named_parameters() if prefix + k not in new]
    if missing:
        raise ValueError(f"save_nequip: the checkpoint has no entries for parameters {missing[:5]}")
    # EMA: nequip swaps the EMA copies in whenever it loads the checkpoint for inference, so the
    # refined weights must go there too (ema.ema_weight_i <-> i-th parameter of the ModuleDict).
    ema_keys = sorted((k for k in new if k.startswith("ema.ema_weight_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if ema_keys:
        if any(not k.startswith(prefix) for k in new if k.startswith("model.")):
            raise NotImplementedError("save_nequip: EMA checkpoints with several models are not supported")
        params = [p for _, p in potential.model.named_parameters()]
        if len(params) != len(ema_keys):
            raise ValueError(f"save_nequip: {len(ema_keys)} EMA weights but {len(params)} parameters")
        for key, p in zip(ema_keys, params):
            new[key] = _cast_like(p, new[key], key)
    return new


def _example_data_config(potential: NequIPPotential, xyz_path: Path) -> dict:
    """A data section for a synthesised checkpoint: one frame (the package's example data),
    written as extxyz next to the checkpoint; nequip-package/-compile need one frame."""
    import ase
    import ase.io
    from nequip.data import AtomicDataDict as K
    from nequip.model.saved_models.package import data_dict_from_package

    data = data_dict_from_package(potential.source.path)
    atoms = ase.Atoms(
        numbers=data[K.ATOMIC_NUMBERS_KEY].numpy(),
        positions=data[K.POSITIONS_KEY].numpy(),
        cell=data[K.CELL_KEY].reshape(3, 3).numpy(),
        pbc=data[K.PBC_KEY].reshape(3).numpy(),
    )
    text = io.StringIO()
    ase.io.write(text, atoms, format="extxyz")
    atomic_write_text(xyz_path, text.getvalue())
    from ase.data import chemical_symbols

    species = {chemical_symbols[int(z)]: potential.type_names[int(potential.type_of_number[int(z)])]
               for z in set(data[K.ATOMIC_NUMBERS_KEY].tolist())}
    species.update({t: t for t in potential.type_names if t in chemical_symbols and t not in species})
    return {
        "_target_": "nequip.data.datamodule.ASEDataModule",
        "seed": 0,
        "train_file_path": str(xyz_path),
        "val_file_path": str(xyz_path),  # nequip's fit-stage setup insists on a val set
        "transforms": [
            {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
             "model_type_names": list(potential.type_names),
             "chemical_species_to_atom_type_map": species},
            {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": potential.r_max_A},
        ],
        "train_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": 1},
        "val_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": 1},
    }


def _checkpoint_from_package(potential: NequIPPotential, path: Path) -> dict:
    """A minimal nequip Lightning checkpoint whose model is ``ModelFromPackage(<the .zip>)``
    (nequip's fine-tuning route) with the refined weights in its state_dict."""
    from nequip.utils.versions.package_versions import get_current_code_versions

    model_key = potential.source.model_key
    model_config = {"_target_": "nequip.model.ModelFromPackage",
                    "package_path": potential.source.path, "compile_mode": "eager"}
    data_config = _example_data_config(potential, path.with_name(path.name + ".example.xyz"))
    info = {k: v for k, v in potential.source.config.items() if k not in ("data", "training_module")}
    info.update({
        "versions": get_current_code_versions(verbose=False),
        "data": data_config,
        "runs": ["train"],
        "training_module": {"_target_": "nequip.train.NequIPLightningModule", "model": model_config},
    })
    dtypes = potential.source.state_dtypes
    state_dict = {"run_stage": torch.zeros(1, dtype=torch.long)}
    state_dict.update({
        f"model.{model_key}.{k}": v.detach().to(device="cpu", dtype=dtypes.get(k, v.dtype)).clone()
        for k, v in potential.model.state_dict().items()
    })
    import lightning

    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": state_dict,
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "model": model_config,
            "num_datasets": {"train": 1, "val": 0, "test": 0, "predict": 0},
            "info_dict": info,
        },
    }


def save_nequip(potential: NequIPPotential, path: str | os.PathLike) -> Path:
    """Write the (refined) weights so nequip's tools can continue from them; atomic.

    Checkpoint or package input → ``.ckpt`` (the original checkpoint with its model and EMA
    weights replaced, cast to the checkpoint's dtype; for a package, a new checkpoint whose
    model is ``ModelFromPackage(<original .zip>)`` plus ``<path>.example.xyz`` holding one
    frame for ``nequip-package build``/``nequip-compile``). TorchScript input → ``.nequip.pth``
    with the original metadata. Returns the path written.
    """
    src = potential.source
    if src is None or src.format not in _FORMATS:
        raise ValueError("save_nequip: the potential does not record where it came from (load it with load_nequip)")
    path = Path(path).resolve()
    if src.format == "aotinductor":
        raise ValueError("save_nequip: an AOTInductor model has no weights to write")
    if src.format == "torchscript":
        if not path.name.endswith(".pth"):
            raise ValueError(f"save_nequip: a TorchScript model is written as .nequip.pth, got {path.name}")

        def write(handle):
            buffer = io.BytesIO()
            with _force_output(potential.model, True):
                torch.jit.save(potential.model, buffer, _extra_files=src.extra_files or {})
            handle.write(buffer.getvalue())

        return _atomic_write(path, write)
    if not path.name.endswith(".ckpt"):
        raise ValueError(f"save_nequip: checkpoint and package inputs are written as .ckpt, got {path.name}")
    if src.format == "checkpoint":
        checkpoint = dict(src.checkpoint)
        checkpoint["state_dict"] = _refined_state_dict(potential, src.checkpoint["state_dict"], src.model_key)
    else:
        checkpoint = _checkpoint_from_package(potential, path)
    checkpoint["difftre_torch"] = _provenance(potential)
    return atomic_torch_save(checkpoint, path)
