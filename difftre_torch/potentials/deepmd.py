"""DeePMD-kit models (3.x, PyTorch backend) as potentials, and writing them back.

In (:func:`load_deepmd`):

* a frozen model, ``.pth`` (``dp --pt freeze``, TorchScript): ``torch.jit.load``, every
  parameter trainable;
* a training checkpoint, ``.pt`` (``model.ckpt.pt``, ``model.ckpt-N.pt``): the model is rebuilt
  with DeePMD's ``get_model`` from the model parameters the checkpoint carries
  (``model["_extra_state"]["model_params"]``) and its weights loaded (single-task checkpoints);
* a TensorFlow frozen model, ``.pb`` (DeePMD v2): converted once with DeePMD's own
  ``dp convert-backend model.pb model.converted.pth`` beside it, which needs DeePMD-kit's
  TensorFlow backend; without it the error names that route.

Out (:meth:`DeepMDPotential.write_back`): ``<stem>.pth``, a frozen model that DeePMD's own
``DeepPot``, ``dp --pt test`` and LAMMPS ``pair_style deepmd`` load, and ``<stem>.ckpt.pt``, a
training checkpoint for ``dp --pt freeze`` and ``dp --pt train --finetune`` (the input
checkpoint's optimizer state and training info kept where there was one).

Evaluation: DeePMD takes a batch of frames natively, ``coord [B, N·3]``, ``box [B, 9]`` (cell
rows, Å), ``atype [B, N]``; the energy [B] eV is what the potential contract asks for. On a GPU
all B frames go in one call; on a CPU in groups of at most ``cpu_atoms_per_call`` atoms. DeePMD
always derives forces and virial itself inside its forward (by autograd, keeping the energy's
graph); :meth:`DeepMDPotential.evaluate_native` hands those to
:func:`~difftre_torch.potentials.base.evaluate` instead of a second backward. DeePMD's virial is
W = −∂U/∂ε (eV, W = Σ r ⊗ f for pairs), the same as ``Evaluation.virial``, so the stress (ASE
sign) is σ = −W/V. The forces keep their graph to θ only in training mode (DeePMD takes them
with ``create_graph=self.training``): ``evaluate_native(create_graph=True)`` switches the model
to training mode for that call (se_e2_a and DPA-1 have no dropout by default, so training mode
changes nothing else).

Positions and cells go in as float64; the model casts them to its own precision and returns
the energy in float64.

Measured with deepmd-kit 3.2.0 on torch 2.13.0+cpu (tests/test_deepmd.py):

* the PyPI wheel's compiled operators were built for torch 2.11 (its ``run_config.ini``) and
  link MPICH's ``libmpi.so.12``: ``import deepmd.pt`` fails at once (``PackageNotFoundError:
  mpich``), and the operator library alone does not load beside torch 2.13 (``OSError``).
  Built from the sdist
  (``DP_VARIANT=cpu DP_ENABLE_TENSORFLOW=0 DP_ENABLE_PYTORCH=1 pip install --no-binary
  deepmd-kit deepmd-kit==3.2.0``, about two minutes on 2 cores) they load; ``make setup`` does
  this. A frozen se_e2_a model refers to ``deepmd::tabulate_fusion_se_a`` and loads only once
  the operators are loaded (``import deepmd.pt``).
* a frozen ``.pth`` loads in eval mode with every parameter requiring grad; dE/dθ and the
  force double backward work in training mode.
* ``.pb``: in a second environment with tensorflow-cpu 2.21 and DeePMD-kit built with
  ``DP_ENABLE_TENSORFLOW=1 DP_ENABLE_PYTORCH=1`` (8 min on 2 cores), a ``dp --tf train`` +
  ``dp --tf freeze`` model went through ``dp convert-backend`` and agreed with ``DeepPot`` on the
  .pb to 1e-10 (``test_pb_converted_matches_deeppot``, skipped where that backend is absent).
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from difftre_torch.checkpoint import _atomic_write, atomic_torch_save
from difftre_torch.potentials.base import Evaluation, cell_volume
from difftre_torch.potentials.types import atom_types, type_table

INSTALL_HINT = ("DeePMD-kit built against this torch: DP_VARIANT=cpu DP_ENABLE_TENSORFLOW=0 "
                "DP_ENABLE_PYTORCH=1 pip install --no-binary deepmd-kit deepmd-kit==3.2.0 "
                "(make setup does this)")
CHECKPOINT_PREFIX = "model.Default."  # DeePMD's ModelWrapper key of a single-task model


class DeepMDError(RuntimeError):
    """DeePMD-kit is missing or cannot read a file; the message says what to do."""


def import_deepmd():
    """``deepmd.pt`` (which loads DeePMD's compiled operators), or a :class:`DeepMDError`
    saying how to install it."""
    import os

    # DeePMD sets torch's thread counts from these at import (and warns when they are unset):
    # hand it the counts this process already chose (difftre_torch.threads).
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    os.environ.setdefault("DP_INTRA_OP_PARALLELISM_THREADS", str(torch.get_num_threads()))
    os.environ.setdefault("DP_INTER_OP_PARALLELISM_THREADS", str(torch.get_num_interop_threads()))
    try:
        import deepmd.pt  # noqa: F401
    except ImportError as exc:
        raise DeepMDError(f"DeePMD-kit is not installed ({exc}); install {INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - version/ABI mismatch of its compiled operators
        first = " ".join(str(exc).split())[:200]
        raise DeepMDError(f"DeePMD-kit does not load with this torch ({first}); install {INSTALL_HINT}") from None
    return deepmd


@dataclass
class DeepMDSource:
    """Where a :class:`DeepMDPotential` came from, kept for writing back.

    format: "torchscript" (.pth) or "checkpoint" (.pt). path: the file read (for a converted
    .pb, the .pth it was converted to). model_params: DeePMD's model parameters (the
    checkpoint's, or the frozen model's ``get_model_def_script()``). checkpoint: the whole
    checkpoint dict (format "checkpoint" only).
    """

    format: str
    path: str
    model_params: dict = field(default_factory=dict)
    checkpoint: dict | None = None


def _checkpoint_state(record: dict, path: Path) -> dict:
    state = record.get("model", record) if isinstance(record, dict) else None
    if not isinstance(state, dict) or "_extra_state" not in state:
        raise DeepMDError(f"{path}: not a DeePMD-kit PyTorch checkpoint (no model._extra_state); expected "
                          "model.ckpt.pt or model.ckpt-N.pt from dp --pt train")
    params = state["_extra_state"].get("model_params", {})
    if "model_dict" in params:
        raise DeepMDError(f"{path}: a multi-task checkpoint (heads {sorted(params['model_dict'])}); freeze one "
                          "head with dp --pt freeze --head NAME and give the .pth")
    return state


def _build_eager(model_params: dict, state: dict | None = None) -> torch.nn.Module:
    """DeePMD's model from its parameters, with ``state`` (ModelWrapper keys) loaded."""
    import_deepmd()
    from deepmd.pt.model.model import get_model

    model = get_model(copy.deepcopy(model_params))
    if state is not None:
        weights = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
        model.load_state_dict(weights)
    return model


def convert_pb(path: Path) -> Path:
    """``dp convert-backend model.pb model.converted.pth`` (once); needs DeePMD's TensorFlow backend."""
    out = path.with_name(path.stem + ".converted.pth")
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out
    try:
        import tensorflow  # noqa: F401
        from deepmd.tf.env import op_module  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a DeePMD build without its TensorFlow backend
        raise DeepMDError(
            f"{path} is a TensorFlow (DeePMD v2) model and DeePMD-kit's TensorFlow backend is not "
            f"installed here; convert it on a machine that has it (pip install deepmd-kit[cpu]) with "
            f"`dp convert-backend {path.name} {out.name}`, and give the .pth") from None
    from difftre_torch.environment import console_script

    cmd = [console_script("dp", f"install {INSTALL_HINT}"), "convert-backend", str(path), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0 or not out.exists():
        raise DeepMDError(f"{path}: dp convert-backend failed: {run.stderr.strip().splitlines()[-1:]}")
    return out


def load_deepmd(path: str | Path, *, device: str | torch.device = "cpu",
                chemical_species_to_type_map: dict[str, str] | None = None) -> "DeepMDPotential":
    """A DeePMD-kit model file (.pth, .pt checkpoint or .pb) as a :class:`DeepMDPotential`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    import_deepmd()
    if path.suffix == ".pb":
        path = convert_pb(path)
    if path.suffix == ".pth":
        try:
            model = torch.jit.load(str(path), map_location=device)
        except RuntimeError as exc:
            text = " ".join(str(exc).split())
            if "Unknown builtin op: deepmd::" in text:
                raise DeepMDError(f"{path}: the model uses DeePMD-kit's compiled operators, which are not loaded; "
                                  f"install {INSTALL_HINT}") from None
            raise
        params = json.loads(model.get_model_def_script() or "{}")
        source = DeepMDSource("torchscript", str(path.resolve()), params)
    elif path.suffix == ".pt":
        record = torch.load(path, map_location="cpu", weights_only=False)
        state = _checkpoint_state(record, path)
        params = state["_extra_state"]["model_params"]
        model = _build_eager(params, state).to(device)
        source = DeepMDSource("checkpoint", str(path.resolve()), params, checkpoint=record)
    else:
        raise DeepMDError(f"{path}: expected a DeePMD-kit model: .pth (dp --pt freeze), .pt (a dp --pt train "
                          "checkpoint) or .pb (DeePMD v2, TensorFlow)")
    return DeepMDPotential(model, list(model.get_type_map()), source=source,
                           chemical_species_to_type_map=chemical_species_to_type_map)


@contextlib.contextmanager
def _training(module: torch.nn.Module, mode: bool):
    before = module.training
    module.train(mode)
    try:
        yield
    finally:
        module.train(before)


class DeepMDPotential(torch.nn.Module):
    """A DeePMD-kit model as a potential: ``energy = potential(positions, cell, numbers)``.

    positions [B, N, 3] Å, cell [B, 3, 3] Å (rows, periodic in 3D), numbers [N] int64 → energy
    [B] eV (float64). model: a DeePMD-kit PyTorch model (eager or TorchScript) with its
    ``forward(coord, atype, box)``. type_map: the model's types in index order.
    chemical_species_to_type_map: element symbol → type name (default: identity).
    """

    data_dtype = torch.float64  # what positions and cells go in as (the model casts them)
    # On a CPU, frames go to the model in groups of at most this many atoms: one call on many
    # frames is memory-bound there (benchmarks/RESULTS.md, "sampling, DeePMD-kit").
    cpu_atoms_per_call = 1024

    def __init__(self, model: torch.nn.Module, type_map: list[str], *, source: DeepMDSource | None = None,
                 chemical_species_to_type_map: dict[str, str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.type_map = list(type_map)
        self.source = source
        self.r_max_A = float(model.get_rcut())
        table = type_table(self.type_map, chemical_species_to_type_map, "DeepMDPotential")
        self.register_buffer("type_of_number", table, persistent=False)
        if model.get_dim_fparam() or model.get_dim_aparam():
            raise ValueError("DeepMDPotential: models with frame or atomic parameters (fparam/aparam) are not "
                             "supported")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)

    def atom_types(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers [N] → the model's type indices [N] (ValueError naming unknown elements)."""
        return atom_types(self.type_of_number, numbers, self.type_map, "DeepMDPotential")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _outputs(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor) -> dict:
        if positions.ndim != 3 or cell.shape != (positions.shape[0], 3, 3):
            raise ValueError(f"DeepMDPotential: expected positions [B,N,3] and cell [B,3,3], got "
                             f"{tuple(positions.shape)} and {tuple(cell.shape)}")
        B, N, _ = positions.shape
        types = self.atom_types(numbers).to(positions.device)
        coord = positions.to(self.data_dtype).reshape(B, N * 3)
        box = cell.to(self.data_dtype).reshape(B, 9)
        step = B if positions.device.type != "cpu" else max(1, self.cpu_atoms_per_call // N)
        outs = []
        with torch.enable_grad():  # DeePMD takes its forces by autograd inside forward
            for k in range(0, B, step):
                outs.append(self.model(coord[k:k + step], types.expand(min(step, B - k), N), box=box[k:k + step]))
        if len(outs) == 1:
            return outs[0]
        return {key: torch.cat([o[key] for o in outs]) for key in ("energy", "force", "virial")}

    def forward(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        energy = self._outputs(positions, cell, numbers)["energy"].reshape(positions.shape[0])
        if not torch.is_grad_enabled():
            energy = energy.detach()
        return energy.to(positions.dtype)

    def evaluate_native(self, positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor, *,
                        forces: bool = True, stress: bool = False, create_graph: bool = False) -> Evaluation:
        """Energy, forces and stress as DeePMD derives them (see the module docstring);
        ``create_graph``: forces and stress keep their graph to θ (training mode)."""
        B, N, _ = positions.shape
        with _training(self.model, create_graph):
            out = self._outputs(positions.detach(), cell.detach(), numbers)
        dtype = positions.dtype
        energy = out["energy"].reshape(B).to(dtype)
        volume = cell_volume(cell.detach())
        force = out["force"].reshape(B, N, 3).to(dtype) if forces else None
        sigma = (-out["virial"].reshape(B, 3, 3).to(dtype) / volume[:, None, None]) if stress else None
        if not create_graph:
            force = None if force is None else force.detach()
            sigma = None if sigma is None else sigma.detach()
        if not torch.is_grad_enabled():
            energy = energy.detach()
        return Evaluation(energy=energy, forces=force, stress=sigma, volume=volume)

    # ------------------------------------------------------------------------------- writing back

    def eager_model(self) -> torch.nn.Module:
        """The model as a DeePMD eager module with the current weights (rebuilt for a .pth)."""
        if not isinstance(self.model, torch.jit.ScriptModule):
            return self.model
        if self.source is None or not self.source.model_params:
            raise DeepMDError("this frozen model carries no model definition (get_model_def_script); "
                              "its weights cannot go into a checkpoint")
        eager = _build_eager(self.source.model_params)
        eager.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        return eager

    def write_back(self, stem: str | Path) -> Path:
        """``<stem>.pth`` (frozen, for DeepPot, dp test, LAMMPS) and ``<stem>.ckpt.pt`` (for dp
        freeze and dp train --finetune) with the current weights; returns the .pth."""
        stem = Path(stem)
        pth, ckpt = stem.with_name(stem.name + ".pth"), stem.with_name(stem.name + ".ckpt.pt")
        if isinstance(self.model, torch.jit.ScriptModule):
            scripted = self.model
        else:
            scripted = torch.jit.script(self.model)
        with _training(scripted, False):
            _atomic_write(pth, lambda h: torch.jit.save(scripted, h, _extra_files={"data_modifier.pth": ""}))
        eager = self.eager_model()
        state = {"_extra_state": {"model_params": copy.deepcopy(self.source.model_params if self.source else {}),
                                  "train_infos": {"lr": 0.0, "step": 0}}}
        record: dict = {}
        if self.source is not None and self.source.checkpoint is not None:
            record = {k: v for k, v in self.source.checkpoint.items() if k != "model"}
            state["_extra_state"] = copy.deepcopy(self.source.checkpoint["model"]["_extra_state"])
        state.update({CHECKPOINT_PREFIX + k: v.detach().cpu() for k, v in eager.state_dict().items()})
        record["model"] = state
        atomic_torch_save(record, ckpt)
        return pth
