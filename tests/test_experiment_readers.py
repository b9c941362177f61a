"""Readers for experimental files: PDFgetX3-style .gr, PDFgui 4-column .gr, CSV, and write_gr."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from difftre_torch.experiment import (
    ExperimentalData,
    ExperimentFileError,
    Target,
    parse_composition,
    read_columns,
    read_experiment,
    read_gr,
    write_gr,
)

PDFGETX3_GR = r"""[DEFAULT]

version = diffpy.pdfgetx-2.2.1

# input and output specifications
dataformat = QA
inputfile = gCN_300K.chi
backgroundfile = kapton.chi
outputtype = gr

# PDF calculation setup
mode = xray
wavelength = 0.1839
twothetazero = 0
composition = C3N4
bgscale = 0.98
rpoly = 0.9
qmaxinst = 25.0
qmin = 0.8
qmax = 22.5
rmin = 0
rmax = 30
rstep = 0.01
temperature = 300 K

[PDFgetX3]
# qmax = 30

# End of config --------------------------------------------------------------

#### start data
#S 1
#L r($\AA$)  G($\AA^{-2}$)
0.01 0.000792929
0.02 0.00157326
0.03 0.00233019
0.04 0.00305358
"""

PDFGUI_GR = """History written: Mon Jun 10 12:00:00 2024
produced by farrow
##### PDFgui
stype=N
qmax=28.5
qdamp=0.042
##### start data
#S 1 - PDF from PDFgetN
#L r G(r) dr dG(r)
1.00 -0.50 0.0 0.020
1.01 -0.45 0.0 0.021
1.02 -0.40 0.0 0.022
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _data(function: str, sigma: bool, n: int = 50) -> ExperimentalData:
    rng = np.random.default_rng(1)
    x = np.linspace(0.5, 12.0, n) + rng.uniform(0, 1e-3, n)  # awkward floats, still increasing
    values = np.sin(x) / x + rng.normal(scale=1e-3, size=n)
    return ExperimentalData(function, x, values, rng.uniform(0.01, 0.1, n) if sigma else None)


# ----------------------------------------------------------------------------- .gr files


@pytest.mark.parametrize("function, name", [("G", "a.gr"), ("rdf", "b.gr"), ("S", "c.sq"),
                                            ("F", "d.fq"), ("S", "mislabelled.gr")])
@pytest.mark.parametrize("sigma", [False, True])
def test_write_gr_read_gr_round_trip(tmp_path, function, name, sigma):
    data = _data(function, sigma)
    header = {"mode": "neutron", "composition": {"C": 3, "N": 4}, "qmin": 0.5, "qmax": 23.75,
              "temperature_K": 300.0, "note": "synthetic"}
    path = write_gr(tmp_path / name, data, header)
    back = read_gr(path)
    assert back.function == function  # from the #L labels, whatever the extension
    np.testing.assert_array_equal(back.x, data.x)  # written exactly
    np.testing.assert_array_equal(back.values, data.values)
    if sigma:
        np.testing.assert_array_equal(back.sigma, data.sigma)
    else:
        assert back.sigma is None
    meta = back.metadata
    assert (meta["mode"], meta["composition"], meta["q_min"], meta["q_max"], meta["temperature_K"]) == (
        "neutron", {"C": 3.0, "N": 4.0}, 0.5, 23.75, 300.0)
    assert meta["header"]["note"] == "synthetic" and meta["source"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # atomic: no temporary file left


def test_pdfgetx3_file_header(tmp_path):
    data = read_gr(_write(tmp_path, "gCN.gr", PDFGETX3_GR))
    assert data.function == "G"
    np.testing.assert_allclose(data.x, [0.01, 0.02, 0.03, 0.04])
    np.testing.assert_allclose(data.values, [0.000792929, 0.00157326, 0.00233019, 0.00305358])
    assert data.sigma is None
    meta = data.metadata
    assert meta["mode"] == "xray" and meta["composition"] == {"C": 3, "N": 4}
    assert (meta["q_min"], meta["q_max"], meta["q_max_inst"], meta["r_poly"]) == (0.8, 22.5, 25.0, 0.9)
    assert (meta["r_min"], meta["r_max"], meta["r_step"], meta["wavelength_A"]) == (0, 30, 0.01, 0.1839)
    assert meta["temperature_K"] == 300.0
    assert meta["header"]["dataformat"] == "QA" and meta["header"]["backgroundfile"] == "kapton.chi"
    assert meta["labels"] == [r"r($\AA$)", r"G($\AA^{-2}$)"]


def test_pdfgui_four_columns_give_sigma_and_stype_gives_mode(tmp_path):
    data = read_gr(_write(tmp_path, "pdfgui.gr", PDFGUI_GR))
    assert data.function == "G"
    np.testing.assert_allclose(data.sigma, [0.020, 0.021, 0.022])
    np.testing.assert_allclose(data.values, [-0.50, -0.45, -0.40])
    assert data.metadata["mode"] == "neutron"
    assert (data.metadata["q_max"], data.metadata["q_damp"]) == (28.5, 0.042)


def test_three_columns_and_all_zero_sigma(tmp_path):
    three = read_gr(_write(tmp_path, "three.gr", "#L r G dG\n1.0 0.1 0.01\n1.1 0.2 0.02\n"))
    np.testing.assert_allclose(three.sigma, [0.01, 0.02])
    zero = read_gr(_write(tmp_path, "zero.gr", "1.0 0.1 0.0 0.0\n1.1 0.2 0.0 0.0\n"))
    np.testing.assert_array_equal(zero.sigma, [0.0, 0.0])  # PDFgui's "unknown", kept as read
    assert zero.metadata["sigma_column"] == 3 and zero.metadata["n_columns"] == 4
    with pytest.raises(ExperimentFileError, match=r"zero\.gr, line 1: column 4 \(σ\): expected σ > 0 in every "
                                                  r"row \(use_sigma is true\), got 2 of 2 rows"):
        zero.to_target("G")  # not dropped without a word
    assert zero.to_target("G", use_sigma=False).sigma is None


def test_function_from_label_extension_or_argument(tmp_path):
    assert read_gr(_write(tmp_path, "g.gr", "#L r g(r)\n1.0 0.0\n1.1 0.2\n")).function == "rdf"
    assert read_gr(_write(tmp_path, "plain.fq", "1.0 0.0\n1.1 0.2\n")).function == "F"
    assert read_gr(_write(tmp_path, "plain2.gr", "1.0 0.0\n1.1 0.2\n"), function="rdf").function == "rdf"
    iq = _write(tmp_path, "x.iq", "#### start data\n#L Q($\\AA^{-1}$)  I\n1.0 5.0\n1.1 4.0\n")
    with pytest.raises(ExperimentFileError, match=r"x\.iq, line 2: expected a column label or extension"):
        read_gr(iq)
    assert read_gr(iq, function="S").function == "S"


def test_read_experiment_dispatches_by_extension(tmp_path):
    assert read_experiment(_write(tmp_path, "a.gr", PDFGETX3_GR)).metadata["mode"] == "xray"
    assert read_experiment(_write(tmp_path, "a.csv", "1,2\n2,3\n"), function="S").function == "S"
    with pytest.raises(ExperimentFileError, match=r"a\.h5: expected an extension"):
        read_experiment(tmp_path / "a.h5")


# ----------------------------------------------------------------------------- column files


def test_csv_with_and_without_sigma_and_header_row(tmp_path):
    plain = read_columns(_write(tmp_path, "s.csv", "# S(Q) of g-C3N4\n1.0,0.5\n2.0,1.5\n3.0,1.0\n"), "S")
    np.testing.assert_allclose(plain.x, [1, 2, 3])
    np.testing.assert_allclose(plain.values, [0.5, 1.5, 1.0])
    assert plain.sigma is None
    named = read_columns(_write(tmp_path, "g.csv", "r,G,sigma\n1.0,0.1,0.01  # first\n1.5,0.2,0.02\n"),
                         "G")
    np.testing.assert_allclose(named.sigma, [0.01, 0.02])
    assert named.metadata["columns"] == ["r", "G", "sigma"]
    semi = read_columns(_write(tmp_path, "eu.csv", "Q;S\n1,0;0,5\n1,5;0,75\n"), "S")
    np.testing.assert_allclose(semi.x, [1.0, 1.5])
    np.testing.assert_allclose(semi.values, [0.5, 0.75])
    spaces = read_columns(_write(tmp_path, "f.txt", "1.0\t0.5 0.1\n2.0   0.25 0.2\n"), "F")
    np.testing.assert_allclose(spaces.sigma, [0.1, 0.2])


def test_x_unit_nm_converts_grid_and_dimensionful_values(tmp_path):
    path = _write(tmp_path, "g_nm.csv", "0.1,2.0,0.5\n0.2,4.0,0.5\n")
    data = read_columns(path, "G", x_unit="nm")
    np.testing.assert_allclose(data.x, [1.0, 2.0])  # Å
    np.testing.assert_allclose(data.values, [0.02, 0.04])  # nm⁻² → Å⁻²
    np.testing.assert_allclose(data.sigma, [0.005, 0.005])
    f = read_columns(_write(tmp_path, "f_nm.csv", "10,2.0\n20,4.0\n"), "F", x_unit="1/nm")
    np.testing.assert_allclose(f.x, [1.0, 2.0])
    np.testing.assert_allclose(f.values, [0.2, 0.4])  # nm⁻¹ → Å⁻¹
    with pytest.raises(ValueError, match="does not fit"):
        read_columns(path, "G", x_unit="1/nm")


def test_read_columns_needs_a_function(tmp_path):
    path = _write(tmp_path, "data.csv", "1,2\n2,3\n")
    with pytest.raises(ExperimentFileError, match=r"data\.csv: expected function="):
        read_columns(path, None)
    with pytest.raises(ExperimentFileError, match=r"data\.csv: unknown function 'Sq'"):
        read_columns(path, "Sq")
    with pytest.raises(ExperimentFileError, match="unknown function"):
        read_gr(_write(tmp_path, "a.gr", PDFGETX3_GR), function="g")


# ----------------------------------------------------------------------------- malformed files

_GOOD = "1.0 0.1\n1.1 0.2\n"


@pytest.mark.parametrize("name, text, line, expected", [
    ("bad.gr", PDFGETX3_GR + "abc 1.0\n", 38, "expected 2–4 numeric columns, got 'abc 1.0'"),
    ("bad.gr", PDFGETX3_GR.replace("0.03 0.00233019", "0.03 0.00233019 1 2 3"), 36,
     "expected 2–4 numeric columns"),
    ("bad.gr", "1.0 0.1\n1.1 0.2 0.01\n", 2, "expected 2 numeric columns as on line 1"),
    ("bad.gr", PDFGETX3_GR.replace("0.03 0.00233019", "0.02 0.00233019"), 36,
     "column 1 (r($\\AA$)): expected x increasing, got 0.02 after 0.02 (line 35): a duplicate"),
    ("bad.gr", "1.0 0.1\n1.2 0.2\n1.1 0.3\n", 3, "column 1 (r): expected x increasing, got 1.1 after 1.2 "
     "(line 2): a decrease"),
    ("bad.gr", "# one row\n1.0 0.1\n", 2, "expected at least 2 data rows, found 1"),
    ("bad.gr", "1.0 0.1\n1.1 nan\n1.2 0.3\n", 2, "column 2 (G): expected a finite number, got nan (1 such rows)"),
    ("bad.gr", "#L r G\n1.0 0.1\ninf 0.2\n", 3, "column 1 (r): expected a finite number, got inf"),
    ("bad.gr", PDFGETX3_GR.replace("qmax = 22.5", "qmax = high"), 20, "qmax: expected a number, got 'high'"),
    ("bad.gr", PDFGETX3_GR.replace("mode = xray", "mode = sas"), 12,
     "mode: expected a scattering mode: xray (x, x-ray) or neutron (n), got 'sas'"),
    ("bad.gr", PDFGUI_GR.replace("stype=N", "stype=E"), 4, "stype: expected a scattering mode"),
    ("bad.gr", PDFGETX3_GR.replace("C3N4", "Xq3N4"), 15, "expected a formula"),
    ("bad.gr", PDFGETX3_GR.replace("300 K", "warm"), 24, "expected a temperature"),
    ("bad.sq", "#L r($\\AA$) S\n" + _GOOD, 1, "expected a grid for 'S'"),
    ("bad.csv", "r,G\nx,y\n" + _GOOD, 2, "expected 2 or 3 numeric columns"),
    ("bad.csv", "1,2,3,4\n" + _GOOD, 1, "expected 2 or 3 numeric columns"),
    ("bad.csv", "r,G\n1.0,0.1\n1.0,0.2\n", 3, "column 1 (r): expected x increasing, got 1 after 1"),
    ("bad.csv", "1.0,0.1\n0.9,0.2\n", 2, "expected x increasing, got 0.9 after 1"),
    ("bad.csv", "r,G\n", 1, "expected at least 2 data rows, found 0"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, text, line, expected):
    path = _write(tmp_path, name, text)
    with pytest.raises(ExperimentFileError) as info:
        read_experiment(path, function="G" if name.endswith(".csv") else None)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert expected in message and name in message
    assert info.value.line == line and isinstance(info.value, ValueError)
    assert str(pickle.loads(pickle.dumps(info.value))) == message


def test_parse_composition():
    assert parse_composition("C3N4") == {"C": 3, "N": 4}
    assert parse_composition("C6 N8") == {"C": 6, "N": 8}
    assert parse_composition("SiO2") == {"Si": 1, "O": 2}
    assert parse_composition("Cu Sn0.5 Cu") == {"Cu": 2, "Sn": 0.5}
    assert parse_composition("D2O") == {"D": 2, "O": 1}
    for bad in ["", "c3n4", "Ca(OH)2", "Xx2", "C0"]:
        with pytest.raises(ValueError):
            parse_composition(bad)


def test_experimental_data_validates_and_writer_rejects_bad_header(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing"):
        ExperimentalData("G", [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="unknown function"):
        ExperimentalData("g", [1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="sigma"):
        ExperimentalData("G", [1.0, 2.0], [0.0, 0.0], [0.1, 0.0, 0.1])
    kept = ExperimentalData("G", [1.0, 2.0], [0.0, 0.0], [0.1, 0.0])  # σ as read; fit_sigma decides
    np.testing.assert_array_equal(kept.sigma, [0.1, 0.0])
    with pytest.raises(ValueError, match="cannot be one 'key = value' line"):
        write_gr(tmp_path / "x.gr", _data("G", False), {"note": "two\nlines"})
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- to_target


def test_to_target_maps_header_to_options(tmp_path):
    data = read_gr(_write(tmp_path, "gCN.gr", PDFGETX3_GR))
    target = data.to_target("pdf_xray", weight=2.0, state_point="300K", use_sigma=False, lorch=True)
    assert isinstance(target, Target)
    assert (target.name, target.observable, target.weight, target.state_point) == (
        "pdf_xray", "G", 2.0, "300K")
    assert target.options == {"q_min": 0.8, "q_max": 22.5, "weighting": "xray", "lorch": True}
    torch.testing.assert_close(target.x, torch.tensor(data.x, dtype=torch.float64))
    torch.testing.assert_close(target.values, torch.tensor(data.values, dtype=torch.float64))
    assert target.sigma is None

    assert target.source == str(tmp_path / "gCN.gr") and target.composition == {"C": 3.0, "N": 4.0}

    gui_data = read_gr(_write(tmp_path, "pdfgui.gr", PDFGUI_GR))
    with pytest.raises(ExperimentFileError, match=r"pdfgui\.gr, line 5: qmax: expected options\.q_max 28\.5 \(what "
                                                  r"the file declares: qmax = 28\.5\) or no such option, got 20\.0"):
        gui_data.to_target("pdf_n", q_max=20.0)  # an option does not override the header
    gui = gui_data.to_target("pdf_n", q_max=28.5)  # restating it is fine
    assert gui.options == {"q_max": 28.5, "weighting": "neutron"}
    torch.testing.assert_close(gui.sigma, torch.tensor([0.020, 0.021, 0.022], dtype=torch.float64))

    s = ExperimentalData("S", [1.0, 2.0], [0.5, 1.0], [0.1, 0.1], {"mode": "xray", "q_max": 20.0})
    target_s = s.to_target("sq")
    assert target_s.observable == "S" and target_s.options == {"weighting": "xray"}  # Q range is G's
