"""What the g-C3N4 recipe reads: the model, the starting cell, the experiment, the frames.

Conventions: cell vectors are rows (ASE); G(r) = 4πρr(g − 1) in Å⁻² as the experiment's .gr file
states it (its header also gives the instrument's Q range and window, which become the target's
options, so the model's G is computed through the same ones); lattice parameters of the 28-atom
AB unit: a = mean in-plane length (|a₁|/n₁ + |a₂|/n₂)/2, c = |a₃|/n₃ (Å), interlayer spacing
V/|a₁ × a₂|/(layers · n₃).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read

from difftre_torch.experiment.readers import read_experiment
from difftre_torch.experiment.target import Target
from recipes.gc3n4.config import RecipeConfig

NPT, NVT = "npt", "nvt_exp"  # state point names: own density; at the experiment's cell


def _require(path: Path, what: str, producer: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; it is made by `{producer}` "
                                "(or set its path in the recipe config)")
    return path


def load_model(config: RecipeConfig, path: Path | None = None):
    """The NequIP model of ``paths.model`` (or ``path``) as a trainable potential; a
    ``*.correction.pt`` file (a refined base + pair correction) gives a CorrectedPotential."""
    from difftre_torch.potentials.io import CORRECTION_SUFFIX, load_corrected
    from difftre_torch.potentials.nequip_files import load_nequip

    path = _require(path or config.path("model"), "model", "python -m recipes.world.train_base --publish")
    device = config.model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"float32": torch.float32, "float64": torch.float64}[config.model.dtype]
    if path.name.endswith(CORRECTION_SUFFIX):
        return load_corrected(path, lambda base: load_nequip(base, device=device, dtype=dtype))
    return load_nequip(path, device=device, dtype=dtype)


def refinable(config: RecipeConfig, potential):
    """The potential DiffTRe refines, per ``refine.parameters``: the base itself ("model"), or the
    base plus a zero pair correction over the atoms' species ("correction": base frozen; "both"),
    its mean-field offset taken at the start cell's partial densities."""
    if config.refine.parameters == "model":
        return potential
    from difftre_torch.potentials.ase_calculator import potential_device_dtype
    from difftre_torch.potentials.correction import CorrectedPotential, PairCorrection, PairCorrectionSpec

    from difftre_torch.potentials.correction import species_densities

    atoms = start_cell(config)
    species = sorted(set(int(z) for z in atoms.numbers))
    device, dtype = potential_device_dtype(potential)
    spec = PairCorrectionSpec(species=species, **config.refine.correction,
                              reference_densities_per_A3=species_densities(atoms.numbers, atoms.get_volume(), species))
    correction = PairCorrection(spec, dtype=dtype, device=device)
    return CorrectedPotential(potential, correction, train_base=config.refine.parameters == "both")


def start_cell(config: RecipeConfig) -> Atoms:
    """The simulated supercell (``system.cell``) of the unit in ``paths.structure``."""
    from recipes.world.structures import CELLS, make_cell

    path = _require(config.path("structure"), "structure", "python -m recipes.world.relax")
    unit = read(path)
    unit.calc = None
    if config.system.cell not in CELLS:
        raise ValueError(f"{config.source}: system.cell {config.system.cell!r} is not one of {sorted(CELLS)}")
    atoms = make_cell(unit, config.system.cell)
    repeats = CELLS[config.system.cell][0]
    if list(repeats) != list(config.system.repeats):
        raise ValueError(f"{config.source}: system.repeats {config.system.repeats} does not match "
                         f"cell {config.system.cell!r} ({list(repeats)})")
    return atoms


def at_lattice(atoms: Atoms, a_A: float, c_A: float, repeats) -> Atoms:
    """``atoms`` with its cell scaled (atoms with it) to unit lattice parameters a, c (Å)."""
    out = atoms.copy()
    lengths = out.cell.lengths()
    scale = np.array([a_A * repeats[0] / lengths[0], a_A * repeats[1] / lengths[1], c_A * repeats[2] / lengths[2]])
    out.set_cell(out.cell.array * scale[:, None], scale_atoms=True)
    return out


@dataclass
class ExperimentTargets:
    """The experiment as targets. ``fit``: what the refinement fits (G in the fit range, a, spacing);
    ``report``: what the comparison reports (G and g in the report range, a, c, spacing);
    ``lattice``: lattice.json as read."""

    fit: list[Target]
    report: list[Target]
    lattice: dict


def _crop(t: Target, r_range, name: str, weight: float, sigma_floor: float) -> Target:
    keep = (t.x >= r_range[0]) & (t.x <= r_range[1])
    sigma = None if t.sigma is None else torch.sqrt(t.sigma[keep] ** 2 + sigma_floor**2)
    return Target(name, t.observable, t.values[keep], t.x[keep], sigma, weight, t.state_point, dict(t.options))


def _lattice_value(lattice: dict, key: str, path: Path) -> tuple[float, float]:
    name, unit = key.split("_", 1)
    error_key = f"{name}_err_{unit}"
    for k in (key, error_key):
        if k not in lattice:
            raise KeyError(f"{path}: field {k!r} is missing (expected a_A, c_A, spacing_A and "
                           "a_err_A, c_err_A, spacing_err_A, in Å)")
    return float(lattice[key]), float(lattice[error_key])


def experiment_targets(config: RecipeConfig) -> ExperimentTargets:
    """Targets from ``paths.experiment``: the total G(r) file and lattice.json."""
    exp = config.path("experiment")
    total_path = _require(exp / config.experiment.total, "experiment file", "python -m recipes.world.experiment")
    data = read_experiment(total_path)
    if data.function != "G":
        raise ValueError(f"{total_path}: expected a G(r) file (function G), got {data.function!r}")
    G = data.to_target("G_total")
    lattice_path = _require(exp / config.experiment.lattice, "lattice file", "python -m recipes.world.experiment")
    lattice = json.loads(lattice_path.read_text())
    (a, sa), (c, sc), (d, sd) = (_lattice_value(lattice, k, lattice_path) for k in ("a_A", "c_A", "spacing_A"))
    rep = list(config.system.repeats)
    w = config.experiment.lattice_weight
    a_t = Target("a", "lattice_length", [a, a], sigma=[sa, sa], weight=w, options={"axes": "ab", "repeats": rep})
    c_t = Target("c", "lattice_length", [c], sigma=[sc], weight=w, options={"axes": "c", "repeats": rep})
    d_t = Target("spacing", "interlayer_spacing", [d], sigma=[sd], weight=w,
                 options={"layers_per_cell": config.system.layers_per_unit * rep[2]})
    e = config.experiment
    # the fit takes a and the interlayer spacing, not |c|: at 300 K reality's layers slide
    # (measured, replica 1: |c| 7.19 → 7.39 Å between its two halves, spacing 3.55 → 3.52 Å),
    # so |c| depends on the stacking's drift while the spacing V/|a₁ × a₂| is what binds
    fit = [_crop(G, e.fit_r_A, "G_total", e.total_weight, e.sigma_floor), a_t, d_t]
    report = [_crop(G, e.report_r_A, "G_total", 1.0, 0.0), a_t, c_t, d_t]
    g_path = exp / f"{data.metadata.get('mode', 'neutron')}_rdf.csv"
    if g_path.exists():
        g = read_experiment(g_path, function="rdf").to_target("g_total", weighting=G.options.get("weighting", "neutron"))
        report.append(_crop(g, e.report_r_A, "g_total", 1.0, 0.0))
    return ExperimentTargets(fit=fit, report=report, lattice=lattice)


def read_frames(path: Path, what: str, producer: str) -> list[Atoms]:
    """All frames of an extxyz file with energy/forces (stress optional) labels."""
    frames = read(_require(path, what, producer), index=":")
    if not frames:
        raise ValueError(f"{path}: no frames")
    for k, atoms in enumerate(frames):
        atoms.info["source_file"] = f"{path} frame {k}"
    return frames


def binding_reference(config: RecipeConfig) -> dict:
    """The teacher's and reality's binding curves (recipes.world.binding's JSON)."""
    path = _require(config.path("binding"), "binding curve", "python -m recipes.world.binding")
    data = json.loads(path.read_text())
    for key in ("spacing_A", "teacher_meV_per_atom", "reality_meV_per_atom"):
        if key not in data:
            raise KeyError(f"{path}: field {key!r} is missing")
    return data
