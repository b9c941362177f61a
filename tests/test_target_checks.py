"""Checks between an experiment file, what a job asks of it, and the model it is compared with.

The model's g(r) bins come from its options, never from the data's spacing; a file's own word
on its function, processing and σ is not overridden silently; a target that cannot fit the
structure is refused at build time. Every refusal names the file and the place in it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import bulk

from difftre_torch.experiment import (
    ExperimentalData,
    ExperimentFileError,
    Target,
    TargetCheckError,
    check_target_against_system,
    load_target,
    read_columns,
    read_experiment,
    read_gr,
)
from difftre_torch.experiment.checks import composition_problem
from difftre_torch.observables import partial_rdfs, total_rdf
from difftre_torch.observables.options import DEFAULT_BIN_WIDTH_A, MAX_GRID_POINTS, OptionsError
from difftre_torch.observables.registry import model_r_max_A, static_observables

ROOT = Path(__file__).resolve().parents[1]
LJ = ROOT / "difftre_torch" / "data" / "lj_argon"

PDF_HEADER = """[DEFAULT]
mode = xray
composition = C3N4
qmin = 0.8
qmax = 22.5
lorch = True
#### start data
#S 1
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _rows(x, y, s=None) -> str:
    columns = [x, y] + ([s] if s is not None else [])
    return "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in zip(*columns))


@pytest.fixture(scope="module")
def argon():
    """Five rattled copies of the shipped LJ start structure (108 Ar): positions, cells, numbers."""
    from ase.io import read

    atoms = read(LJ / "lj_argon_start.extxyz")
    rng = np.random.default_rng(0)
    positions = np.stack([atoms.positions + rng.normal(0, 0.25, atoms.positions.shape) for _ in range(5)])
    return torch.tensor(positions), torch.tensor(np.stack([atoms.cell.array] * 5)), torch.tensor(atoms.numbers)


def _message(info) -> str:
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    assert str(pickle.loads(pickle.dumps(info.value))) == message
    return message


# ----------------------------------------------------------------------------- the model's grid


def test_model_bins_do_not_depend_on_the_data_spacing(argon):
    """One extra point at 0.0501 Å used to make 1e-4 Å bins (a spiky g, a loss 6.6× larger on
    these frames); now the model is the same curve, so the squared residuals sum to the same
    (the extra point's residual is 0: g = 0 there) and the mean differs by n/(n + 1) only."""
    positions, cells, numbers = argon
    data = read_columns(LJ / "lj_argon_rdf.csv", "rdf")
    x = np.insert(data.x, 1, 0.0501)
    extra = ExperimentalData("rdf", x, np.insert(data.values, 1, 0.0), metadata={"source": "extra.csv"})
    targets = [data.to_target("plain", use_sigma=False), extra.to_target("extra", use_sigma=False)]
    assert targets[0].settings.bin_width_A == targets[1].settings.bin_width_A == DEFAULT_BIN_WIDTH_A
    values = static_observables(positions, cells, numbers, targets)
    mean_plain, mean_extra = values["plain"].mean(0), values["extra"].mean(0)
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[1] = False
    assert torch.equal(mean_extra[keep], mean_plain)  # the same bins, the same interpolation
    assert float(mean_extra[1]) == 0.0
    sse = [float(((m - t.values) ** 2).sum()) for m, t in zip((mean_plain, mean_extra), targets)]
    assert sse[1] == pytest.approx(sse[0], rel=1e-12)


def test_non_uniform_grid_is_the_linear_interpolation_of_the_model_bins(argon):
    positions, cells, numbers = argon
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0.5, 8.0, 57))
    target = Target("g", "rdf", np.ones(len(x)), x=x, options={"weighting": "number"})
    got = static_observables(positions, cells, numbers, [target])["g"]
    r_max = model_r_max_A(target)
    assert r_max == pytest.approx(x[-1] + DEFAULT_BIN_WIDTH_A)
    n_bins = round(r_max / DEFAULT_BIN_WIDTH_A)
    r, partials = partial_rdfs(positions, cells, numbers, n_bins * DEFAULT_BIN_WIDTH_A, n_bins)
    g = total_rdf(partials, numbers, "number")
    direct = np.stack([np.interp(x, r.numpy(), row) for row in g.numpy()])  # a second implementation
    np.testing.assert_allclose(got.numpy(), direct, rtol=1e-12, atol=1e-12)


def test_a_grid_much_finer_than_the_bins_is_refused_with_what_to_do():
    x = np.linspace(1.0, 10.0, 100_001)  # 9e-5 Å steps against 0.02 Å bins
    data = ExperimentalData("rdf", x, np.ones_like(x), np.full_like(x, 0.01), {"source": "fine.gr"})
    with pytest.raises(TargetCheckError) as info:
        data.to_target("g")
    message = _message(info)
    assert message.startswith("fine.gr (target 'g'): x: expected a grid step >= 0.002 Å (bin_width_A = 0.02 Å")
    assert "median step of 9e-05 Å over 100001 points" in message and "average blocks of 22 rows" in message
    coarse = data.crop([1.0, 1.5]).to_target("g", bin_width_A=0.0005)  # finer bins admit finer data
    assert coarse.settings.bin_width_A == 0.0005
    q = np.linspace(0.1, 40.0, MAX_GRID_POINTS + 1)
    with pytest.raises(TargetCheckError, match=rf"sq\.csv \(target 'S'\): x: expected at most {MAX_GRID_POINTS} "
                                               rf"grid points .*, got {MAX_GRID_POINTS + 1}"):
        ExperimentalData("S", q, np.ones_like(q), metadata={"source": "sq.csv"}).to_target("S", use_sigma=False)


def test_a_long_file_is_read_in_linear_time_and_refused_before_any_model_work(tmp_path):
    x = np.linspace(0.01, 20.0, 200_000)
    path = tmp_path / "long.gr"
    with open(path, "w") as handle:
        handle.write("#L r G dG\n")
        np.savetxt(handle, np.c_[x, np.sin(x), np.full_like(x, 0.01)], fmt="%.10g")
    data = read_gr(path)
    assert data.x.shape == (200_000,) and data.metadata["lines"][-1] == 200_001
    with pytest.raises(TargetCheckError, match=r"long\.gr \(target 'G'\): x: expected a grid step >= 0\.002 Å"):
        data.to_target("G")


def test_shipped_jobs_state_the_bin_width_they_always_had():
    """The shipped jobs' g(r) targets state bin_width_A as the float step of the first two
    points of their (cropped) grid, which earlier code took as the bin width: same numbers."""
    jobs = [ROOT / "recipes" / "gc3n4" / "full.yaml", LJ / "lj_argon.yaml"]
    seen = 0
    for job in jobs:
        config = yaml.safe_load(job.read_text())
        for entry in config["targets"] + config.get("compare", {}).get("targets", []):
            if entry["observable"] not in ("rdf", "G"):
                continue
            data = read_experiment(job.parent / entry["file"], entry.get("function")).crop(entry.get("x_range"))
            x = torch.as_tensor(data.x)
            assert entry["options"]["bin_width_A"] == float(x[1] - x[0]), (job.name, entry["name"])
            seen += 1
    assert seen == 4


# ----------------------------------------------------------------------------- what the file declares


def test_a_config_function_that_contradicts_the_label_is_refused(tmp_path):
    path = _write(tmp_path, "pdf.gr", PDF_HEADER + "#L r($\\AA$)  G($\\AA^{-2}$)\n" + _rows([1.0, 1.1], [0.1, 0.2]))
    with pytest.raises(ExperimentFileError) as info:
        read_gr(path, function="rdf")
    assert _message(info) == (f"{path}, line 9: #L label 'G($\\AA^{{-2}}$)': expected function 'G' (what the file "
                              "declares) or none, got 'rdf'")
    sq = _write(tmp_path, "s.sq", PDF_HEADER + "#L Q($\\AA^{-1}$)  S\n" + _rows([1.0, 1.1], [0.9, 1.0]))
    with pytest.raises(ExperimentFileError, match=r"s\.sq, line 9: #L label 'S': expected function 'S' \(what "
                                                  r"the file declares\) or none, got 'G'"):
        read_experiment(sq, function="G")  # an S(Q) file is not read as G, its Q window is not dropped
    assert read_gr(path, function="G").metadata["declared"] == {"function": "G", "line": 9,
                                                                "field": "#L label 'G($\\AA^{-2}$)'"}


def test_an_observable_that_contradicts_the_file_is_refused(tmp_path):
    path = _write(tmp_path, "pdf.gr", PDF_HEADER + "#L r G\n" + _rows([1.0, 1.1], [0.1, 0.2], [0.1, 0.1]))
    with pytest.raises(ExperimentFileError, match=r"pdf\.gr, line 9: #L label 'G': expected observable 'G' \(what "
                                                  r"the file declares\), got 'rdf'"):
        load_target(path, name="g", observable="rdf")
    plain = _write(tmp_path, "plain.gr", _rows([1.0, 1.1], [0.1, 0.2], [0.1, 0.1]))
    with pytest.raises(ExperimentFileError, match=r"plain\.gr: observable: expected observable 'G' \(the file was "
                                                  r"read as 'G' by its extension \.gr\), got 'rdf'"):
        load_target(plain, name="g", observable="rdf")


def test_where_the_file_declares_nothing_the_config_stands(tmp_path):
    plain = _write(tmp_path, "plain.gr", _rows([1.0, 1.1], [0.1, 0.2], [0.1, 0.1]))
    target = load_target(plain, name="g", observable="rdf", function="rdf")
    assert target.observable == "rdf" and target.source == str(plain)
    unnamed = _write(tmp_path, "u.csv", "x,y,dy\n1.0,0.5,0.1\n2.0,1.5,0.1\n")
    assert read_columns(unnamed, "S").function == "S"


def test_csv_column_names_declare_the_function(tmp_path):
    g = _write(tmp_path, "g.csv", "# a comment\nr_A,g,sigma\n1.0,0.5,0.1\n1.1,0.6,0.1\n")
    assert read_columns(g, None).function == "rdf"  # no function= needed
    with pytest.raises(ExperimentFileError) as info:
        read_columns(g, "G")
    assert _message(info) == (f"{g}, line 2: column 2 header 'g': expected function 'rdf' (what the file declares) "
                              "or none, got 'G'")
    for header, function in [("r_A,G_per_A2,sigma_per_A2", "G"), ("Q_per_A,S,sigma", "S"), ("Q,F(Q)", "F"),
                             ("r,g(r)", "rdf")]:
        path = _write(tmp_path, "f.csv", f"{header}\n1.0,0.5\n1.1,0.6\n")
        assert read_columns(path, None).function == function, header
    q_as_r = _write(tmp_path, "q.csv", "Q,G\n1.0,0.5\n1.1,0.6\n")
    with pytest.raises(ExperimentFileError, match=r"q\.csv, line 1: column 1 header 'Q': expected a grid for 'G'"):
        read_columns(q_as_r, None)
    for world in sorted((ROOT / "data" / "world" / "experiment").glob("*.csv")):  # what the generator writes
        function = "S" if world.stem.endswith("_S") else ("rdf" if world.stem.endswith("_rdf") else "G")
        assert read_columns(world, None).function == function, world.name


def test_options_that_contradict_the_header_are_refused(tmp_path):
    path = _write(tmp_path, "pdf.gr", PDF_HEADER + "#L r G\n" + _rows([1.0, 1.1], [0.1, 0.2], [0.1, 0.1]))
    data = read_gr(path)
    assert data.to_target("G").options == {"q_min": 0.8, "q_max": 22.5, "weighting": "xray", "lorch": True}
    with pytest.raises(ExperimentFileError) as info:
        data.to_target("G", q_max=25.0)
    assert _message(info) == (f"{path}, line 5: qmax: expected options.q_max 22.5 (what the file declares: "
                              "qmax = 22.5) or no such option, got 25.0")
    with pytest.raises(ExperimentFileError, match=r"pdf\.gr, line 2: mode: expected options\.weighting 'xray' or "
                                                  r"'xray_q' \(what the file declares: mode = xray\) .*got 'neutron'"):
        data.to_target("G", weighting="neutron")
    with pytest.raises(ExperimentFileError, match=r"line 6: lorch: expected options\.lorch True .*got False"):
        data.to_target("G", lorch=False)
    assert data.to_target("G", weighting="xray_q", q_max=22.5, lorch=True).settings.weighting == "xray_q"
    both = _write(tmp_path, "both.sq", "mode = neutron\nweighting = xray\n#### start data\n#L Q S dS\n"
                  + _rows([1.0, 1.1], [0.9, 1.0], [0.1, 0.1]))
    with pytest.raises(ExperimentFileError, match=r"both\.sq, line 2: weighting: expected a weighting of mode "
                                                  r"'neutron' \('neutron'\) as the same header says, got 'xray'"):
        read_gr(both).to_target("S")


def test_unknown_scattering_mode_is_refused(tmp_path):
    path = _write(tmp_path, "e.gr", "mode = electron\n#### start data\n#L r G\n" + _rows([1.0, 1.1], [0.1, 0.2]))
    with pytest.raises(ExperimentFileError) as info:
        read_gr(path)
    assert _message(info) == (f"{path}, line 1: mode: expected a scattering mode: xray (x, x-ray) or neutron (n), "
                              "got 'electron'")
    assert read_gr(_write(tmp_path, "x.gr", "mode = X-ray\n#L r G\n" + _rows([1.0, 1.1], [0.1, 0.2]))
                   ).metadata["mode"] == "xray"


# ----------------------------------------------------------------------------- σ


def test_use_sigma_needs_a_positive_sigma_or_a_floor(tmp_path):
    x, y = [1.0, 1.1, 1.2, 1.3, 1.4], [0.1, 0.2, 0.3, 0.2, 0.1]
    none = _write(tmp_path, "none.gr", "#L r G\n" + _rows(x, y))
    with pytest.raises(ExperimentFileError) as info:
        load_target(none, name="G", observable="G")
    assert _message(info) == (f"{none}: σ: expected a σ column (use_sigma is true), got 2 columns without one; add σ, "
                              "state sigma_floor (σ on every point) or set use_sigma: false")
    assert load_target(none, name="G", observable="G", use_sigma=False).sigma is None
    floored = load_target(none, name="G", observable="G", sigma_floor=0.05)
    torch.testing.assert_close(floored.sigma, torch.full((5,), 0.05, dtype=torch.float64))

    zeros = _write(tmp_path, "zeros.gr", "#L r G dr dG\n" + "".join(
        f"{a} {b} 0.0 {s}\n" for a, b, s in zip(x, y, [0.1, 0.0, 0.1, 0.0, 0.0])))
    with pytest.raises(ExperimentFileError) as info:
        load_target(zeros, name="G", observable="G")
    assert _message(info) == (f"{zeros}, line 3: column 4 (dG): expected σ > 0 in every row (use_sigma is true), got "
                              "3 of 5 rows with σ <= 0 or not finite (first: 0); state sigma_floor (added in "
                              "quadrature) or set use_sigma: false")
    with_floor = load_target(zeros, name="G", observable="G", sigma_floor=0.05)
    np.testing.assert_allclose(with_floor.sigma.numpy(), np.sqrt(np.array([0.1, 0, 0.1, 0, 0]) ** 2 + 0.05**2))


def test_negative_or_nan_sigma_is_refused_even_with_a_floor(tmp_path):
    bad = _write(tmp_path, "bad.csv", "r,G,dG\n1.0,0.1,0.1\n1.1,0.2,-0.1\n1.2,0.3,nan\n")
    data = read_columns(bad, None)
    for floor in (0.0, 0.05):
        with pytest.raises(ExperimentFileError, match=r"bad\.csv, line 3: column 3 \(dG\): expected σ > 0 in every "
                                                      r"row .*got 2 of 3 rows .*\(first: -0\.1\); fix those rows"):
            data.to_target("G", sigma_floor=floor)
    assert data.to_target("G", use_sigma=False).sigma is None  # σ may be anything when it is not used
    with pytest.raises(ExperimentFileError, match=r"bad\.csv: sigma_floor: expected a number >= 0, got -1"):
        data.to_target("G", sigma_floor=-1)


def test_crop_keeps_lines_and_cropping_a_bad_sigma_away_is_fine(tmp_path):
    path = _write(tmp_path, "g.gr", "#L r G dG\n" + _rows([1.0, 1.1, 1.2, 1.3], [0.1, 0.2, 0.3, 0.4],
                                                         [0.0, 0.1, 0.1, 0.1]))
    target = load_target(path, name="G", observable="G", x_range=[1.05, 2.0])
    np.testing.assert_allclose(target.x.numpy(), [1.1, 1.2, 1.3])
    np.testing.assert_array_equal(read_gr(path).crop([1.05, 2.0]).metadata["lines"], [3, 4, 5])
    with pytest.raises(ExperimentFileError, match=r"g\.gr: x_range \[1\.15, 1\.25\]: expected at least 2 of the "
                                                  r"grid's 4 points \[1, 1\.3\] inside, got 1"):
        load_target(path, name="G", observable="G", x_range=[1.15, 1.25])


# ----------------------------------------------------------------------------- the grid's range


def test_grid_outside_the_functions_domain_names_the_row(tmp_path):
    neg = _write(tmp_path, "neg.gr", "#L r G dG\n" + _rows([-0.1, 0.0, 0.1], [0.0, 0.0, 0.1], [0.1] * 3))
    with pytest.raises(ExperimentFileError) as info:
        load_target(neg, name="G", observable="G")
    assert _message(info) == f"{neg}, line 2: column 1 (r): expected r >= 0 Å, got -0.1 (1 such rows)"
    sq = _write(tmp_path, "s.sq", "#L Q S dS\n" + _rows([0.0, 0.5, 1.0], [0.0, 0.5, 0.9], [0.1] * 3))
    with pytest.raises(ExperimentFileError, match=r"s\.sq, line 2: column 1 \(Q\): expected Q > 0 Å⁻¹ \(S\(Q\) is "
                                                  r"fitted at Q > 0; crop with x_range\), got 0"):
        load_target(sq, name="S", observable="S")
    assert load_target(sq, name="S", observable="S", x_range=[0.1, 2.0]).x.shape == (2,)


# ----------------------------------------------------------------------------- against the structure


@pytest.fixture
def c3n4() -> Atoms:
    """A 14-atom C3N4-like cell repeated to 112 atoms (C48 N64): composition only matters here."""
    rng = np.random.default_rng(1)
    atoms = Atoms("C6N8", positions=rng.uniform(0, 7, (14, 3)), cell=[7.0, 7.0, 7.0], pbc=True)
    return atoms.repeat((2, 2, 2))


def _g_target(composition=None, **options) -> Target:
    x = np.linspace(1.0, 3.0, 21)
    return Target("G", "G", np.zeros(21), x=x, options=options, source="gcn.gr", composition=composition)


def test_composition_must_match_the_structure(c3n4):
    assert check_target_against_system(_g_target({"C": 3, "N": 4}), c3n4, "job.yaml: targets[0] (G)") == []
    assert check_target_against_system(_g_target({"C": 6, "N": 8}), c3n4, "job.yaml: targets[0] (G)") == []
    with pytest.raises(TargetCheckError) as info:
        check_target_against_system(_g_target({"C": 1, "N": 1}), c3n4, "job.yaml: targets[0] (G)")
    assert _message(info) == ("job.yaml: targets[0] (G): gcn.gr: composition C1 N1: expected a structure of "
                              "composition C1 N1 (scaled to its 112 atoms: C56 N56, each within one atom), got "
                              "C48 N64")
    with_h = c3n4 + Atoms("H", positions=[[0.5, 0.5, 0.5]])
    with pytest.raises(TargetCheckError, match=r"composition C3 N4: expected .* got C48 H1 N64"):
        check_target_against_system(_g_target({"C": 3, "N": 4}), with_h, "job.yaml")
    near = c3n4.copy()
    near.numbers[0] = 7  # C47 N65: one atom off the formula scaled to 112 atoms
    with pytest.raises(TargetCheckError):
        check_target_against_system(_g_target({"C": 3, "N": 4}), near, "job.yaml")
    assert composition_problem({"C": 3, "N": 4.01}, c3n4) is None  # within one atom of C47.9 N64.1


def test_deuterium_is_hydrogen_for_xray_and_refused_for_neutron_weighting():
    d2o = bulk("Cu", "fcc", a=3.6).repeat((3, 1, 1))  # three positions, as water: O H H
    d2o.set_chemical_symbols(["O", "H", "H"])
    hydroxide = bulk("Cu", "fcc", a=3.6).repeat((6, 1, 1))
    hydroxide.set_chemical_symbols(["O", "H"] * 3)  # O3 H3 against D2O in 6 atoms: H4 O2
    check_target_against_system(_g_target({"D": 2, "O": 1}, weighting="xray"), d2o, "w")  # passes (notes only)
    with pytest.raises(TargetCheckError, match=r"w: gcn\.gr: composition D2 O1: expected no deuterium with neutron "
                                               r"weighting .*got D"):
        check_target_against_system(_g_target({"D": 2, "O": 1}), d2o, "w")
    with pytest.raises(TargetCheckError, match="composition D2 O1: expected a structure"):
        check_target_against_system(_g_target({"D": 2, "O": 1}, weighting="xray"), hydroxide, "w")


def test_pair_option_must_name_species_of_the_structure(c3n4):
    with pytest.raises(TargetCheckError, match=r"w: gcn\.gr: options\.pair: expected atomic numbers present in the "
                                               r"structure \(\[6, 7\]\), got \[6, 8\]"):
        check_target_against_system(_g_target(pair=[6, 8]), c3n4, "w")
    lone = Atoms("CN3", positions=np.eye(4, 3) * 2, cell=[6, 6, 6], pbc=True)
    with pytest.raises(TargetCheckError, match=r"options\.pair: expected a species with at least 2 atoms"):
        check_target_against_system(_g_target(pair=[6, 6]), lone, "w")
    assert check_target_against_system(_g_target(pair=[6, 7]), c3n4, "w") == []


def test_r_beyond_half_the_cell_is_noted_not_refused(c3n4):
    small = c3n4[:14]
    small.set_cell([7.0, 7.0, 7.0])  # half its width is 3.5 Å
    x = np.linspace(1.0, 6.0, 51)
    notes = check_target_against_system(Target("g", "rdf", np.ones(51), x=x, source="g.csv"), small, "job.yaml")
    assert len(notes) == 1 and notes[0].startswith("job.yaml: g.csv: the model's g(r) runs to 6.02 Å, past half "
                                                   "the cell's smallest width (3.5 Å)")
    s = Target("S", "S", np.ones(10), x=np.linspace(1, 10, 10), options={"r_max_A": 12.0})
    assert "runs to 12 Å" in check_target_against_system(s, c3n4, "w")[0]  # the transform's r range
    assert check_target_against_system(Target("g", "rdf", np.ones(11), x=np.linspace(1, 3, 11)), c3n4, "w") == []


def test_options_errors_still_name_the_option():
    with pytest.raises(OptionsError, match=r"option 'bin_width_A': expected a length > 0 Å"):
        _g_target(bin_width_A=0.0)
    with pytest.raises(OptionsError, match=r"option 'bin_width_A': expected a number, got None"):
        _g_target(bin_width_A=None)  # no null default any more: the bins are the model's
