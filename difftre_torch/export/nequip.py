"""A refined NequIP model for LAMMPS: ``nequip-compile --target pair_nequip``, and the pair
correction folded into the NequIP model so that one ``.nequip.pt2`` carries U_base + ΔU.

LAMMPS runs NequIP models as ``pair_style nequip`` / ``pair_coeff * * model.nequip.pt2 C N``
(the pair_nequip_allegro plugin, built with ``NEQUIP_AOT_COMPILE``). What the plugin does, read
from its source (``pair_nequip_allegro.cpp``): one MPI rank only, ``newton pair off``; the
neighbour cutoff is the model metadata's ``r_max`` (or its ``per_edge_type_cutoff`` matrix when
present); the graph is the local atoms only, each edge to a ghost mapped back to its local atom
with an integer ``edge_cell_shift``, i.e. the inputs pos, edge_index, atom_types, cell,
edge_cell_shift of nequip's ``pair_nequip`` compile target, the same as its ``ase`` target; it
reads the outputs atomic_energy (summed over local atoms), forces and virial.

* :func:`compile_for_lammps`: ``nequip-compile MODEL OUT --mode aotinductor --device DEVICE
  --target pair_nequip`` (nequip 0.19.1's CLI; OUT must end in ``.nequip.pt2``), run as a
  subprocess, written atomically; :class:`LammpsExportError` naming the model file and the
  command's last stderr lines when it fails.
* :func:`fold_correction`: a nequip checkpoint of base + :class:`~difftre_torch.potentials.
  correction.PairCorrection` that nequip's own tools take (``nequip-compile`` of every target;
  nequip's loaders). How: nequip 0.19 builds a checkpoint's model from the hydra ``_target_``
  config stored in it, and its NequIP builders take a ``pair_potential`` module (as for ZBL)
  that adds per-edge energies to the per-atom energy before ``ForceStressOutput`` takes forces
  and virial. :func:`NequIPWithPairCorrection` is a model builder that builds the base from its
  own config, with :class:`PairCorrectionEnergy` (ΔU on nequip's full edge list) as that
  ``pair_potential``, and states ``r_max = max(r_max of the base, r_c)`` in the metadata. The
  base keeps its own cutoff inside (its ``EdgeLengthNormalizer`` and Bessel factor are built
  from the base config, r_max 6 Å for the shipped model): its polynomial envelope is exactly 0
  for r ≥ its r_max and its radial MLPs have no bias (SiLU(0) = 0), so the longer edges carry
  zero weights and add exact zeros to its messages. Not through
  ``per_edge_type_cutoff``: that would change the base (its Bessel factor 2π/r_max² uses the
  global r_max) and pair_nequip would prune the neighbour list to those cutoffs, dropping the
  correction's pairs beyond the base's r_max. The correction's coefficients are stored in the
  model config (plain numbers) and held as non-persistent buffers, so the checkpoint's
  state_dict, EMA weights included, is the base's unchanged. Cost: LAMMPS builds the
  neighbour list to r_c = 8 Å instead of 6 Å, about (8/6)³ ≈ 2.4× the edges through every
  layer of the base, whose envelope zeroes them. ``nequip-package build`` of a folded
  checkpoint fails (torch.package: "Module did not match against any action pattern ...
  difftre_torch.export.nequip"; nequip interns only the modules it knows), so a folded model
  travels as the .ckpt (loading it needs difftre_torch) or as the compiled .nequip.pt2
  (needs nothing of difftre_torch).

Units: Å, eV; cells as rows.
"""

from __future__ import annotations

import copy
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from difftre_torch.potentials.correction import gaussian_basis

try:  # nequip is optional for difftre_torch; this module's nequip classes need it
    from nequip.nn import GraphModuleMixin
except ImportError as _error:  # pragma: no cover - exercised only without nequip
    _NEQUIP_IMPORT_ERROR = _error

    class GraphModuleMixin:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            raise ImportError(f"difftre_torch.export.nequip needs nequip: {_NEQUIP_IMPORT_ERROR}")

PT2_SUFFIX = ".nequip.pt2"  # nequip-compile's required suffix for --mode aotinductor
_STDERR_LINES = 25  # how much of nequip-compile's stderr an error quotes


class LammpsExportError(ValueError):
    """``nequip-compile`` failed for a model file (the message names it and quotes stderr)."""


def compile_for_lammps(model_file: str | os.PathLike, out: str | os.PathLike, device: str = "cpu") -> Path:
    """``nequip-compile MODEL_FILE OUT --mode aotinductor --device DEVICE --target pair_nequip``
    (:func:`~difftre_torch.potentials.compiled.compile_nequip`).

    model_file: a nequip ``.ckpt`` (e.g. what :func:`~difftre_torch.potentials.nequip_files.save_nequip`
    or :func:`fold_correction` writes) or ``.nequip.zip``. out: the ``.nequip.pt2`` for
    ``pair_coeff * * OUT <types>``; written atomically. device: where LAMMPS will run it ("cpu",
    "cuda"); an AOTInductor model runs only on the device it was compiled for. nequip-compile
    takes its example frame from the checkpoint's training data, which must be where the
    checkpoint says. Returns ``out``; :class:`LammpsExportError` (a ValueError) naming
    ``model_file`` and quoting the last lines of nequip-compile's stderr when it fails.
    """
    from difftre_torch.potentials.compiled import NequipCompileError, compile_command, compile_nequip

    model_file, out = Path(model_file).resolve(), Path(out).resolve()
    if not out.name.endswith(PT2_SUFFIX):
        raise ValueError(f"compile_for_lammps: the output must end in {PT2_SUFFIX} (nequip-compile's "
                         f"rule for --mode aotinductor), got {out.name}")
    if not model_file.exists():
        raise FileNotFoundError(f"compile_for_lammps: {model_file} does not exist")
    try:
        return compile_nequip(model_file, out, device=device, target="pair_nequip")
    except NequipCompileError as exc:
        tail = "\n".join(exc.stderr.strip().splitlines()[-_STDERR_LINES:])
        command = " ".join(compile_command(model_file, out, device=device, target="pair_nequip"))
        raise LammpsExportError(f"nequip-compile could not compile {model_file} for LAMMPS pair_nequip "
                                f"(command: {command}); last lines of its stderr:\n{tail}") from None


# ---------------------------------------------------------------------------------------------
# folding the pair correction into the NequIP model


class PairCorrectionEnergy(GraphModuleMixin, torch.nn.Module):
    """ΔU of :class:`~difftre_torch.potentials.correction.PairCorrection` as a nequip graph
    module (a ``pair_potential`` of nequip's model builders), on nequip's full edge list:

        E_i += ½ Σ_{e = (i→j), r_e < r_c} Σ_k C_{t_i t_j, k} b_k(r_e) + ε_{t_i},
        b_k(r) = exp(−((r − μ_k)/w)²) · ½[1 + cos(π r / r_c)],

    each unordered pair (and each periodic image) appearing as i→j and j→i, so Σ_i E_i adds
    Σ_{i<j} Σ_k C b_k exactly as the half-list sum of PairCorrection. type_names: the model's
    atom types (nequip passes them). cutoff_A: r_c. centers_A: μ_k [K]. width_A: w.
    pair_coefficients_eV: C [T][T][K] (symmetric in the two types). per_type_energy_eV: ε [T],
    the correction's shift plus mean-field term of each type's species. Computed in float64
    from nequip's float64 edge lengths; added to the per-atom energy in its dtype (model_dtype).
    """

    def __init__(self, type_names: list[str], cutoff_A: float, centers_A: list[float], width_A: float,
                 pair_coefficients_eV: list, per_type_energy_eV: list[float], irreps_in=None) -> None:
        super().__init__()
        from nequip.data import AtomicDataDict

        num_types = len(type_names)
        coefficients = torch.as_tensor(pair_coefficients_eV, dtype=torch.float64)
        per_type = torch.as_tensor(per_type_energy_eV, dtype=torch.float64)
        centers = torch.as_tensor(centers_A, dtype=torch.float64)
        if coefficients.shape != (num_types, num_types, centers.numel()) or per_type.shape != (num_types,):
            raise ValueError(f"PairCorrectionEnergy: expected pair_coefficients_eV [{num_types}][{num_types}]"
                             f"[{centers.numel()}] and per_type_energy_eV [{num_types}] for types "
                             f"{list(type_names)}, got {tuple(coefficients.shape)} and {tuple(per_type.shape)}")
        if not torch.equal(coefficients, coefficients.transpose(0, 1)):
            raise ValueError("PairCorrectionEnergy: pair_coefficients_eV must be symmetric in the two types")
        self.num_types = num_types
        self.cutoff_A = float(cutoff_A)
        self.width_A = float(width_A)
        # non-persistent: the values live in the model config, so the state_dict stays the base's
        self.register_buffer("centers_A", centers, persistent=False)
        self.register_buffer("pair_coefficients", coefficients.reshape(num_types * num_types, -1), persistent=False)
        self.register_buffer("per_type_energy", per_type, persistent=False)
        self._init_irreps(irreps_in=irreps_in, irreps_out={AtomicDataDict.PER_ATOM_ENERGY_KEY: "0e"})

    def forward(self, data: dict) -> dict:
        from nequip.data import AtomicDataDict as K
        from nequip.nn.utils import scatter, with_edge_vectors_

        data = with_edge_vectors_(data, with_lengths=True)
        r = data[K.EDGE_LENGTH_KEY].reshape(-1).to(self.centers_A.dtype)
        edge_index = data[K.EDGE_INDEX_KEY]
        types = data[K.ATOM_TYPE_KEY].reshape(-1)
        pair_type = types[edge_index[0]] * self.num_types + types[edge_index[1]]
        basis = gaussian_basis(r, self.centers_A, self.width_A, self.cutoff_A)  # [E, K]
        edge_energy = 0.5 * (basis * self.pair_coefficients[pair_type]).sum(-1)
        energy = data[K.PER_ATOM_ENERGY_KEY]  # [N, 1], model_dtype
        atomic = scatter(edge_energy, edge_index[0], dim=0, dim_size=energy.shape[0]) + self.per_type_energy[types]
        data[K.PER_ATOM_ENERGY_KEY] = energy + atomic.to(energy.dtype).unsqueeze(-1)
        return data


_BUILDER_ARGS = ("_target_", "seed", "model_dtype", "compile_mode", "type_names")


def _build_with_pair_correction(r_max: float, type_names: list[str], base_model: dict,
                                pair_correction: dict):
    """The base builder (nested inside nequip's ``model_builder``, so it returns its unwrapped
    ForceStressOutput) with :class:`PairCorrectionEnergy` as its ``pair_potential``."""
    from hydra.utils import get_method

    config = {k: v for k, v in base_model.items() if k not in _BUILDER_ARGS}
    if config.get("pair_potential") is not None:
        raise ValueError("NequIPWithPairCorrection: the base model already has a pair_potential "
                         f"({config['pair_potential'].get('_target_')}); folding a second one is not supported")
    if float(config["r_max"]) > float(r_max):
        raise ValueError(f"NequIPWithPairCorrection: r_max {r_max} is below the base's {config['r_max']}")
    config["pair_potential"] = {"_target_": f"{__name__}.PairCorrectionEnergy", "_convert_": "all",
                                **pair_correction}
    return get_method(base_model["_target_"])(type_names=list(type_names), **config)


def NequIPWithPairCorrection(**kwargs):
    """nequip model builder (a checkpoint's ``model: _target_``) of base + pair correction.

    kwargs: seed, model_dtype, type_names (nequip's mandatory builder arguments, the base's);
    r_max (Å, the model metadata's cutoff: max of the base's and r_c, what LAMMPS builds its
    neighbour list to); base_model (the base's builder config, with its own r_max);
    pair_correction (the arguments of :class:`PairCorrectionEnergy` but type_names).
    """
    from nequip.model.utils import model_builder

    return model_builder(_build_with_pair_correction)(**kwargs)


def folded_terms(correction, type_names: list[str], type_of_number: torch.Tensor) -> dict:
    """A :class:`~difftre_torch.potentials.correction.PairCorrection` as the arguments of
    :class:`PairCorrectionEnergy` for a model with atom types ``type_names``: C[t, t'] =
    c_{t(s, s')} and ε_t = e_s + m_s for the species s of type t. type_of_number: atomic number
    → type index ([119], −1: none; :attr:`NequIPPotential.type_of_number`). ValueError when a
    type has no species of the correction, or two species share a type."""
    from ase.data import chemical_symbols

    species = [int(z) for z in correction.spec.species]
    species_of_type: dict[int, int] = {}
    for s, z in enumerate(species):
        t = int(type_of_number[z])
        if t < 0:
            continue
        if t in species_of_type:
            raise ValueError(f"fold_correction: elements {chemical_symbols[species[species_of_type[t]]]} and "
                             f"{chemical_symbols[z]} both map to model type {type_names[t]}")
        species_of_type[t] = s
    missing = [name for t, name in enumerate(type_names) if t not in species_of_type]
    if missing:
        raise ValueError(f"fold_correction: model type(s) {missing} have no species in the correction "
                         f"(its species: {[chemical_symbols[z] for z in species]})")
    index = torch.tensor([species_of_type[t] for t in range(len(type_names))])
    with torch.no_grad():
        coefficients = correction.coefficients.detach().double().cpu()
        channel = correction.channel.cpu()[index][:, index]  # [T, T]
        per_species = (correction.shifts + correction.mean_field()).detach().double().cpu()
    return {
        "cutoff_A": float(correction.spec.cutoff_A),
        "centers_A": [float(c) for c in correction.spec.centers_A],
        "width_A": float(correction.spec.width_A),
        "pair_coefficients_eV": coefficients[channel].tolist(),
        "per_type_energy_eV": per_species[index].tolist(),
    }


def _with_neighbor_cutoff(data_config: dict, r_max: float) -> dict:
    """The checkpoint's data config with its NeighborListTransform's r_max set to ``r_max`` (the
    example frame nequip-compile traces with then has the folded model's edges)."""
    data_config = copy.deepcopy(data_config)
    for transform in data_config.get("transforms", []) or []:
        if isinstance(transform, dict) and str(transform.get("_target_", "")).endswith("NeighborListTransform"):
            transform["r_max"] = float(r_max)
    return data_config


def fold_correction(base_model_file: str | os.PathLike, correction_file: str | os.PathLike,
                    out_ckpt: str | os.PathLike, *,
                    chemical_species_to_atom_type_map: dict[str, str] | None = None) -> Path:
    """Write ``out_ckpt``: a nequip checkpoint of U_base + ΔU (see the module docstring) that
    ``nequip-compile`` (any target; :func:`compile_for_lammps`) and nequip's loaders accept.

    base_model_file: the base ``.ckpt`` the correction was refined with (``<stem>.base.ckpt``
    beside ``<stem>.correction.pt``, as :func:`~difftre_torch.potentials.io.save_potential`
    writes them; or the original base when it was frozen). correction_file: the
    ``<stem>.correction.pt`` (the base file it names must exist beside it:
    :func:`~difftre_torch.potentials.io.load_corrected` checks; ``base_model_file`` is the one
    folded). chemical_species_to_atom_type_map: element → type name when the
    base's type names are not element symbols. The checkpoint is the base's with its model
    config replaced by a :func:`NequIPWithPairCorrection` config (the correction's numbers in
    it, in float64) and the data's neighbour cutoff raised to the folded r_max; weights and
    EMA weights unchanged. Loading it needs difftre_torch importable (the builder lives
    here); the compiled .nequip.pt2 does not. Returns ``out_ckpt``.
    """
    from difftre_torch.checkpoint import atomic_torch_save
    from difftre_torch.potentials.io import load_corrected
    from difftre_torch.potentials.nequip_files import _with_model_dtype, load_nequip

    out_ckpt = Path(out_ckpt).resolve()
    if out_ckpt.suffix != ".ckpt":
        raise ValueError(f"fold_correction: the output is a nequip checkpoint (.ckpt), got {out_ckpt.name}")
    base_model_file = Path(base_model_file).resolve()
    corrected = load_corrected(
        correction_file,
        lambda _named: load_nequip(base_model_file, chemical_species_to_atom_type_map=chemical_species_to_atom_type_map),
        dtype=torch.float64)
    base, correction = corrected.base, corrected.correction
    if base.source is None or base.source.format != "checkpoint":
        raise ValueError(f"fold_correction: {base_model_file}: expected a nequip checkpoint (.ckpt); "
                         f"save_nequip writes one for checkpoint and package models")
    checkpoint = dict(base.source.checkpoint)
    hyper = copy.deepcopy(checkpoint["hyper_parameters"])
    base_config = _with_model_dtype(hyper["model"], base.source.model_dtype)  # ModelFrom* → builder config
    r_max = max(float(base_config["r_max"]), correction.cutoff_A)
    folded = {
        "_target_": f"{__name__}.NequIPWithPairCorrection",
        "seed": base_config["seed"],
        "model_dtype": base.source.model_dtype,
        "type_names": list(base.type_names),
        "r_max": r_max,
        "base_model": base_config,
        "pair_correction": folded_terms(correction, base.type_names, base.type_of_number),
    }
    hyper["model"] = folded
    info = hyper.get("info_dict", {})
    if isinstance(info.get("training_module"), dict) and "model" in info["training_module"]:
        info["training_module"]["model"] = folded
    if isinstance(info.get("data"), dict):
        info["data"] = _with_neighbor_cutoff(info["data"], r_max)
    checkpoint["hyper_parameters"] = hyper
    checkpoint["difftre_torch"] = {
        "written_by": f"{__name__}.fold_correction",
        "written_at": datetime.now(timezone.utc).isoformat(),
        "base": str(base_model_file),
        "correction": str(Path(correction_file).resolve()),
    }
    return atomic_torch_save(checkpoint, out_ckpt)
