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


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    config["potential"] = {"kind": "nequip", "path": "models/base.ckpt", "correction": {"cutoff_A": CUTOFF_A}}


def _duplicate_target(config: dict, folder: Path) -> None:
    config["targets"][1]["name"] = "G_total"


def _unlabelled_set(config: dict, folder: Path) -> None:
    config["evaluation"]["sets"][0]["file"] = "unlabelled.extxyz"


def _no_lattice_targets(config: dict, folder: Path) -> None:
    del config["targets"][1]
    del config["compare"]


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
    ("string for a number", _set("trainer", "learning_rate", "1e-3"), ("trainer.learning_rate", "a number"), ()),
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
    ("column file without function", _delete("targets", 0, "function"), ("targets[0]", "function"), ()),
    ("file holds another function", _set("targets", 0, "function", "rdf"), ("targets[0]", "observable", "'rdf'"), ()),
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
    ("cell at targets without lattice targets", _no_lattice_targets, ("state_points[1]", "nvt_exp", "lattice_length"), ()),
    ("missing binding structure", _set("evaluation", "binding", {"structure": "layers.extxyz", "spacings_A": [3.0]}),
     ("evaluation.binding.structure", "layers.extxyz"), ()),
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

    from difftre_torch.workflow.build import read_all_frames

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
