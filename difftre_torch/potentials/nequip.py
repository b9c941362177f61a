"""NequIP-framework models (nequip 0.19) as potentials, evaluated energy-only.

Reading and writing model files (``load_nequip``, ``save_nequip``, the formats in and out):
:mod:`difftre_torch.potentials.nequip_files`.

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

Measured with nequip 0.19.1, torch 2.13.0+cpu, e3nn 0.6.0 (tests/test_nequip.py and
tests/test_nequip_files.py; 2 CPU cores):

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
  ``file_system`` multiprocessing sharing strategy. ``_nequip_state``
  (:mod:`difftre_torch.potentials.nequip_files`) restores the default dtype and the RNG
  states; the other process-wide settings stay.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from difftre_torch.neighbors import Pairs, neighbor_pairs, pair_vectors
from difftre_torch.potentials.types import atom_types, type_table

SOLE_MODEL_KEY = "sole_model"  # nequip's key for a single model in a checkpoint's ModuleDict
_DATA_DTYPE = torch.float64  # nequip's data dtype (positions, cell, shifts), whatever the model dtype


@dataclass
class NequIPSource:
    """Where a :class:`NequIPPotential` came from, kept so that
    :func:`~difftre_torch.potentials.nequip_files.save_nequip` can write back.

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
        self.model = model
        self.type_names = list(type_names)
        self.r_max_A = float(r_max_A)
        self.compiled = bool(compiled)
        self.source = source
        table = type_table(self.type_names, chemical_species_to_atom_type_map or {t: t for t in self.type_names},
                           "NequIPPotential")
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
        return atom_types(self.type_of_number, numbers, self.type_names, "NequIPPotential")

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
