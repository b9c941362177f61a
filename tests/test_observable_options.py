"""Observable options: each observable's typed options dataclass, validated when a Target is built.

A misspelt, mistyped or out-of-range option is an error naming where it came from and the
option (not a silent default), and valid options compute what the physics functions give.
"""

from __future__ import annotations

import dataclasses
import pickle
import re

import numpy as np
import pytest
import torch
from ase.build import bulk

from difftre_torch.experiment import ExperimentalData, Target
from difftre_torch.observables import instrument_G, lattice_lengths, number_density, partial_rdfs, total_rdf
from difftre_torch.observables.options import (
    GOptions,
    InterlayerSpacingOptions,
    LatticeLengthOptions,
    NoOptions,
    OptionsError,
    RdfOptions,
    SOptions,
    option_docs,
)
from difftre_torch.observables.registry import OBSERVABLES, static_observables, validate_options
from difftre_torch.observables.thermo import interlayer_spacing

WHERE = "config.yaml: targets[2] (G_total).options"
R_GRID = torch.arange(1.0, 5.0, 0.05, dtype=torch.float64)
Q_GRID = torch.arange(0.5, 12.0, 0.1, dtype=torch.float64)


@pytest.fixture(scope="module")
def frames():
    """Three rattled, slightly strained NaCl supercells: positions [3, 64, 3], cells [3, 3, 3]."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    positions = np.stack([atoms.positions + rng.normal(0, 0.1, atoms.positions.shape) for _ in range(3)])
    cells = np.stack([atoms.cell.array * (1 + 0.01 * k) for k in range(3)])
    return torch.tensor(positions), torch.tensor(cells), torch.tensor(atoms.numbers)


# ----------------------------------------------------------------------------- declarations


def test_every_registered_observable_declares_a_documented_options_class():
    expected = {"rdf": RdfOptions, "G": GOptions, "S": SOptions, "lattice_length": LatticeLengthOptions,
                "interlayer_spacing": InterlayerSpacingOptions}
    for name in ("rdf", "G", "S", "F", "lattice_length", "interlayer_spacing", "density", "pressure", "stress"):
        cls = OBSERVABLES[name].options
        assert dataclasses.is_dataclass(cls) and issubclass(cls, NoOptions), name
        if name in expected:
            assert cls is expected[name]
        for field_name, doc in option_docs(cls).items():
            assert doc and "\n" not in doc, (name, field_name)
    assert set(option_docs(GOptions)) == {"q_min", "q_max", "lorch", "weighting", "pair", "bin_width_A",
                                          "r_max_A", "smoothing_A"}
    assert set(option_docs(OBSERVABLES["F"].options)) == set(option_docs(SOptions))
    assert option_docs(OBSERVABLES["pressure"].options) == {}


def test_defaults_and_conversion():
    g = validate_options("G", {"q_max": 20, "pair": [6, 7]}, WHERE)
    assert g == GOptions(q_max=20.0, pair=(6, 7))
    assert type(g.q_max) is float and g.q_min == 0.0 and g.lorch is False and g.weighting == "neutron"
    assert validate_options("S", {}, WHERE).r_max_A == 10.0
    lattice = validate_options("lattice_length", None, WHERE)
    assert (lattice.axes, lattice.repeats) == ("abc", (1, 1, 1))
    # numpy scalars, as a reader may produce, are numbers too
    assert validate_options("G", {"q_max": np.float64(20.5), "q_min": np.int64(1)}, WHERE).q_min == 1.0
    assert validate_options("interlayer_spacing", {"layers_per_cell": np.int64(2)}, WHERE).layers_per_cell == 2


# ----------------------------------------------------------------------------- errors


def test_misspelt_option_names_the_field_and_suggests():
    with pytest.raises(OptionsError) as info:
        validate_options("G", {"q_mx": 22.5}, WHERE)
    message = str(info.value)
    assert message.startswith(WHERE + ": ")
    assert "unknown option 'q_mx' (did you mean 'q_max'?)" in message
    assert "expected some of ['bin_width_A', 'lorch', 'pair', 'q_max'" in message
    with pytest.raises(ValueError, match=r"'lorch_R' \(did you mean 'lorch_r'\?\)"):
        validate_options("S", {"lorch_R": True}, WHERE)
    with pytest.raises(OptionsError, match="takes no options"):
        validate_options("pressure", {"units": "GPa"}, WHERE)


def test_q_mx_target_is_an_error_not_the_ideal_G():
    with pytest.raises(OptionsError, match=r"^Target 'G_total': unknown option 'q_mx' \(did you mean 'q_max'\?\)"):
        Target("G_total", "G", torch.zeros(len(R_GRID)), x=R_GRID, options={"q_mx": 22.5})


@pytest.mark.parametrize("observable, options, match", [
    ("G", {"q_max": True}, r"option 'q_max': expected a number or null, got True \(bool\)"),
    ("G", {"lorch": 1}, r"option 'lorch': expected true or false, got 1 \(int\)"),
    ("G", {"weighting": 3}, r"option 'weighting': expected a string, got 3"),
    ("G", {"pair": [6]}, r"option 'pair': expected a list of 2 integers or null"),
    ("G", {"pair": [6.0, 7.0]}, r"option 'pair'"),
    ("S", {"r_max_A": None}, r"option 'r_max_A': expected a number, got None"),
    ("lattice_length", {"axes": ["a", "b"]}, r"option 'axes': expected a string"),
    ("lattice_length", {"repeats": [2, 2]}, r"option 'repeats': expected a list of 3 integers"),
    ("interlayer_spacing", {"layers_per_cell": 2.5}, r"option 'layers_per_cell': expected an integer, got 2.5"),
    ("G", {"q_max": float("nan")}, r"option 'q_max': expected a finite number"),
])
def test_wrong_types_are_rejected(observable, options, match):
    with pytest.raises(OptionsError, match=match):
        validate_options(observable, options, WHERE)


@pytest.mark.parametrize("options, name", [
    ({"q_max": "22.5"}, "q_max"), ({"r_max_A": "8"}, "r_max_A"), ({"bin_width_A": "0.02 A"}, "bin_width_A")])
def test_string_numbers_are_not_coerced(options, name):
    with pytest.raises(OptionsError, match=rf"option '{name}': expected a number.*\(str\) \(write it without quotes\)"):
        validate_options("G", options, WHERE)


@pytest.mark.parametrize("text", ["false", "true", "False", "0", "no"])
def test_string_booleans_are_not_coerced(text):
    with pytest.raises(OptionsError, match=r"option 'lorch': expected true or false.*write it without quotes"):
        validate_options("G", {"q_max": 20.0, "lorch": text}, WHERE)
    with pytest.raises(OptionsError, match=r"option 'lorch_r': expected true or false"):
        validate_options("F", {"lorch_r": text}, WHERE)


@pytest.mark.parametrize("observable, options, match", [
    ("G", {"q_min": 5.0, "q_max": 5.0}, r"option 'q_max': expected q_max > q_min \(5.0 Å⁻¹\), got 5.0"),
    ("G", {"q_min": 2.0, "q_max": 1.0}, r"option 'q_max'"),
    ("G", {"q_min": -0.1}, r"option 'q_min': expected a Q >= 0"),
    ("rdf", {"bin_width_A": -0.02}, r"option 'bin_width_A': expected a length > 0 Å, got -0.02"),
    ("rdf", {"smoothing_A": 0}, r"option 'smoothing_A'"),
    ("S", {"r_max_A": -10.0}, r"option 'r_max_A'"),
    ("S", {"weighting": "neutorn"}, r"option 'weighting': expected one of .*'neutorn' \(did you mean 'neutron'\?\)"),
    ("G", {"pair": [0, 6]}, r"option 'pair': expected two atomic numbers"),
    ("lattice_length", {"axes": "abd"}, r"option 'axes': expected letters from 'abc'"),
    ("lattice_length", {"axes": ""}, r"option 'axes'"),
    ("lattice_length", {"repeats": [1, 0, 1]}, r"option 'repeats': expected 3 positive integers"),
    ("interlayer_spacing", {"layers_per_cell": 0}, r"option 'layers_per_cell': expected an integer >= 1"),
    ("interlayer_spacing", {}, r"missing required option 'layers_per_cell'"),
])
def test_bad_values_are_rejected(observable, options, match):
    with pytest.raises(OptionsError, match=match) as info:
        validate_options(observable, options, WHERE)
    assert str(info.value).startswith(WHERE + ": ")


def test_grid_checks():
    with pytest.raises(OptionsError, match=r"option 'r_max_A' \(4.0 Å\) is below the target grid's last r"):
        validate_options("G", {"r_max_A": 4.0}, WHERE, x=R_GRID)
    validate_options("rdf", {"r_max_A": float(R_GRID[-1])}, WHERE, x=R_GRID)  # (0, r_max_A] is fine
    validate_options("rdf", {}, WHERE, x=torch.tensor([0.0, 0.01, 0.02]))  # PDFgetX3 grids start at r = 0
    for observable in ("S", "F"):
        with pytest.raises(OptionsError, match=r"Q <= 0"):
            validate_options(observable, {}, WHERE, x=torch.tensor([0.0, 0.1, 0.2]))
    for observable in ("rdf", "G", "S", "F"):
        for x in (torch.tensor([1.0]), torch.tensor([])):
            with pytest.raises(OptionsError, match="at least 2 points"):
                validate_options(observable, {}, WHERE, x=x)
    with pytest.raises(ValueError, match=r"Target 'g': observable 'rdf' is a function of r; give its grid x"):
        Target("g", "rdf", np.ones(3))


def test_unknown_observable_lists_the_registered_ones():
    with pytest.raises(OptionsError, match=r"^Target 'x': unknown observable 'rdff' \(did you mean 'rdf'\?\); "
                                           r"expected one of \['F', 'G', 'S', 'density'"):
        Target("x", "rdff", np.ones(3), x=[1.0, 2.0, 3.0])
    with pytest.raises(OptionsError, match=rf"^{re.escape(WHERE)}: unknown observable 'pdf'"):
        validate_options("pdf", {}, WHERE)


def test_options_error_is_a_value_error_and_pickles():
    error = OptionsError(WHERE, "unknown option 'q_mx'")
    assert isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert (again.where, again.message, str(again)) == (error.where, error.message, str(error))


# ----------------------------------------------------------------------------- Target


def test_target_keeps_the_mapping_and_stores_the_typed_settings():
    options = {"q_max": 20, "lorch": True}
    target = Target("G_total", "G", torch.zeros(len(R_GRID)), x=R_GRID, options=options)
    assert target.options == {"q_max": 20, "lorch": True}  # as given, for serialisation
    assert target.settings == GOptions(q_max=20.0, lorch=True)
    copy = dataclasses.replace(target, name="copy")
    assert copy.settings == target.settings and copy.settings is not target.settings
    restored = pickle.loads(pickle.dumps(target))
    assert restored.settings == target.settings


def test_reassigning_observable_or_options_validates_again():
    target = Target("t", "G", torch.zeros(len(R_GRID)), x=R_GRID, options={"weighting": "xray"})
    target.observable = "rdf"
    assert type(target.settings) is RdfOptions and target.settings.weighting == "xray"
    target.options = {"smoothing_A": 0.1}
    assert target.settings == RdfOptions(smoothing_A=0.1)
    with pytest.raises(OptionsError, match="unknown option 'q_max'"):
        target.options = {"q_max": 20.0}


def test_reader_targets_carry_only_declared_options():
    data = ExperimentalData("G", [0.01, 0.02, 0.03], [0.0, 0.1, 0.2],
                            metadata={"mode": "xray", "q_min": 0.8, "q_max": 22.5, "temperature_K": 300.0,
                                      "composition": {"C": 3.0, "N": 4.0}, "r_max_transform": 8.0,
                                      "header": {"lorch": "True", "rmax_transform": "8.0"}})
    target = data.to_target("G_total", use_sigma=False)
    assert target.options == {"q_min": 0.8, "q_max": 22.5, "weighting": "xray", "lorch": True, "r_max_A": 8.0}
    assert target.settings == GOptions(q_min=0.8, q_max=22.5, weighting="xray", lorch=True, r_max_A=8.0)
    with pytest.raises(OptionsError, match=r"^Target 'G_total': unknown option 'qmax'"):
        data.to_target("G_total", use_sigma=False, qmax=20.0)
    bad = ExperimentalData("S", [1.0, 2.0], [0.5, 1.0], metadata={"header": {"weighting": "electron"}})
    with pytest.raises(OptionsError, match=r"^Target 'sq': option 'weighting'"):
        bad.to_target("sq", use_sigma=False)


# ----------------------------------------------------------------------------- values


def test_valid_options_compute_what_the_physics_functions_give(frames):
    positions, cells, numbers = frames
    step, r_max_A, q_min, q_max = 0.05, 8.0, 0.5, 20.0
    n_bins = round(r_max_A / step)
    r, partials = partial_rdfs(positions, cells, numbers, n_bins * step, n_bins, smoothing_A=0.04)
    x = r[20:100]  # bin centres: interpolation onto them returns the bins
    g = total_rdf(partials, numbers, "xray")
    G = instrument_G(r, g, number_density(len(numbers), cells), q_min, q_max, lorch=True)
    spacing = 2
    targets = [
        Target("g", "rdf", torch.ones(len(x)), x=x,
               options={"weighting": "xray", "bin_width_A": step, "r_max_A": r_max_A, "smoothing_A": 0.04}),
        Target("G", "G", torch.zeros(len(x)), x=x,
               options={"weighting": "xray", "bin_width_A": step, "r_max_A": r_max_A, "smoothing_A": 0.04,
                        "q_min": q_min, "q_max": q_max, "lorch": True}),
        Target("a", "lattice_length", [5.6, 5.6], options={"axes": "ca", "repeats": [2, 1, 2]}),
        Target("d", "interlayer_spacing", [3.0], options={"layers_per_cell": spacing}),
    ]
    values = static_observables(positions, cells, numbers, targets)
    torch.testing.assert_close(values["g"], g[:, 20:100], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values["G"], G[:, 20:100], rtol=1e-12, atol=1e-12)
    lengths = lattice_lengths(cells)
    assert torch.equal(values["a"], torch.stack([lengths[:, 2] / 2, lengths[:, 0] / 2], dim=-1))
    assert torch.equal(values["d"], interlayer_spacing(cells, spacing)[:, None])


def test_defaults_compute_the_same_as_spelling_them_out(frames):
    positions, cells, numbers = frames
    implicit = [Target("G", "G", torch.zeros(len(R_GRID)), x=R_GRID, options={"q_max": 18}),
                Target("S", "S", torch.ones(len(Q_GRID)), x=Q_GRID)]
    explicit = [Target("G", "G", torch.zeros(len(R_GRID)), x=R_GRID,
                       options={"q_max": 18.0, "q_min": 0, "lorch": False, "weighting": "neutron",
                                "pair": None, "smoothing_A": None}),
                Target("S", "S", torch.ones(len(Q_GRID)), x=Q_GRID,
                       options={"r_max_A": 10, "lorch_r": False, "weighting": "neutron", "bin_width_A": 0.02})]
    a = static_observables(positions, cells, numbers, implicit)
    b = static_observables(positions, cells, numbers, explicit)
    for name in a:
        assert torch.equal(a[name], b[name]), name
