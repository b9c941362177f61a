"""Reading and writing nequip model files as :class:`~difftre_torch.potentials.nequip.NequIPPotential`.

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

How the model is evaluated (energy-only, float64 data, full neighbour list), and the measured
facts about nequip 0.19 that loading relies on (dtype rebuild, nequip's global state):
:mod:`difftre_torch.potentials.nequip`.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from difftre_torch.checkpoint import _atomic_write, atomic_torch_save, atomic_write_text
from difftre_torch.potentials.nequip import (
    _DATA_DTYPE,
    SOLE_MODEL_KEY,
    NequIPPotential,
    NequIPSource,
    _force_output,
)

_FORMATS = ("checkpoint", "package", "torchscript", "aotinductor")  # NequIPSource.format values
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
        "written_by": "difftre_torch.potentials.nequip_files.save_nequip",
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
