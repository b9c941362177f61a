"""``difftre check``: every mistake it can see in a job file is one line naming the file and the field.

Each case writes a small valid job (a 2-species rock-salt structure, a G(r) CSV, a .gr file, a
lattice JSON, labelled and unlabelled frames, all in ``tmp_path``), changes one thing and runs
``difftre_torch.cli.main(["check", ...])``: exit code 2, exactly one line on stderr (no
traceback) naming the config file and the field. Positive cases: the valid job passes and prints
its plan, ``--set`` changes a value, ``extends:`` merges a base file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from difftre_torch.cli import main
from difftre_torch.config import load_job
from difftre_torch.experiment.readers import ExperimentalData, write_gr

SIGMA_A, EPSILON_EV, CUTOFF_A = 2.5, 0.1, 5.0
LATTICE_A = 5.6  # rock-salt cube edge (Å); 8 atoms, repeated 2 × 2 × 2 by the config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth_g(r: np.ndarray) -> np.ndarray:
    """A plausible g(r) of a dense fluid: zero below 2.2 Å, a first peak at 2.8 Å."""
    g = 1.0 + 0.8 * np.exp(-((r - 2.8) / 0.25) ** 2) - 0.3 * np.exp(-((r - 3.6) / 0.4) ** 2)
    return np.where(r < 2.2, 0.0, g)


def write_inputs(folder: Path) -> None:
    """The tiny files a job names: structure, G(r) CSV and .gr, lattice JSON, labelled frames
    (LJ energy/forces as single-point results and as a ``dft_`` prefix), unlabelled frames,
    a non-periodic structure."""
    unit = bulk("NaCl", "rocksalt", a=LATTICE_A, cubic=True)
    write(folder / "structure.extxyz", unit)
    cell = unit.repeat((2, 2, 2))
    r = np.linspace(0.5, 5.0, 46)
    rho = len(cell) / cell.get_volume()
    G = 4 * np.pi * rho * r * (_smooth_g(r) - 1.0)
    np.savetxt(folder / "G.csv", np.c_[r, G, np.full_like(r, 0.05)], delimiter=",", header="r,G,dG", comments="")
    write_gr(folder / "G.gr", ExperimentalData("G", r, G, np.full_like(r, 0.05)), {"mode": "neutron"})
    (folder / "lattice.json").write_text(json.dumps({"a_A": LATTICE_A, "a_err_A": 0.01, "note": "text"}))
    labelled, unlabelled = [], []
    for k in range(3):
        atoms = cell.copy()
        atoms.rattle(0.05, seed=k)
        unlabelled.append(atoms.copy())
        atoms.calc = AseLennardJones(sigma=SIGMA_A, epsilon=EPSILON_EV, rc=CUTOFF_A, smooth=False)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["dft_energy"] = energy + 0.01
        atoms.arrays["dft_forces"] = forces * 1.01
        labelled.append(atoms)
    write(folder / "frames.extxyz", labelled)
    write(folder / "unlabelled.extxyz", unlabelled)
    molecule = unit.copy()
    molecule.pbc = False
    molecule.cell = None
    write(folder / "molecule.xyz", molecule)


def base_config() -> dict:
    """A valid job over the files of :func:`write_inputs` (paths relative to the config)."""
    return {
        "system": {"structure": "structure.extxyz", "repeat": [2, 2, 2]},
        "potential": {"kind": "lennard_jones", "sigma_A": SIGMA_A, "epsilon_eV": EPSILON_EV, "cutoff_A": CUTOFF_A,
                      "correction": {"cutoff_A": CUTOFF_A, "centers_A": [3.0, 4.0], "width_A": 0.7}},
        "sampler": {"kind": "batched", "timestep_fs": 2.0, "equilibration_steps": 50, "reequilibration_steps": 10,
                    "snapshots_per_replica": 10, "stride": 5},
        "state_points": [{"name": "npt", "temperature_K": 300.0, "pressure_GPa": 0.0001, "replicas": 1},
                         {"name": "nvt_exp", "temperature_K": 300.0, "cell": "targets", "refine": False}],
        "targets": [
            {"name": "G_total", "observable": "G", "file": "G.csv", "function": "G", "x_range": [1.0, 4.8]},
            {"name": "a", "observable": "lattice_length", "file": "lattice.json", "value_key": "a_A",
             "sigma_key": "a_err_A", "options": {"axes": "abc", "repeats": [2, 2, 2]}},
        ],
        "force_matching": {"file": "frames.extxyz"},
        "trainer": {"updates": 2, "learning_rate": 0.001, "force_matching_weight": 1.0},
        "compare": {"n_blocks": 2, "targets": [
            {"name": "G_gr", "observable": "G", "file": "G.gr", "x_range": [1.0, 4.8]},
            {"name": "a", "observable": "lattice_length", "file": "lattice.json", "value_key": "a_A",
             "options": {"axes": "abc", "repeats": [2, 2, 2]}}]},
        "evaluation": {"n_boot": 20, "sets": [
            {"name": "rattled", "file": "frames.extxyz", "references": {"lj": "label", "dft": "dft"}}]},
        "report": {"checks": [
            {"kind": "r_w_cut", "target": "G_total", "state_point": "npt", "threshold": 0.1},
            {"kind": "errors_not_worse", "reference": "dft", "metric": "forces_rmse_meV_per_A"}]},
        "output": {"dir": "out"},
    }


@pytest.fixture
def folder(tmp_path) -> Path:
    write_inputs(tmp_path)
    return tmp_path


def write_config(folder: Path, config: dict, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check(capsys, path: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["check", str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- the mistakes


def _set(*keys_value):
    """A mutation that sets config[k1][k2]... = value (keys may be list indices)."""
    *keys, value = keys_value

    def mutate(config: dict, folder: Path) -> None:
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return mutate


def _delete(*keys):
    def mutate(config: dict, folder: Path) -> None:
        node = config
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return mutate


def _nequip_missing_model(config: dict, folder: Path) -> None:
    config["potential"] = {"kind": "nequip", "path": "models/base.ckpt",
                           "correction": {"cutoff_A": CUTOFF_A, "centers_A": [3.0, 4.0]}}


def _headerless_csv(config: dict, folder: Path) -> None:
    """G.csv without its header line (which names the function) and no `function` in the config."""
    lines = (folder / "G.csv").read_text().splitlines()
    (folder / "G.csv").write_text("\n".join(lines[1:]) + "\n")
    del config["targets"][0]["function"]


def _garbage_model(config: dict, folder: Path) -> None:
    (folder / "models").mkdir()
    (folder / "models" / "base.ckpt").write_bytes(bytes(range(256)) * 4)
    config["potential"] = {"kind": "nequip", "path": "models/base.ckpt"}


def _duplicate_target(config: dict, folder: Path) -> None:
    config["targets"][1]["name"] = "G_total"


def _unlabelled_set(config: dict, folder: Path) -> None:
    config["evaluation"]["sets"][0]["file"] = "unlabelled.extxyz"


def _no_lattice_targets(config: dict, folder: Path) -> None:
    del config["targets"][1]
    del config["compare"]


def _structure(name: str, edit: Callable) -> Callable:
    """A mutation that writes the unit cell of structure.extxyz changed by ``edit`` to ``name``
    and names it in system.structure."""
    def mutate(config: dict, folder: Path) -> None:
        from ase.io import read

        atoms = edit(read(folder / "structure.extxyz"))
        if atoms is not None:
            write(folder / name, atoms, format="extxyz")
        config["system"]["structure"] = name
    return mutate


def _close_pair(atoms):
    atoms.positions[4] = atoms.positions[1] + [0.4, 0.0, 0.0]
    return atoms


def _tiny_cell(atoms):  # one atom; a = 0.5 Å, so each atom sits 0.5 Å from its own image
    from ase import Atoms

    return Atoms("Na", positions=[[0.0, 0.0, 0.0]], cell=[0.5, 6.0, 6.0], pbc=True)


def _unknown_element(atoms):
    atoms.numbers[2] = 0
    return atoms


def _slab(atoms):
    atoms.pbc = [True, True, False]
    return atoms


def _flat_cell(atoms):
    cell = atoms.cell.array.copy()
    cell[2] = cell[0] + cell[1]
    atoms.set_cell(cell)
    return atoms


def _one_atom(config: dict, folder: Path) -> None:
    _structure("one.extxyz", lambda atoms: atoms[:1])(config, folder)
    config["system"]["repeat"] = [1, 1, 1]


def _empty_structure(config: dict, folder: Path) -> None:
    (folder / "empty.extxyz").write_text("")
    config["system"]["structure"] = "empty.extxyz"


def _inline_target(**fields) -> Callable:
    """targets[0] as inline values (x, values, sigma) with ``fields`` changed."""
    def mutate(config: dict, folder: Path) -> None:
        entry = {"name": "G_total", "observable": "G", "x": [1.0, 2.0, 3.0], "values": [0.1, 0.2, 0.1],
                 "sigma": [0.05, 0.05, 0.05]}
        entry.update(fields)
        config["targets"][0] = entry
    return mutate


def _no_refinement_with_scan(config: dict, folder: Path) -> None:
    config["trainer"]["updates"] = 0
    config["force_matching"]["scan"] = [0.5]
    del config["report"]


def _nequip(**fields) -> Callable:
    def mutate(config: dict, folder: Path) -> None:
        config["potential"] = {"kind": "nequip", "path": "models/base.ckpt", **fields}
    return mutate


def _check(**fields) -> Callable:
    def mutate(config: dict, folder: Path) -> None:
        config["report"]["checks"][0].update(fields)
    return mutate


def _measured_at(temperature_K: float, pressure_GPa: float | None = None, bind: str | None = None) -> Callable:
    """The lattice file (and the .gr header) stating another state than the job's 300 K, 1 bar."""
    def mutate(config: dict, folder: Path) -> None:
        stated = {"a_A": LATTICE_A, "a_err_A": 0.01, "temperature_K": temperature_K}
        if pressure_GPa is not None:
            stated["pressure_GPa"] = pressure_GPa
        (folder / "lattice.json").write_text(json.dumps(stated))
        if bind is not None:
            config["targets"][1]["state_point"] = bind
    return mutate


def _gr_of_another_sample(config: dict, folder: Path) -> None:
    """G.gr rewritten with the header of a silica sample (the structure is NaCl)."""
    from difftre_torch.experiment.readers import read_experiment

    data = read_experiment(folder / "G.gr")
    write_gr(folder / "G.gr", data, {"mode": "neutron", "composition": "SiO2"})


NAN, INF = float("nan"), float("inf")


# (id, mutation, what the one line must name besides the config file, extra command-line args)
CASES: list[tuple[str, Callable, tuple[str, ...], tuple[str, ...]]] = [
    # structure of the file
    ("unknown section", _set("trainr", {"updates": 3}), ("trainr", "unknown section", "did you mean 'trainer'"), ()),
    ("misspelt trainer field", _set("trainer", "learning_rat", 0.01),
     ("trainer.learning_rat", "did you mean 'learning_rate'"), ()),
    ("misspelt sampler field", _set("sampler", "friction", 0.01), ("sampler.friction", "friction_per_fs"), ()),
    ("misspelt potential option", _set("potential", "sigma", 2.0), ("potential.sigma", "did you mean 'sigma_A'"), ()),
    ("misspelt correction field", _set("potential", "correction", "centres_A", [3.0]),
     ("potential.correction.centres_A", "did you mean 'centers_A'"), ()),
    ("misspelt observable option", _set("targets", 0, "options", {"q_mx": 20.0}),
     ("targets[0]", ".options", "q_mx", "did you mean 'q_max'"), ()),
    ("bad option value", _set("targets", 1, "options", "axes", "abd"), ("targets[1]", ".options", "axes"), ()),
    # types: strings are never coerced, booleans are not numbers
    ("string for an integer", _set("trainer", "updates", "4"), ("trainer.updates", "an integer", "without quotes"), ()),
    ("string for a number", _set("trainer", "learning_rate", "0.001"), ("trainer.learning_rate", "a number"), ()),
    ("string for a boolean", _set("targets", 0, "use_sigma", "false"), ("targets[0].use_sigma", "true or false"), ()),
    ("float for an integer", _set("state_points", 0, "replicas", 2.5), ("state_points[0].replicas", "an integer"), ()),
    ("bool for a number", _set("trainer", "learning_rate", True), ("trainer.learning_rate", "a number", "True"), ()),
    ("bool for an integer", _set("sampler", "stride", True), ("sampler.stride", "an integer"), ()),
    ("string with a unit", _set("state_points", 0, "temperature_K", "300 K"), ("state_points[0].temperature_K",), ()),
    ("list for a mapping", _set("sampler", [1, 2]), ("sampler", "expected a mapping"), ()),
    # required fields
    ("missing structure field", _delete("system", "structure"), ("system.structure", "required field is missing"), ()),
    ("missing potential kind", _delete("potential", "kind"), ("potential.kind", "required field is missing"), ()),
    ("missing state points", _delete("state_points"), ("'state_points'", "missing"), ()),
    ("missing frame set file field", _delete("evaluation", "sets", 0, "file"), ("evaluation.sets[0].file", "required"), ()),
    ("missing check kind", _delete("report", "checks", 0, "kind"), ("report.checks[0].kind", "required"), ()),
    # values out of range
    ("negative timestep", _set("sampler", "timestep_fs", -1.0), ("sampler.timestep_fs", "> 0"), ()),
    ("negative temperature", _set("state_points", 0, "temperature_K", -5.0), ("state_points[0].temperature_K", "> 0"), ()),
    ("repeat of two numbers", _set("system", "repeat", [2, 2]), ("system.repeat", "three integers"), ()),
    ("reversed x_range", _set("targets", 0, "x_range", [4.8, 1.0]), ("targets[0].x_range", "min < max"), ()),
    ("cutoff below sigma", _set("potential", "cutoff_A", 2.0), ("potential: cutoff_A must exceed sigma_A",), ()),
    ("negative weight", _set("targets", 0, "weight", -1.0), ("targets[0].weight", ">= 0"), ()),
    ("no bootstrap resamples", _set("evaluation", "n_boot", 0), ("evaluation.n_boot", ">= 1"), ()),
    ("correction without centres", _set("potential", "correction", "centers_A", []),
     ("potential.correction.centers_A",), ()),
    ("correction of zero width", _set("potential", "correction", "width_A", 0.0), ("potential.correction", "width_A"), ()),
    # fields that would be ignored for this kind of source
    ("x_range on a JSON target", _set("targets", 1, "x_range", [1.0, 2.0]), ("targets[1].x_range", ".json"), ()),
    ("value_key on a CSV target", _set("targets", 0, "value_key", "a_A"), ("targets[0].value_key", ".json"), ()),
    ("grid beside a file", _set("targets", 0, "x", [1.0, 2.0]), ("targets[0].x", "inline"), ()),
    ("unknown lr schedule", _set("trainer", "lr_schedule", "cosin"), ("trainer.lr_schedule", "cosine"), ()),
    ("batched-only setting with the ASE sampler", lambda config, folder: config["sampler"].update(
        kind="ase", compile_step=True), ("sampler.compile_step", "batched sampler", "'ase'"), ()),
    # names that refer to nothing
    ("unknown potential kind", _set("potential", "kind", "lenard_jones"),
     ("potential.kind", "'lenard_jones'", "did you mean 'lennard_jones'"), ()),
    ("unknown sampler kind", _set("sampler", "kind", "batchd"), ("sampler.kind", "did you mean 'batched'"), ()),
    ("unknown observable", _set("targets", 1, "observable", "lattice_lenght"),
     ("targets[1].observable", "did you mean 'lattice_length'"), ()),
    ("unknown state point", _set("targets", 0, "state_point", "nvt"), ("targets[0].state_point", "'nvt'", "npt"), ()),
    ("duplicated target names", _duplicate_target, ("targets[1].name", "'G_total'", "twice"), ()),
    ("check of an unknown target", _set("report", "checks", 0, "target", "G_tot"),
     ("report.checks[0].target", "'G_tot'"), ()),
    ("unknown check kind", _set("report", "checks", 1, "kind", "errors_beter"),
     ("report.checks[1].kind", "did you mean 'errors_better'"), ()),
    ("check of an unknown reference", _set("report", "checks", 1, "reference", "dtf"),
     ("report.checks[1].reference", "'dtf'"), ()),
    ("ceiling of an unknown reference", _set("evaluation", "ceiling", {"reference": "dtf"}),
     ("evaluation.ceiling.reference", "'dtf'"), ()),
    ("refine at the targets' cell", _set("state_points", 1, "refine", True), ("state_points[1]", "refine"), ()),
    ("force matching without frames", _delete("force_matching"), ("trainer.force_matching_weight", "force_matching"), ()),
    # files
    ("missing structure file", _set("system", "structure", "nowhere.extxyz"),
     ("system.structure", "nowhere.extxyz", "does not exist"), ()),
    ("non-periodic structure", _set("system", "structure", "molecule.xyz"), ("system.structure", "periodic"), ()),
    ("frame index past the file", _set("system", "index", 5), ("system.structure", "frame 5"), ()),
    ("unreadable structure", _set("system", "structure", "lattice.json"), ("system.structure", "lattice.json"), ()),
    ("missing target file", _set("targets", 0, "file", "nowhere.csv"), ("targets[0] (G_total).file", "nowhere.csv", "does not exist"), ()),
    ("missing compare target file", _set("compare", "targets", 0, "file", "nowhere.gr"),
     ("compare.targets[0] (G_gr).file", "nowhere.gr"), ()),
    ("column file without function", _headerless_csv, ("targets[0]", "function"), ()),
    ("file holds another function", _set("targets", 0, "function", "rdf"), ("targets[0]", "function", "'rdf'"), ()),
    ("x_range outside the grid", _set("targets", 0, "x_range", [10.0, 20.0]), ("targets[0]", "x_range", "[10.0, 20.0]"), ()),
    ("JSON key missing", _set("targets", 1, "value_key", "b_A"), ("targets[1]", "value_key", "'b_A'"), ()),
    ("JSON value not a number", _set("targets", 1, "sigma_key", "note"), ("targets[1]", "sigma_key", "'note'"), ()),
    ("missing force-matching file", _set("force_matching", "file", "nowhere.extxyz"),
     ("force_matching.file", "nowhere.extxyz"), ()),
    ("unlabelled force-matching frames", _set("force_matching", "file", "unlabelled.extxyz"),
     ("force_matching.file", "unlabelled.extxyz", "frame 0"), ()),
    ("missing evaluation file", _set("evaluation", "sets", 0, "file", "nowhere.extxyz"),
     ("evaluation.sets", "rattled", ".file", "nowhere.extxyz"), ()),
    ("frames without the labels", _unlabelled_set, ("evaluation.sets", "references.lj", "unlabelled.extxyz frame 0"), ()),
    ("missing reference prefix", _set("evaluation", "sets", 0, "references", "dft", "pbe"),
     ("evaluation.sets", "references.dft", "pbe_energy"), ()),
    ("missing nequip model", _nequip_missing_model, ("potential.path", "base.ckpt", "does not exist"), ()),
    ("model file of garbage", _garbage_model, ("potential.path", "base.ckpt", "could not be loaded as a nequip model"),
     ()),
    ("cell at targets without lattice targets", _no_lattice_targets, ("state_points[1]", "nvt_exp", "lattice_length"), ()),
    ("missing binding structure", _set("evaluation", "binding", {"structure": "layers.extxyz", "spacings_A": [3.0]}),
     ("evaluation.binding.structure", "layers.extxyz"), ()),
    # NaN and infinity are no setting's value
    ("NaN for a number", _set("potential", "sigma_A", NAN), ("potential.sigma_A", "finite", "nan"), ()),
    ("infinite temperature", _set("state_points", 0, "temperature_K", INF),
     ("state_points[0].temperature_K", "finite"), ()),
    ("NaN pressure", _set("state_points", 0, "pressure_GPa", NAN), ("state_points[0].pressure_GPa", "finite"), ()),
    ("infinite learning rate", _set("trainer", "learning_rate", INF), ("trainer.learning_rate", "finite"), ()),
    ("NaN in a list", _set("potential", "correction", "centers_A", [3.0, NAN]),
     ("potential.correction.centers_A[1]", "finite"), ()),
    ("NaN target weight", _set("targets", 0, "weight", NAN), ("targets[0].weight", "finite"), ()),
    ("NaN sampler setting", _set("sampler", "friction_per_fs", NAN), ("sampler.friction_per_fs", "finite"), ()),
    ("NaN check threshold", _check(threshold=NAN), ("report.checks[0].threshold", "finite"), ()),
    ("--set NaN", None, ("trainer.force_matching_weight", "finite"), ("--set", "trainer.force_matching_weight=.nan")),
    # ranges of the sampler, trainer and model settings
    ("stride of zero", _set("sampler", "stride", 0), ("sampler.stride", ">= 1"), ()),
    ("no snapshots", _set("sampler", "snapshots_per_replica", 0), ("sampler.snapshots_per_replica", ">= 1"), ()),
    ("negative updates", None, ("trainer.updates", ">= 0", "-1"), ("--set", "trainer.updates=-1")),
    ("Adam beta of one", _set("trainer", "adam_betas", [0.9, 1.0]), ("trainer.adam_betas", "[0, 1)"), ()),
    ("growing exponential schedule", _set("trainer", "lr_decay", 1.5), ("trainer.lr_decay", "(0, 1]"), ()),
    ("cosine floor above the start", _set("trainer", "lr_min_factor", 2.0), ("trainer.lr_min_factor", "[0, 1]"), ()),
    ("negative force weight", _set("trainer", "fm_force_weight", -1.0), ("trainer.fm_force_weight", ">= 0"), ()),
    ("negative trainer seed", _set("trainer", "seed", -3), ("trainer.seed", ">= 0"), ()),
    ("force matching of nothing", _set("trainer", {"updates": 2, "force_matching_weight": 1.0, "fm_energy_weight": 0.0,
                                                   "fm_force_weight": 0.0}),
     ("trainer", "fm_energy_weight and fm_force_weight are both 0"), ()),
    ("zero sigma", _set("potential", "sigma_A", 0.0), ("potential.sigma_A", "> 0"), ()),
    ("negative cutoff", _set("potential", "cutoff_A", -5.0), ("potential.cutoff_A", "> 0"), ()),
    ("correction centre past its cutoff", _set("potential", "correction", "centers_A", [3.0, 6.0]),
     ("potential.correction.centers_A", "cutoff_A"), ()),
    ("correction of zero cutoff", _set("potential", "correction", "cutoff_A", 0.0),
     ("potential.correction.cutoff_A", "> 0"), ()),
    ("repeated correction centres", _set("potential", "correction", "centers_A", [3.0, 3.0]),
     ("potential.correction.centers_A", "distinct"), ()),
    ("unknown device", _nequip(device="gpu"), ("potential.device", "'gpu'", "cuda"), ()),
    ("species map of a non-element", _nequip(chemical_species_to_atom_type_map={"Xx": "C"}),
     ("potential.chemical_species_to_atom_type_map", "'Xx'"), ()),
    ("empty state point name", _set("state_points", 0, "name", ""), ("state_points[0].name", "non-empty"), ()),
    ("empty target name", _set("targets", 0, "name", " G"), ("targets[0].name", "spaces"), ()),
    ("inline sigma of zero", _inline_target(sigma=[0.05, 0.0, 0.05]), ("targets[0].sigma", "> 0"), ()),
    ("inline grid of another length", _inline_target(x=[1.0, 2.0]), ("targets[0].x", "one per value"), ()),
    ("inline grid not increasing", _inline_target(x=[1.0, 3.0, 2.0]), ("targets[0].x", "increasing"), ()),
    ("negative Q limit", _set("targets", 0, "options", {"q_max": -5.0}), ("targets[0]", ".options", "q_max"), ()),
    ("negative λ in the scan", _set("force_matching", "scan", [-0.5]), ("force_matching.scan", ">= 0"), ()),
    ("binding curve without spacings", _set("evaluation", "binding", {"structure": "structure.extxyz", "spacings_A": []}),
     ("evaluation.binding.spacings_A",), ()),
    ("binding curve of no layers", _set("evaluation", "binding", {"structure": "structure.extxyz",
                                                                    "spacings_A": [3.0], "layers": 0}),
     ("evaluation.binding.layers", ">= 1"), ()),
    ("R_w cut of 100 %", _check(threshold=1.0), ("report.checks[0].threshold", "[0, 1)"), ()),
    ("lattice file of another temperature", _measured_at(450.0),
     ("targets[1] (a).state_point", "lattice.json states temperature 450 K", "'npt' is at 300 K",
      "bind it to the state point"), ()),
    ("lattice file of another pressure", _measured_at(300.0, 1.0, bind="npt"),
     ("targets[1] (a).state_point", "states pressure 1 GPa", "'npt' is at 0.0001 GPa"), ()),
    ("ceiling check without a ceiling", _check(kind="ceiling_fraction", reference="dft", threshold=0.6),
     ("report.checks[0]", "ceiling_fraction needs evaluation.ceiling"), ()),
    ("binding check without a reference curve", _check(kind="binding_depth", reference="reality", threshold=3.0),
     ("report.checks[0]", "binding_depth needs evaluation.binding with references"), ()),
    ("binding check naming no curve", _check(kind="binding_position", threshold=0.05),
     ("report.checks[0].reference", "reference curve"), ()),
    ("prediction of an unknown target", _check(kind="predicted", target="a_375K", threshold=2.0),
     ("report.checks[0].target", "'a_375K'"), ()),
    ("negative atom count of a check", _set("report", "checks", 1, "min_atoms", -1),
     ("report.checks[1].min_atoms", ">= 0"), ()),
    ("empty output folder", _set("output", "dir", ""), ("output.dir", "folder"), ()),
    ("scan without refinement", _no_refinement_with_scan, ("force_matching.scan", "trainer.updates is 0"), ()),
    ("checks without refinement", _set("trainer", "updates", 0), ("report.checks[0]", "trainer.updates is 0"), ()),
    ("target field among the options", _set("targets", 0, "options", {"use_sigma": False}),
     ("targets[0] (G_total).options.use_sigma", "beside `observable`"), ()),
    # targets against the structure
    ("composition of another sample", _gr_of_another_sample,
     ("compare.targets[0] (G_gr)", "G.gr", "composition", "got Cl32 Na32"), ()),
    ("pair of an absent element", _set("targets", 0, "options", {"pair": [14, 14]}),
     ("targets[0] (G_total)", "options.pair", "[14, 14]"), ()),
    # the start structure
    ("atoms too close", _structure("close.extxyz", _close_pair),
     ("system.structure", "close.extxyz", "atoms 1 and 4", "0.400 Å", "sampler.min_distance_A"), ()),
    ("atom close to its own image", _structure("tiny.extxyz", _tiny_cell),
     ("system.structure", "tiny.extxyz", "atom 0 and its own periodic image", "0.500 Å"), ()),
    ("unknown element", _structure("unknown.extxyz", _unknown_element),
     ("system.structure", "unknown.extxyz", "atom 2", "no known element"), ()),
    ("periodic in two dimensions", _structure("slab.extxyz", _slab), ("system.structure", "slab.extxyz", "pbc"), ()),
    ("cell of zero volume", _structure("flat.extxyz", _flat_cell), ("system.structure", "flat.extxyz", "volume"), ()),
    ("a single atom", _one_atom, ("system.structure", "one.extxyz", "1 atom", "at least 2"), ()),
    ("empty structure file", _empty_structure, ("system.structure", "empty.extxyz", "is empty"), ()),
    ("structure is a folder", _set("system", "structure", "."), ("system.structure", "is a folder"), ()),
    # the command line
    ("--set without =", None, ("--set", "trainer.updates", "KEY=VALUE"), ("--set", "trainer.updates")),
    ("--set into a number", None, ("--set", "trainer.updates", "not a mapping"), ("--set", "trainer.updates.count=3")),
    ("--set empty key part", None, ("--set", "trainer..updates"), ("--set", "trainer..updates=3")),
    ("--set past a list", None, ("--set", "targets.5", "not an existing list item"), ("--set", "targets.5.weight=2")),
    ("--set unknown field", None, ("trainer.updatez", "did you mean 'updates'"), ("--set", "trainer.updatez=3")),
    ("--set value not YAML", None, ("--set", "not valid YAML", "line 1"), ("--set", "trainer.updates=[3")),
    ("--set wrong type", None, ("trainer.updates", "an integer"), ("--set", "trainer.updates=[3]")),
]


@pytest.mark.parametrize("mutate, fragments, extra", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_names_file_and_field(folder, capsys, mutate, fragments, extra):
    config = base_config()
    if mutate is not None:
        mutate(config, folder)
    path = write_config(folder, config)
    code, out, err = check(capsys, path, *extra)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line: no traceback, no warnings
    assert lines[0].startswith("difftre check: error: "), err
    assert lines[0].count(str(path)) == 1, err  # the config file, named once
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_there_are_enough_cases():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


def test_extends_missing_base(folder, capsys):
    path = folder / "child.yaml"
    path.write_text("extends: base.yaml\ntrainer: {updates: 3}\n")
    code, _, err = check(capsys, path)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(path) in line and "extends" in line and str(folder / "base.yaml") in line and "does not exist" in line


def test_invalid_yaml(folder, capsys):
    path = folder / "job.yaml"
    path.write_text("trainer: {updates: 2\n")
    code, _, err = check(capsys, path)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(path) in line and "not valid YAML" in line


def test_config_file_not_text(folder, capsys):
    path = folder / "job.yaml"
    path.write_bytes(b"\x8b\x1f" + bytes(range(256)))
    code, _, err = check(capsys, path)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(path) in line and "not a text file" in line and "0x8b" in line


def test_missing_config_file(folder, capsys):
    code, _, err = check(capsys, folder / "nowhere.yaml")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(folder / "nowhere.yaml") in line and "does not exist" in line


# --------------------------------------------------------------------------- what passes


def test_valid_config_passes_and_prints_the_plan(folder, capsys):
    path = write_config(folder, base_config())
    code, out, err = check(capsys, path)
    assert code == 0, err
    assert err == ""
    assert f"job {path}" in out
    assert "system: 64 atoms (Cl32Na32)" in out  # the 8-atom cube repeated 2 × 2 × 2
    assert "targets: G_total (G, " in out and "a (lattice_length, 3 values)" in out
    assert "potential: lennard_jones + pair correction" in out
    assert "force matching: 3 labelled frames" in out
    assert "evaluation set rattled: 3 frames of 64 atoms, references lj, dft" in out
    assert "refinement: 2 updates for λ = 1" in out
    assert out.strip().splitlines()[-1].startswith(f"difftre check: {path} is valid")


def test_compressed_frames_read_like_plain_ones(folder, capsys):
    """A gzipped frame set (read in memory: ase's own gz reading is quadratic in the frames)."""
    import gzip

    from difftre_torch.frames import read_frames_file as read_all_frames

    (folder / "frames.extxyz.gz").write_bytes(gzip.compress((folder / "frames.extxyz").read_bytes()))
    plain, packed = read_all_frames(folder / "frames.extxyz"), read_all_frames(folder / "frames.extxyz.gz")
    assert len(plain) == len(packed) == 3
    for a, b in zip(plain, packed):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.get_forces(), b.get_forces())
        assert a.info["dft_energy"] == b.info["dft_energy"]
    config = base_config()
    config["evaluation"]["sets"][0]["file"] = "frames.extxyz.gz"
    config["force_matching"]["file"] = "frames.extxyz.gz"
    code, out, err = check(capsys, write_config(folder, config))
    assert code == 0, err
    assert "evaluation set rattled: 3 frames" in out


def test_set_overrides_a_value(folder, capsys):
    path = write_config(folder, base_config())
    job = load_job(path, ["trainer.updates=3", "sampler.stride=2", "targets.0.weight=0.5"])
    assert job.trainer.updates == 3 and job.sampler.stride == 2 and job.targets[0].weight == 0.5
    assert load_job(path).trainer.updates == 2  # the file is untouched
    code, out, err = check(capsys, path, "--set", "trainer.updates=3")
    assert code == 0, err
    assert "refinement: 3 updates" in out


def test_extends_merges_the_base(folder, capsys):
    base = base_config()
    write_config(folder, base, "base.yaml")
    child = {"extends": "base.yaml", "trainer": {"updates": 5}, "sampler": {"stride": 2},
             "state_points": [{"name": "npt", "temperature_K": 500.0, "pressure_GPa": 0.0001}],
             "compare": {"targets": None}}
    path = write_config(folder, child, "child.yaml")
    job = load_job(path)
    assert job.trainer.updates == 5 and job.trainer.learning_rate == 0.001  # mappings merge key by key
    assert job.sampler.stride == 2 and job.sampler.timestep_fs == 2.0 and job.sampler_kind == "batched"
    assert [p.name for p in job.state_points] == ["npt"] and job.state_points[0].temperature_K == 500.0  # lists replace
    assert job.compare.targets is None
    assert job.resolve(job.system.structure) == (folder / "structure.extxyz").resolve()
    code, out, err = check(capsys, path)
    assert code == 0, err
    assert "refinement: 5 updates" in out and "npt (500 K" in out


def test_exponent_without_a_dot_is_a_number(folder, capsys):
    """``1e-3`` is a number in the file and on the command line (YAML 1.2; PyYAML alone reads
    it as a string), while a quoted ``"1e-3"`` stays a string and is refused."""
    config = base_config()
    text = yaml.safe_dump(config, sort_keys=False).replace("learning_rate: 0.001", "learning_rate: 1e-3")
    path = folder / "job.yaml"
    path.write_text(text)
    assert load_job(path).trainer.learning_rate == 1e-3
    assert load_job(path, ["trainer.learning_rate=2E-2"]).trainer.learning_rate == 0.02
    path.write_text(text.replace("learning_rate: 1e-3", 'learning_rate: "1e-3"'))
    code, _, err = check(capsys, path)
    assert code == 2 and "trainer.learning_rate" in err and "without quotes" in err


def test_no_updates_means_no_refinement(folder, capsys):
    config = base_config()
    config["trainer"]["updates"] = 0
    del config["report"]
    code, out, err = check(capsys, write_config(folder, config))
    assert code == 0, err
    assert "refinement: none (trainer.updates: 0)" in out


def test_one_atom_cell_repeated_passes(folder, capsys):
    """A primitive cell of one atom is a fine start once system.repeat makes more of it."""
    write(folder / "primitive.extxyz", bulk("Na", "bcc", a=4.2))
    config = base_config()
    config["system"] = {"structure": "primitive.extxyz", "repeat": [3, 3, 3]}
    del config["potential"]["correction"]
    code, out, err = check(capsys, write_config(folder, config))
    assert code == 0, err
    assert "system: 27 atoms (Na27)" in out


def test_extends_with_another_kind_replaces_the_section(folder):
    """A section naming another ``kind`` than its base's replaces it whole (the base kind's
    options would be unknown to the new one); the same kind merges key by key."""
    write_config(folder, base_config(), "base.yaml")
    child = {"extends": "base.yaml", "potential": {"kind": "deepmd", "path": "model.pth"}}
    from difftre_torch.config.parse import read_mapping

    merged = read_mapping(write_config(folder, child, "child.yaml"))
    assert merged["potential"] == {"kind": "deepmd", "path": "model.pth"}
    same = {"extends": "base.yaml", "potential": {"kind": "lennard_jones", "sigma_A": 3.0}}
    merged = read_mapping(write_config(folder, same, "same.yaml"))
    assert merged["potential"]["sigma_A"] == 3.0 and merged["potential"]["epsilon_eV"] == EPSILON_EV
