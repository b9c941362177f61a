"""Fuzzing the inputs of a job: every malformed input is one line naming the file and the field.

Each case copies the shipped LJ argon job (``difftre_torch/data/lj_argon/``: config, RDF CSV,
start structure) into ``tmp_path``, breaks exactly one thing and runs
``difftre_torch.cli.main`` in-process: ``difftre check`` (no MD) for everything it can see, and
``difftre refine`` with a few MD steps for the few mistakes that only show while sampling (a
runaway MD). A broken input must give exit code 2 (refine: non-zero and no refined model file),
exactly one line on stderr (no traceback, no leaked exception type) that names the file (the
config, or the data file's name) and the field, column or line. Valid-but-odd inputs (a
non-uniform grid, comments, CRLF, a BOM, ...) must pass ``difftre check``, and where it is cheap
the target built from them must hold the file's numbers.

Besides the shipped CSV, the experiment cases use files made here from the same RDF: a
PDFgetX3-style ``.gr`` of g(r), a ``.gr`` of G(r) = 4πρr(g − 1) (Å⁻²) and a small ``.sq`` of
S(Q) = 1 + 4πρ ∫ r²(g − 1) sin(Qr)/(Qr) dr; each first passes as a valid job (the ``odd`` cases
``base-*``). Every case is classified in :data:`CASES` (config, experiment, structure, model,
value, odd). A failing case's message starts with its outcome: ``[partial]`` (non-zero exit, but
the line misses the file or field, or there is more than one line), ``[raw]`` (a traceback or an
exception type reached the user), ``[silent]`` (exit 0), ``[rejected]`` (a valid input refused).
"""

from __future__ import annotations

import io
import re
import shutil
import sys
import traceback
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from difftre_torch.cli import main

SHIPPED = Path(__file__).resolve().parents[1] / "difftre_torch" / "data" / "lj_argon"
CONFIG, CSV, STRUCTURE = "lj_argon.yaml", "lj_argon_rdf.csv", "lj_argon_start.extxyz"
CLASSES = ("config", "experiment", "structure", "model", "value", "odd")

RDF = np.loadtxt(SHIPPED / CSV, delimiter=",", comments="#")  # [85, 3]: r (Å), g, σ
N_ATOMS, BOX_A = 108, 17.467404295302458
RHO_PER_A3 = N_ATOMS / BOX_A**3
Q_PER_A = np.round(np.arange(1.0, 10.01, 0.3), 6)  # the .sq grid (Å⁻¹), 31 points

# a short refinement: seconds, not minutes (only the cases that must sample use it)
QUICK_REFINE = ("--threads", "1", "--set", "trainer.updates=1", "--set", "sampler.equilibration_steps=20",
                "--set", "sampler.reequilibration_steps=10", "--set", "sampler.snapshots_per_replica=2",
                "--set", "sampler.stride=5", "--set", "sampler.max_blow_ups=2", "--set", "sampler.progress=false",
                "--set", "trainer.progress=false", "--set", "trainer.tensorboard=false",
                "--set", "compare.n_blocks=2")

# a Python exception's type in the user's line is a leak, as a traceback is
LEAK = re.compile(r"Traceback|internal error|\b[A-Z]\w*(?:Error|Exception)\b|\bStopIteration\b")
# "targets[0] (rdf).file" and "targets[0].file" both name the field
ENTRY_NAME = re.compile(r"(\w\[\d+\]) \([^)]*\)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- the files


@dataclass
class Table:
    """A column file as header lines and rows of fields; data row k is on line len(head) + k + 1."""

    name: str
    head: list[str]
    rows: list[list[str]]
    sep: str

    def text(self, newline: str = "\n") -> str:
        return newline.join(self.head + [self.sep.join(r) for r in self.rows]) + newline


def _rows(*columns: np.ndarray) -> list[list[str]]:
    return [[f"{v:.6f}" for v in row] for row in zip(*columns)]


def _gr_head(x_label: str, y_label: str, dy_label: str) -> list[str]:
    return ["[DEFAULT]", "version = difftre_torch fuzz", "mode = neutron", "composition = Ar", "",
            "#### start data", "#S 1", f"#L {x_label}  {y_label}  {dy_label}"]


def _structure_factor(q: np.ndarray) -> np.ndarray:
    """S(Q) = 1 + 4πρ ∫ r²(g − 1) sin(Qr)/(Qr) dr over the CSV's r grid (midpoint sums)."""
    r, g = RDF[:, 0], RDF[:, 1]
    dr = r[1] - r[0]
    qr = q[:, None] * r[None, :]
    return 1.0 + 4 * np.pi * RHO_PER_A3 * (r**2 * (g - 1.0) * np.sin(qr) / qr).sum(axis=1) * dr


def table(kind: str) -> Table:
    """The valid files of the cases: "csv" (shipped), "gr" (g(r)), "G" (G(r)), "sq" (S(Q))."""
    r, g, sigma = RDF.T
    if kind == "csv":
        lines = (SHIPPED / CSV).read_text().splitlines()
        return Table(CSV, lines[:1], [line.split(",") for line in lines[1:]], ",")
    if kind == "gr":
        return Table("argon_rdf.gr", _gr_head(r"r($\AA$)", "g", "dg"), _rows(r, g, sigma), "  ")
    if kind == "G":
        G = 4 * np.pi * RHO_PER_A3 * r * (g - 1.0)
        return Table("argon_G.gr", _gr_head(r"r($\AA$)", r"G($\AA^{-2}$)", r"dG($\AA^{-2}$)"),
                     _rows(r, G, np.full_like(r, 0.01)), "  ")
    if kind == "sq":
        return Table("argon_S.sq", _gr_head(r"Q($\AA^{-1}$)", "S", "dS"),
                     _rows(Q_PER_A, _structure_factor(Q_PER_A), np.full_like(Q_PER_A, 0.01)), "  ")
    raise KeyError(kind)


ENTRIES = {  # the target entry of each valid file
    "csv": {"name": "rdf", "observable": "rdf", "file": CSV, "function": "rdf", "use_sigma": False},
    "gr": {"name": "rdf", "observable": "rdf", "file": "argon_rdf.gr", "use_sigma": False},
    "G": {"name": "G", "observable": "G", "file": "argon_G.gr", "use_sigma": False},
    "sq": {"name": "S", "observable": "S", "file": "argon_S.sq", "use_sigma": False, "options": {"r_max_A": 8.0}},
}


def line_of(kind: str, k: int) -> str:
    """"line N" of data row k of the ``kind`` file as :func:`table` writes it."""
    return f"line {len(table(kind).head) + k + 1}"


def garbage(n: int = 600, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class Job:
    """The shipped LJ job in ``folder``: ``config`` (the YAML as a dict) and the files, to break."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for name in (CONFIG, CSV, STRUCTURE):
            shutil.copy(SHIPPED / name, folder / name)
        self.config = yaml.safe_load((SHIPPED / CONFIG).read_text())
        self.config_text: str | bytes | None = None  # raw config content instead of ``config``
        self.args: list[str] = []

    @property
    def path(self) -> Path:
        return (self.folder / CONFIG).resolve()

    def write(self) -> Path:
        if self.config_text is None:
            self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        elif isinstance(self.config_text, bytes):
            self.path.write_bytes(self.config_text)
        else:
            self.path.write_text(self.config_text)
        return self.path

    def file(self, name: str, content: str | bytes, newline: str | None = None) -> None:
        path = self.folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, newline=newline)

    def structure_lines(self) -> list[str]:
        return (SHIPPED / STRUCTURE).read_text().splitlines()


# ----------------------------------------------------------------------------- mutations

Mutation = Callable[[Job], None]


def _parts(dotted: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in dotted.split(".")]


def put(dotted: str, value) -> Mutation:
    """config[a][b]... = value (``targets.0.use_sigma``: list index 0)."""
    *keys, last = _parts(dotted)

    def mutate(job: Job) -> None:
        node = job.config
        for key in keys:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
        node[last] = value
    return mutate


def drop(dotted: str) -> Mutation:
    *keys, last = _parts(dotted)

    def mutate(job: Job) -> None:
        node = job.config
        for key in keys:
            node = node[key]
        del node[last]
    return mutate


def cli(*args: str) -> Mutation:
    def mutate(job: Job) -> None:
        job.args += list(args)
    return mutate


def target(kind: str, edit: Callable[[Table], None] | None = None, *, content: str | bytes | None = None,
           name: str | None = None, newline: str = "\n", **entry) -> Mutation:
    """targets[0] reads the ``kind`` file (edited by ``edit``, or replaced by ``content``, saved
    as ``name``); ``entry`` changes the target entry (a None value removes the key)."""
    def mutate(job: Job) -> None:
        t = table(kind)
        if edit is not None:
            edit(t)
        file_name = name or t.name
        job.file(file_name, t.text(newline) if content is None else content, newline="")
        new = dict(ENTRIES[kind], file=file_name, **entry)
        job.config["targets"] = [{k: v for k, v in new.items() if v is not None}]
    return mutate


def cell(k: int, column: int, value: str) -> Callable[[Table], None]:
    def edit(t: Table) -> None:
        t.rows[k][column] = value
    return edit


def swap(k: int) -> Callable[[Table], None]:
    """Rows k and k+1 swapped: x falls at row k + 1."""
    def edit(t: Table) -> None:
        t.rows[k], t.rows[k + 1] = t.rows[k + 1], t.rows[k]
    return edit


def duplicate_x(k: int) -> Callable[[Table], None]:
    def edit(t: Table) -> None:
        t.rows[k][0] = t.rows[k - 1][0]
    return edit


def keep_rows(n: int) -> Callable[[Table], None]:
    def edit(t: Table) -> None:
        del t.rows[n:]
    return edit


def short_row(k: int) -> Callable[[Table], None]:
    def edit(t: Table) -> None:
        t.rows[k] = t.rows[k][:1]
    return edit


def column(index: int, value: str) -> Callable[[Table], None]:
    def edit(t: Table) -> None:
        for row in t.rows:
            row[index] = value
    return edit


def head_line(text: str) -> Callable[[Table], None]:
    """A header line added just before ``#### start data``."""
    def edit(t: Table) -> None:
        t.head.insert(t.head.index("#### start data"), text)
    return edit


def structure(edit: Callable[[list[str]], list[str]] | None = None, *, content: bytes | None = None) -> Mutation:
    """The start structure (extxyz lines: count, comment, atoms) edited in place."""
    def mutate(job: Job) -> None:
        if content is not None:
            job.file(STRUCTURE, content)
        else:
            job.file(STRUCTURE, "\n".join(edit(job.structure_lines())) + "\n")
    return mutate


def _atom(k: int, text: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        lines[2 + k] = text
        return lines
    return edit


def _comment(old: str, new: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        assert old in lines[1]
        lines[1] = lines[1].replace(old, new)
        return lines
    return edit


LATTICE = f'Lattice="{BOX_A} 0.0 0.0 0.0 {BOX_A} 0.0 0.0 0.0 {BOX_A}"'


def nequip(model: str, content: bytes | None = None, **options) -> Mutation:
    """``potential: {kind: nequip, path: model}`` with ``content`` written to ``model`` (None: no file)."""
    def mutate(job: Job) -> None:
        if content is not None:
            job.file(model, content)
        job.config["potential"] = {"kind": "nequip", "path": model, "device": "cpu", **options}
    return mutate


def _zip_of_text() -> bytes:
    """A valid zip archive that holds no model."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("readme.txt", "not a model")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One input with one thing broken (or, class "odd", valid but unusual).

    names: what the one stderr line must contain besides the file (field paths, line numbers).
    file: the data file the line must name (None: the config file's path; "": none, for a
        failure while sampling, which names the state point and the setting instead).
    command: "check", or "refine" (a short run, for what only sampling shows).
    expect: odd cases: a check of the target built from the input.
    """

    id: str
    cls: str
    mutate: Mutation
    names: tuple[str, ...] = ()
    file: str | None = None
    command: str = "check"
    expect: Callable[[Job], None] | None = None


def _targets(job: Job):
    from difftre_torch.config import load_job
    from difftre_torch.workflow.build import build_targets

    parsed = load_job(job.path)
    return build_targets(parsed, parsed.targets)


def holds(x: np.ndarray, values: np.ndarray) -> Callable[[Job], None]:
    """The target built has exactly this grid and these values."""
    def expect(job: Job) -> None:
        (t,) = _targets(job)
        np.testing.assert_allclose(t.x.numpy(), x, rtol=0, atol=1e-9)
        np.testing.assert_allclose(t.values.numpy(), values, rtol=0, atol=1e-9)
    return expect


R, G_OF_R = RDF[:, 0], RDF[:, 1]
UNIFORM_THEN_SPARSE = np.r_[np.arange(20), np.arange(20, 85)[np.arange(20, 85) % 3 != 2]]
T0 = "targets[0]"

CASES: list[Case] = [
    # --- config: the file's structure, sections and names ------------------------------------
    Case("unknown-section", "config", put("trainr", {"updates": 3}), ("trainr", "trainer")),
    Case("misspelt-system-field", "config", put("system.structur", STRUCTURE), ("system.structur",)),
    Case("misspelt-potential-option", "config", put("potential.sigma", 3.4), ("potential.sigma", "sigma_A")),
    Case("misspelt-state-point-field", "config", put("state_points.0.temperature", 181.0),
         ("state_points[0].temperature",)),
    Case("misspelt-sampler-field", "config", put("sampler.timestep", 5.0), ("sampler.timestep", "timestep_fs")),
    Case("misspelt-trainer-field", "config", put("trainer.learning_rat", 0.03), ("trainer.learning_rat",)),
    Case("misspelt-target-field", "config", put("targets.0.obervable", "rdf"), ("targets[0].obervable",)),
    Case("misspelt-target-option", "config", put("targets.0.options", {"bin_width": 0.1}),
         (T0, "options", "bin_width")),
    Case("misspelt-output-field", "config", put("output.directory", "out"), ("output.directory",)),
    Case("missing-potential-section", "config", drop("potential"), ("potential",)),
    Case("state-points-empty", "config", put("state_points", []), ("state_points",)),
    Case("state-points-a-mapping", "config", put("state_points", {"name": "T181", "temperature_K": 181.0}),
         ("state_points",)),
    Case("duplicate-target-names", "config",
         put("targets", [dict(ENTRIES["csv"]), dict(ENTRIES["csv"])]), ("targets[1].name", "'rdf'")),
    Case("target-state-point-unknown", "config", put("targets.0.state_point", "T180"),
         ("targets[0].state_point", "'T180'")),
    Case("target-file-and-values", "config", put("targets.0.values", [1.0, 2.0]), (T0, "values")),
    Case("unknown-observable", "config", put("targets.0.observable", "rdff"), ("targets[0].observable", "'rdff'")),
    Case("unknown-potential-kind", "config", put("potential.kind", "lenard_jones"), ("potential.kind",)),
    Case("trainable-unknown-parameter", "config", put("potential.trainable", ["sigmaa"]),
         ("potential.trainable", "sigmaa")),
    Case("unknown-sampler-kind", "config", put("sampler.kind", "langevin"), ("sampler.kind", "'langevin'")),
    Case("unknown-lr-schedule", "config", put("trainer.lr_schedule", "cosin"), ("trainer.lr_schedule",)),
    Case("compare-one-block", "config", put("compare.n_blocks", 1), ("compare.n_blocks",)),
    Case("report-check-unknown-target", "config",
         put("report.checks", [{"kind": "r_w_cut", "target": "rfd", "state_point": "T181"}]),
         ("report.checks[0].target", "'rfd'")),
    Case("force-matching-file-missing", "config", put("force_matching", {"file": "dft_frames.extxyz"}),
         ("force_matching.file", "dft_frames.extxyz")),
    Case("force-matching-without-file-field", "config", put("force_matching", {"scan": [0.1]}),
         ("force_matching.file",)),
    Case("force-matching-unlabelled-frames", "config", put("force_matching", {"file": STRUCTURE}),
         ("force_matching.file", STRUCTURE)),
    Case("evaluation-set-file-missing", "config",
         put("evaluation", {"sets": [{"name": "dft", "file": "dft_frames.extxyz"}]}),
         ("evaluation.sets", "dft_frames.extxyz")),
    Case("evaluation-set-unlabelled", "config", put("evaluation", {"sets": [{"name": "start", "file": STRUCTURE}]}),
         ("evaluation.sets", "references", STRUCTURE)),
    Case("output-dir-a-number", "config", put("output.dir", 5), ("output.dir",)),
    Case("yaml-syntax-error", "config",
         lambda job: setattr(job, "config_text", (SHIPPED / CONFIG).read_text().replace("stride: 20", "stride: [20")),
         ("line",)),
    Case("config-a-list", "config", lambda job: setattr(job, "config_text", "- system\n- potential\n"),
         ("mapping",)),
    Case("config-binary-garbage", "config", lambda job: setattr(job, "config_text", garbage()), ()),
    Case("set-unknown-field", "config", cli("--set", "trainer.learningrate=0.1"), ("trainer.learningrate",)),

    # --- experiment: .gr of g(r) -------------------------------------------------------------
    Case("gr-nan-value", "experiment", target("gr", cell(40, 1, "nan")), (T0, line_of("gr", 40)), "argon_rdf.gr"),
    Case("gr-inf-value", "experiment", target("gr", cell(40, 1, "inf")), (T0, line_of("gr", 40)), "argon_rdf.gr"),
    Case("gr-non-monotonic-x", "experiment", target("gr", swap(30)), (T0, line_of("gr", 31)), "argon_rdf.gr"),
    Case("gr-duplicate-x", "experiment", target("gr", duplicate_x(30)), (T0, line_of("gr", 30)), "argon_rdf.gr"),
    Case("gr-one-row", "experiment", target("gr", keep_rows(1)), (T0, "row"), "argon_rdf.gr"),
    Case("gr-missing-column", "experiment", target("gr", short_row(50)), (T0, line_of("gr", 50)), "argon_rdf.gr"),
    Case("gr-text-in-number-column", "experiment", target("gr", cell(50, 1, "1.0O2")), (T0, line_of("gr", 50)),
         "argon_rdf.gr"),
    Case("gr-sigma-zeros-with-use-sigma", "experiment", target("gr", column(2, "0.000000"), use_sigma=True),
         (T0, "sigma"), "argon_rdf.gr"),
    Case("gr-negative-r", "experiment", target("gr", cell(0, 0, "-0.050000")), (T0, "-0.05"), "argon_rdf.gr"),
    Case("gr-declared-function-conflicts", "experiment", target("gr", function="S"), (T0, "function", "'S'"),
         "argon_rdf.gr"),
    Case("gr-observable-conflicts", "experiment", target("gr", observable="G"), ("targets[0].observable", "'G'"),
         "argon_rdf.gr"),
    Case("gr-empty-file", "experiment", target("gr", content=""), (T0,), "argon_rdf.gr"),
    Case("gr-binary-garbage", "experiment", target("gr", content=garbage()), (T0,), "argon_rdf.gr"),
    Case("gr-wrong-extension", "experiment", target("gr", name="argon_rdf.pdf"), (T0, "extension"), "argon_rdf.pdf"),
    Case("gr-bad-header-value", "experiment", target("gr", head_line("qmax = lots")), (T0, "qmax", "line 6"),
         "argon_rdf.gr"),
    Case("gr-header-without-rows", "experiment", target("gr", keep_rows(0)), (T0, "row"), "argon_rdf.gr"),
    # --- experiment: .sq of S(Q) --------------------------------------------------------------
    Case("sq-nan-value", "experiment", target("sq", cell(10, 1, "nan")), (T0, line_of("sq", 10)), "argon_S.sq"),
    Case("sq-non-monotonic-q", "experiment", target("sq", swap(10)), (T0, line_of("sq", 11)), "argon_S.sq"),
    Case("sq-duplicate-q", "experiment", target("sq", duplicate_x(10)), (T0, line_of("sq", 10)), "argon_S.sq"),
    Case("sq-zero-q", "experiment", target("sq", cell(0, 0, "0.000000")), (T0, "Q"), "argon_S.sq"),
    Case("sq-one-row", "experiment", target("sq", keep_rows(1)), (T0, "row"), "argon_S.sq"),
    Case("sq-text-in-number-column", "experiment", target("sq", cell(5, 2, "n/a")), (T0, line_of("sq", 5)),
         "argon_S.sq"),
    Case("sq-declared-function-conflicts", "experiment", target("sq", function="rdf"), (T0, "function", "'rdf'"),
         "argon_S.sq"),
    Case("sq-observable-conflicts", "experiment", target("sq", observable="F"), ("targets[0].observable", "'F'"),
         "argon_S.sq"),
    Case("sq-empty-file", "experiment", target("sq", content=""), (T0,), "argon_S.sq"),
    # --- experiment: the shipped CSV -----------------------------------------------------------
    Case("csv-nan-value", "experiment", target("csv", cell(40, 1, "nan")), (T0, line_of("csv", 40)), CSV),
    Case("csv-non-monotonic-x", "experiment", target("csv", swap(30)), (T0, line_of("csv", 31)), CSV),
    Case("csv-duplicate-x", "experiment", target("csv", duplicate_x(30)), (T0, line_of("csv", 30)), CSV),
    Case("csv-one-row", "experiment", target("csv", keep_rows(1)), (T0, "row"), CSV),
    Case("csv-missing-column", "experiment", target("csv", short_row(50)), (T0, line_of("csv", 50)), CSV),
    Case("csv-text-in-number-column", "experiment", target("csv", cell(50, 1, "0.9x")), (T0, line_of("csv", 50)),
         CSV),
    Case("csv-sigma-zeros-with-use-sigma", "experiment", target("csv", column(2, "0.0"), use_sigma=True),
         (T0, "sigma"), CSV),
    Case("csv-one-zero-sigma-with-use-sigma", "experiment", target("csv", cell(60, 2, "0.0"), use_sigma=True),
         (T0, "sigma", line_of("csv", 60)), CSV),
    Case("csv-declared-function-conflicts", "experiment", target("csv", function="G"), (T0, "observable", "'G'"),
         CSV),
    Case("csv-without-function", "experiment", target("csv", function=None), (T0, "function"), CSV),
    Case("csv-empty-file", "experiment", target("csv", content=""), (T0,), CSV),
    Case("csv-binary-garbage", "experiment", target("csv", content=garbage()), (T0,), CSV),
    Case("csv-wrong-extension", "experiment", target("csv", name="lj_argon_rdf.xlsx"), (T0, "extension"),
         "lj_argon_rdf.xlsx"),
    Case("csv-missing-file", "experiment", put("targets.0.file", "rdf_2024.csv"), ("targets[0]", "file"),
         "rdf_2024.csv"),

    # --- structure -------------------------------------------------------------------------------
    Case("atoms-0.1-A-apart", "structure", structure(_atom(1, "Ar 0.10000000 0.00000000 0.00000000")),
         ("system.structure",), STRUCTURE),
    Case("zero-volume-cell", "structure",
         structure(_comment(LATTICE, f'Lattice="{BOX_A} 0.0 0.0 0.0 {BOX_A} 0.0 0.0 0.0 0.0"')),
         ("system.structure",), STRUCTURE),
    Case("no-cell-no-pbc", "structure", structure(lambda lines: [lines[0], "Properties=species:S:1:pos:R:3"] + lines[2:]),
         ("system.structure",), STRUCTURE),
    Case("partial-pbc", "structure", structure(_comment('pbc="T T T"', 'pbc="T T F"')), ("system.structure",),
         STRUCTURE),
    Case("unknown-element", "structure", structure(_atom(0, "Xx 0.0 0.0 0.0")), ("system.structure", "Xx"),
         STRUCTURE),
    Case("one-atom", "structure", structure(lambda lines: ["1", lines[1], lines[2]]), ("system.structure",),
         STRUCTURE),
    Case("nan-position", "structure", structure(_atom(5, "Ar nan 0.0 0.0")), ("system.structure",), STRUCTURE),
    Case("truncated-atom-list", "structure", structure(lambda lines: lines[:-8]), ("system.structure",), STRUCTURE),
    Case("garbage-structure-file", "structure", structure(content=garbage()), ("system.structure",), STRUCTURE),
    Case("empty-structure-file", "structure", structure(content=b""), ("system.structure",), STRUCTURE),
    Case("missing-structure-file", "structure", put("system.structure", "argon_start.extxyz"),
         ("system.structure",), "argon_start.extxyz"),
    Case("frame-index-past-the-end", "structure", put("system.index", 3), ("system.structure", "3"), STRUCTURE),

    # --- model files -------------------------------------------------------------------------
    Case("nequip-garbage-ckpt", "model", nequip("model.ckpt", garbage()), ("potential.path",), "model.ckpt"),
    Case("nequip-empty-ckpt", "model", nequip("model.ckpt", b""), ("potential.path",), "model.ckpt"),
    Case("nequip-missing-ckpt", "model", nequip("model.ckpt"), ("potential.path",), "model.ckpt"),
    Case("nequip-garbage-package", "model", nequip("model.nequip.zip", garbage()), ("potential.path",),
         "model.nequip.zip"),
    Case("nequip-zip-without-model", "model", nequip("model.nequip.zip", _zip_of_text()), ("potential.path",),
         "model.nequip.zip"),
    Case("nequip-garbage-torchscript", "model", nequip("model.nequip.pth", garbage()), ("potential.path",),
         "model.nequip.pth"),
    Case("nequip-garbage-correction", "model", nequip("refined.correction.pt", garbage()), ("potential.path",),
         "refined.correction.pt"),
    Case("nequip-structure-as-model", "model", nequip(STRUCTURE), ("potential.path",), STRUCTURE),
    Case("nequip-file-instead-of-path", "model",
         lambda job: job.config.update(potential={"kind": "nequip", "file": "model.ckpt"}),
         ("potential.file", "path")),
    Case("nequip-sampling-model-not-pt2", "model", nequip(STRUCTURE, sampling_model="model.ckpt"),
         ("potential.sampling_model",)),

    # --- values ----------------------------------------------------------------------------------
    Case("quoted-timestep", "value", put("sampler.timestep_fs", "5.0"), ("sampler.timestep_fs", "without quotes")),
    Case("quoted-temperature", "value", put("state_points.0.temperature_K", "181"),
         ("state_points[0].temperature_K",)),
    Case("string-false-for-use-sigma", "value", put("targets.0.use_sigma", "false"), ("targets[0].use_sigma",)),
    Case("string-false-for-hydrostatic", "value", put("sampler.hydrostatic", "false"), ("sampler.hydrostatic",)),
    Case("set-quoted-updates", "value", cli("--set", 'trainer.updates="5"'), ("trainer.updates",)),
    Case("set-negative-updates", "value", cli("--set", "trainer.updates=-1"), ("trainer.updates",)),
    Case("set-stride-zero", "value", cli("--set", "sampler.stride=0"), ("sampler.stride",)),
    Case("temperature-zero", "value", put("state_points.0.temperature_K", 0.0), ("state_points[0].temperature_K",)),
    Case("temperature-negative", "value", put("state_points.0.temperature_K", -181.0),
         ("state_points[0].temperature_K",)),
    Case("temperature-nan", "value", put("state_points.0.temperature_K", float("nan")),
         ("state_points[0].temperature_K",)),
    Case("temperature-inf", "value", put("state_points.0.temperature_K", float("inf")),
         ("state_points[0].temperature_K",)),
    Case("pressure-nan", "value", put("state_points.0.pressure_GPa", float("nan")), ("state_points[0].pressure_GPa",)),
    Case("replicas-zero", "value", put("state_points.0.replicas", 0), ("state_points[0].replicas",)),
    Case("timestep-zero", "value", put("sampler.timestep_fs", 0.0), ("sampler.timestep_fs",)),
    Case("timestep-nan", "value", put("sampler.timestep_fs", float("nan")), ("sampler.timestep_fs",)),
    Case("friction-negative", "value", put("sampler.friction_per_fs", -0.01), ("sampler.friction_per_fs",)),
    Case("equilibration-negative", "value", put("sampler.equilibration_steps", -1), ("sampler.equilibration_steps",)),
    Case("snapshots-zero", "value", put("sampler.snapshots_per_replica", 0), ("sampler.snapshots_per_replica",)),
    Case("max-volume-ratio-one", "value", put("sampler.max_volume_ratio", 1.0), ("sampler.max_volume_ratio",)),
    Case("sigma-negative", "value", put("potential.sigma_A", -3.15), ("potential", "sigma_A")),
    Case("sigma-nan", "value", put("potential.sigma_A", float("nan")), ("potential", "sigma_A")),
    Case("epsilon-zero", "value", put("potential.epsilon_eV", 0.0), ("potential", "epsilon_eV")),
    Case("epsilon-inf", "value", put("potential.epsilon_eV", float("inf")), ("potential", "epsilon_eV")),
    Case("cutoff-nan", "value", put("potential.cutoff_A", float("nan")), ("potential", "cutoff_A")),
    Case("cutoff-inf", "value", put("potential.cutoff_A", float("inf")), ("potential", "cutoff_A")),
    Case("learning-rate-nan", "value", put("trainer.learning_rate", float("nan")), ("trainer.learning_rate",)),
    Case("learning-rate-inf", "value", put("trainer.learning_rate", float("inf")), ("trainer.learning_rate",)),
    Case("adam-beta-above-one", "value", put("trainer.adam_betas", [1.5, 0.9]), ("trainer.adam_betas",)),
    Case("resample-ratio-zero", "value", put("trainer.resample_ratio", 0.0), ("trainer.resample_ratio",)),
    Case("chunk-size-zero", "value", put("trainer.chunk_size", 0), ("trainer.chunk_size",)),
    Case("repeat-zero", "value", put("system.repeat", [0, 1, 1]), ("system.repeat",)),
    Case("target-weight-nan", "value", put("targets.0.weight", float("nan")), ("targets[0].weight",)),
    Case("target-weight-inf", "value", put("targets.0.weight", float("inf")), ("targets[0].weight",)),
    Case("sigma-floor-negative", "value", put("targets.0.sigma_floor", -0.01), ("targets[0].sigma_floor",)),
    Case("sigma-floor-nan", "value", put("targets.0.sigma_floor", float("nan")), ("targets[0].sigma_floor",)),
    Case("x-range-nan", "value", put("targets.0.x_range", [float("nan"), 8.0]), ("targets[0].x_range",)),
    Case("bin-width-zero", "value", put("targets.0.options", {"bin_width_A": 0.0}), (T0, "bin_width_A")),
    Case("smoothing-negative", "value", put("targets.0.options", {"smoothing_A": -0.1}), (T0, "smoothing_A")),
    Case("r-max-below-grid", "value", put("targets.0.options", {"r_max_A": 4.0}), (T0, "r_max_A")),
    Case("q-max-negative", "value", target("G", options={"q_max": -5.0}), (T0, "q_max")),
    Case("q-max-nan", "value", target("G", options={"q_max": float("nan")}), (T0, "q_max")),
    Case("q-min-above-q-max", "value", target("G", options={"q_min": 20.0, "q_max": 15.0}), (T0, "q_max")),
    Case("seed-a-float", "value", put("sampler.seed", 0.5), ("sampler.seed",)),
    # only sampling shows these: a short `difftre refine`
    Case("timestep-500-fs", "value", put("sampler.timestep_fs", 500.0), ("T181", "timestep_fs"), "",
         command="refine"),
    Case("epsilon-1000-eV", "value", put("potential.epsilon_eV", 1000.0), ("T181",), "", command="refine"),

    # --- odd but valid ---------------------------------------------------------------------------
    Case("base-shipped-csv", "odd", lambda job: None, expect=holds(R, G_OF_R)),
    Case("base-gr", "odd", target("gr"), expect=holds(R, G_OF_R)),
    Case("base-G-gr", "odd", target("G")),
    Case("base-sq", "odd", target("sq"), expect=holds(Q_PER_A, np.round(_structure_factor(Q_PER_A), 6))),
    Case("non-uniform-r-grid", "odd",
         target("csv", lambda t: t.rows.__setitem__(slice(None), [t.rows[k] for k in UNIFORM_THEN_SPARSE])),
         expect=holds(R[UNIFORM_THEN_SPARSE], G_OF_R[UNIFORM_THEN_SPARSE])),
    Case("extra-point-at-0.0501-A", "odd", target("csv", lambda t: t.rows.insert(1, ["0.0501", "0.000000", "0.001000"])),
         expect=holds(np.r_[R[:1], 0.0501, R[1:]], np.r_[G_OF_R[:1], 0.0, G_OF_R[1:]])),
    Case("gr-comments-and-blank-lines", "odd",
         target("gr", lambda t: [t.rows.insert(k, ["# a comment"]) or t.rows.insert(k, [""]) for k in (60, 30, 5)]),
         expect=holds(R, G_OF_R)),
    Case("gr-crlf", "odd", target("gr", newline="\r\n"), expect=holds(R, G_OF_R)),
    Case("csv-crlf", "odd", target("csv", newline="\r\n"), expect=holds(R, G_OF_R)),
    Case("csv-utf8-bom", "odd", target("csv", content="\ufeff" + table("csv").text().split("\n", 1)[1]),
         expect=holds(R, G_OF_R)),
    Case("gr-utf8-bom", "odd", target("gr", content="\ufeff" + table("gr").text()), expect=holds(R, G_OF_R)),
    Case("gr-four-columns", "odd", target("gr", lambda t: [row.insert(2, "0.005") for row in t.rows]),
         expect=holds(R, G_OF_R)),
    Case("gr-without-start-marker", "odd", target("gr", lambda t: t.head.remove("#### start data")),
         expect=holds(R, G_OF_R)),
    Case("gr-header-with-units", "odd", target("gr", head_line("qmax = 25.0 A^-1")), expect=holds(R, G_OF_R)),
    Case("gr-latin1-angstrom", "odd",
         target("gr", content=table("gr").text().replace(r"$\AA$", "Å").encode("latin-1")),
         expect=holds(R, G_OF_R)),
    Case("csv-semicolons-decimal-comma", "odd",
         target("csv", lambda t: setattr(t, "rows", [[f.replace(".", ",") for f in r] for r in t.rows])
                or setattr(t, "sep", ";")),
         expect=holds(R, G_OF_R)),
    Case("txt-tab-separated", "odd", target("csv", lambda t: setattr(t, "sep", "\t"), name="argon_rdf.txt"),
         expect=holds(R, G_OF_R)),
    Case("csv-trailing-blank-lines", "odd", target("csv", lambda t: t.rows.extend([[""], [""], ["  "]])),
         expect=holds(R, G_OF_R)),
    Case("config-utf8-bom", "odd",
         lambda job: setattr(job, "config_text", ("\ufeff" + (SHIPPED / CONFIG).read_text()).encode("utf-8"))),
    Case("config-crlf", "odd",
         lambda job: setattr(job, "config_text", (SHIPPED / CONFIG).read_text().replace("\n", "\r\n").encode())),
    Case("structure-crlf", "odd",
         structure(content=(SHIPPED / STRUCTURE).read_text().replace("\n", "\r\n").encode())),
]

BROKEN = [c for c in CASES if c.cls != "odd"]
ODD = [c for c in CASES if c.cls == "odd"]
CASE_CLASSES: dict[str, str] = {c.id: c.cls for c in CASES}
"""The module-level table: case id → class (config, experiment, structure, model, value, odd)."""


# ----------------------------------------------------------------------------- running


@dataclass
class Run:
    code: int | None
    out: str
    err: str
    exception: str | None = None  # type and message of an exception that escaped main
    written: list[str] = field(default_factory=list)  # refined model files in the output folder


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _python_default_filters() -> None:
    """The warning filters of a plain ``python`` (pytest's own would hide or add lines)."""
    warnings.resetwarnings()
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def run(capsys, case: Case, job: Job) -> Run:
    """``difftre <command> CONFIG ...`` in-process; warnings go to stderr as they would in a shell."""
    path = job.write()
    out_dir = job.folder / "out"
    argv = [case.command, str(path), *job.args]
    if case.command == "refine":
        argv += ["--out", str(out_dir), *QUICK_REFINE]
    capsys.readouterr()
    exception = None
    with warnings.catch_warnings():
        _python_default_filters()
        warnings.showwarning = _show_warning
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 — what reaches the user unhandled is the finding
            code = None
            exception = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    captured = capsys.readouterr()
    written = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("refined_potential*")) \
        if out_dir.exists() else []
    return Run(code, captured.out, captured.err, exception, written)


def classify(result: Run, case: Case, config_path: Path) -> tuple[str, str]:
    """(outcome, what was seen): clear, partial, raw or silent (see the module docstring)."""
    err_lines = [line for line in result.err.strip().splitlines() if line.strip()]
    if result.exception is not None:
        return "raw", f"exception escaped main: {' '.join(result.exception.split())[:400]}"
    if "Traceback" in result.err:
        return "raw", f"traceback on stderr, ending {err_lines[-1][:400]!r}"
    if result.code == 0:
        return "silent", "exit 0" + (f", wrote {result.written}" if result.written else "")
    if not err_lines:
        return "partial", f"exit {result.code}, nothing on stderr"
    line = err_lines[-1]
    if LEAK.search(line):
        return "raw", f"exception type in the message: {line[:500]!r}"
    problems = []
    if len(err_lines) != 1:
        problems.append(f"{len(err_lines)} lines on stderr, first {err_lines[0][:200]!r}")
    if case.command == "check" and result.code != 2:
        problems.append(f"exit {result.code}, not 2")
    prefix = f"difftre {case.command}: error: " if case.command == "check" else f"difftre {case.command}: "
    if not line.startswith(prefix):
        problems.append(f"no {prefix!r} prefix")
    file = str(config_path) if case.file is None else case.file
    plain = ENTRY_NAME.sub(r"\1", line)
    missing = [f for f in (file, *case.names) if f not in plain]
    if missing:
        problems.append(f"misses {missing}")
    if result.written:
        problems.append(f"wrote {result.written}")
    if problems:
        return "partial", f"{line[:500]!r}: " + "; ".join(problems)
    return "clear", line


# ----------------------------------------------------------------------------- the tests


def test_case_table():
    """At least 60 cases, each classified, ids unique, every class used."""
    assert len(CASES) >= 60
    assert len(CASE_CLASSES) == len(CASES), "case ids must be unique"
    assert set(CASE_CLASSES.values()) == set(CLASSES)
    assert sum(c.command == "refine" for c in CASES) <= 3  # the slow kind stays rare


@pytest.mark.parametrize("case", BROKEN, ids=[c.id for c in BROKEN])
def test_broken_input_is_one_clear_line(case: Case, tmp_path, capsys):
    job = Job(tmp_path)
    case.mutate(job)
    result = run(capsys, case, job)
    outcome, seen = classify(result, case, job.path)
    assert outcome == "clear", f"[{outcome}] {seen}"


@pytest.mark.parametrize("case", ODD, ids=[c.id for c in ODD])
def test_odd_but_valid_input_passes(case: Case, tmp_path, capsys):
    job = Job(tmp_path)
    case.mutate(job)
    result = run(capsys, case, job)
    seen = result.exception or " | ".join(result.err.strip().splitlines()[-2:])
    assert result.exception is None and result.code == 0, f"[rejected] exit {result.code}: {seen[:600]}"
    assert f"{job.path} is valid" in result.out
    if case.expect is not None:
        try:
            case.expect(job)
        except AssertionError as exc:
            raise AssertionError(f"[wrong] the target built differs from the file: {' '.join(str(exc).split())}") \
                from None
