"""Reusable helpers for tests and benchmarks: small labelled frames and a tiny real NequIP model.

:func:`train_tiny_nequip` runs ``nequip-train`` (nequip 0.19) for one epoch on a handful of
EMT-labelled C/N frames: a real checkpoint (EMA, float32, l_max 1, 4 features, 2 layers,
r_max 4 Å) in ~10 s on 2 CPU cores, for tests of loading, refining and writing back NequIP models
and for benchmarks that need a model of the real architecture.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np

TINY_NEQUIP_DESCRIPTION = "NequIP (nequip-train, 1 epoch, float32, l_max 1, 4 features, 2 layers, r_max 4 Å)"


def nequip_cli(name: str) -> str:
    """Path of a nequip console script (nequip-train, nequip-package, ...) of this interpreter."""
    from difftre_torch.environment import console_script

    return console_script(name, "is nequip installed?")


def emt_labelled(atoms):
    """``atoms`` with EMT's energy (eV) and forces (eV/Å) frozen in a SinglePointCalculator
    (what ``ase.io.write`` stores as labels); returns ``atoms``."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = EMT()
    results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def tiny_cn_frames(n_frames: int = 6, seed: int = 0):
    """Periodic C4N4 frames, perturbed simple-cubic arrangement, EMT labels; odd frames triclinic."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) / 2.0
    frames = []
    for k in range(n_frames):
        cell = np.diag([4.4, 4.6, 4.8])
        if k % 2:
            cell = cell + np.array([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.4, -0.6, 0.0]])
        frac = grid + rng.normal(scale=0.04, size=grid.shape)
        frames.append(emt_labelled(Atoms(numbers=[6, 7] * 4, scaled_positions=frac, cell=cell,
                                         pbc=True)))
    return frames


_TINY_NEQUIP_CONFIG = """\
run: [train]
seed: {seed}
cutoff_radius: 4.0
model_type_names: [{type_names}]
data:
  _target_: nequip.data.datamodule.ASEDataModule
  seed: ${{seed}}
  train_file_path: {data}
  val_file_path: {data}
  transforms:
    - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
      model_type_names: ${{model_type_names}}
      chemical_species_to_atom_type_map: ${{list_to_identity_dict:${{model_type_names}}}}
    - _target_: nequip.data.transforms.NeighborListTransform
      r_max: ${{cutoff_radius}}
  train_dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: {train_batch}}}
  val_dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: {val_batch}}}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${{model_type_names}}
trainer:
  _target_: lightning.Trainer
  max_epochs: {max_epochs}
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  callbacks:
    - {{_target_: lightning.pytorch.callbacks.ModelCheckpoint, dirpath: {out}, save_last: true}}
training_module:
  _target_: nequip.train.EMALightningModule
  ema_decay: 0.9
  loss:
    _target_: nequip.train.EnergyForceLoss
    per_atom_energy: true
    coeffs: {{total_energy: 1.0, forces: 1.0}}
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs: {{total_energy_mae: 1.0, forces_mae: 1.0}}
  optimizer: {{_target_: torch.optim.Adam, lr: 0.01}}
  model:
    _target_: nequip.model.NequIPGNNModel
    seed: ${{seed}}
    model_dtype: float32
    type_names: ${{model_type_names}}
    r_max: ${{cutoff_radius}}
    l_max: 1
    parity: false
    num_layers: 2
    num_features: {num_features}
    radial_mlp_depth: 1
    radial_mlp_width: {radial_mlp_width}
    num_bessels: {num_bessels}
    avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
    per_type_energy_shifts: ${{training_data_stats:per_atom_energy_mean}}
    per_type_energy_scales: ${{training_data_stats:forces_rms}}
"""


def train_tiny_nequip(root: str | Path, frames=None, *, type_names: tuple[str, ...] = ("C", "N"),
                      seed: int = 3, max_epochs: int = 1, num_features: int = 4,
                      radial_mlp_width: int = 8, num_bessels: int = 4, train_batch: int = 3,
                      val_batch: int = 6) -> Path:
    """``nequip-train`` (EMA, float32, l_max 1, 2 layers, r_max 4 Å; sizes as given) on ``frames``
    (default :func:`tiny_cn_frames`) in ``root``; returns ``root/run/last.ckpt``. The training
    data (``root/data.xyz``, absolute path in the config) stays next to it, so
    ``nequip-package build`` works. RuntimeError on failure."""
    from ase.io import write

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data.xyz"
    write(data, tiny_cn_frames() if frames is None else frames)
    out = root / "run"
    (root / "tiny.yaml").write_text(textwrap.dedent(_TINY_NEQUIP_CONFIG).format(
        data=data, out=out, seed=seed, type_names=", ".join(type_names), max_epochs=max_epochs,
        num_features=num_features, radial_mlp_width=radial_mlp_width, num_bessels=num_bessels,
        train_batch=train_batch, val_batch=val_batch))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [nequip_cli("nequip-train"), "-cp", str(root), "-cn", "tiny", f"hydra.run.dir={out}"],
        cwd=root, env=env, capture_output=True, text=True,
    )
    ckpt = out / "last.ckpt"
    if result.returncode != 0 or not ckpt.exists():
        raise RuntimeError(f"nequip-train failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return ckpt


def fake_aoti_model(graph_model, batched: bool = True):
    """A stand-in for nequip's ``DictInputOutputWrapper`` around an AOTInductor runner (``--target
    batch`` when ``batched``, else ``ase``): no parameters, dict in, detached inference-mode
    outputs, computed by the eager full-force nequip ``graph_model`` inside. For tests of the
    compiled-model paths without a (slow) ``nequip-compile``."""
    import torch

    from difftre_torch.potentials.nequip import _force_output

    class FakeAOTIModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = [graph_model]  # hidden from .parameters(), like the compiled runner
            self.input_keys = ["pos", "edge_index", "atom_types", "cell", "edge_cell_shift"]
            if batched:
                self.input_keys += ["batch", "num_atoms"]
            self.output_keys = ["atomic_energy", "total_energy", "forces", "stress"]

        def forward(self, data):
            model = self.inner[0]
            with _force_output(model, True), torch.enable_grad():
                out = model({k: data[k] for k in self.input_keys})
            with torch.inference_mode():
                return {k: out[k].detach().clone() for k in self.output_keys}

    return FakeAOTIModel()


def as_batch(frames) -> tuple:
    """ASE frames of one system as (positions [B, N, 3] Å, cell [B, 3, 3] Å rows, numbers [N]),
    float64 (the potentials' input contract)."""
    import torch

    pos = torch.tensor(np.stack([a.positions for a in frames]))
    cell = torch.tensor(np.stack([a.cell.array for a in frames]))
    return pos, cell, torch.tensor(frames[0].numbers)


def package_build(checkpoint: str | Path, out: str | Path) -> Path:
    """``nequip-package build checkpoint out``; raises with nequip's stderr if it fails."""
    out = Path(out)
    result = subprocess.run([nequip_cli("nequip-package"), "build", str(checkpoint), str(out)],
                            capture_output=True, text=True)
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"nequip-package build {checkpoint} failed:\n{result.stderr[-3000:]}")
    return out


def calculator_results(calc, atoms) -> tuple:
    """(energy eV, forces [N, 3] eV/Å, stress [3, 3] eV/Å³) of ``atoms`` from an ASE calculator,
    under nequip's float64 default dtype (as nequip's set_global_state leaves it)."""
    import torch
    from nequip.utils.dtype import torch_default_dtype

    atoms = atoms.copy()
    atoms.calc = calc
    with torch_default_dtype(torch.float64):
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)



TINY_DEEPMD_DESCRIPTION = "DeePMD-kit se_e2_a (dp --pt train, 4 steps, float64, r_c 4 Å, nets [4, 8] / [8])"


def write_deepmd_npy(frames, out: str | Path, type_map: tuple[str, ...] = ("C", "N")) -> list[Path]:
    """:func:`difftre_torch.frames.write_deepmd_npy` with the tiny frames' types (C, N)."""
    from difftre_torch.frames import write_deepmd_npy as write

    return write(frames, out, type_map)


def tiny_deepmd_input(systems: list[str], steps: int = 4, precision: str = "float64") -> dict:
    """DeePMD-kit's training input of the tiny model (se_e2_a, r_c 4 Å)."""
    return {
        "model": {"type_map": ["C", "N"],
                  "descriptor": {"type": "se_e2_a", "rcut": 4.0, "rcut_smth": 0.5, "sel": [40, 40],
                                 "neuron": [4, 8], "axis_neuron": 4, "precision": precision, "seed": 1},
                  "fitting_net": {"neuron": [8], "precision": precision, "seed": 1}},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 2},
        "loss": {"type": "ener", "start_pref_e": 1, "limit_pref_e": 1, "start_pref_f": 10, "limit_pref_f": 10},
        "training": {"training_data": {"systems": systems, "batch_size": 1}, "numb_steps": steps,
                     "seed": 1, "disp_freq": steps, "save_freq": steps},
    }


def dp_cli(*args: str, cwd: str | Path) -> None:
    """``dp <args>`` of this interpreter in ``cwd``; RuntimeError with its output on failure."""
    from difftre_torch.environment import console_script

    result = subprocess.run([console_script("dp", "is deepmd-kit installed?"), *args], cwd=cwd, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        raise RuntimeError(f"dp {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def train_tiny_deepmd(root: str | Path, frames=None, *, steps: int = 4) -> tuple[Path, Path]:
    """``dp --pt train`` of the tiny se_e2_a model on ``frames`` (default :func:`tiny_cn_frames`,
    as deepmd/npy in ``root/data``), then ``dp --pt freeze``; returns (checkpoint
    ``root/model.ckpt-<steps>.pt``, frozen ``root/tiny.pth``). About 15 s on 2 CPU cores."""
    import json

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    systems = write_deepmd_npy(tiny_cn_frames() if frames is None else frames, root / "data")
    (root / "input.json").write_text(json.dumps(tiny_deepmd_input([str(s) for s in systems], steps), indent=1))
    dp_cli("--pt", "train", "input.json", cwd=root)
    dp_cli("--pt", "freeze", "-c", ".", "-o", "tiny.pth", cwd=root)
    return root / f"model.ckpt-{steps}.pt", root / "tiny.pth"
