"""A refined model as the files LAMMPS needs, with the input snippet ``in.refined`` that loads it.

What is written to OUT_DIR (LAMMPS ``units metal``, ``atom_style atomic``; LAMMPS atom type k is
species k of ``species``, the order of ``pair_coeff * *`` and of ``structure.data``):

* the base model in its family's LAMMPS style:
  - NequIP: ``base.ckpt`` (the refined or frozen weights) compiled by ``nequip-compile --mode
    aotinductor --target pair_nequip`` to ``base.nequip.pt2`` for ``pair_style nequip`` (the
    pair_nequip plugin: ``newton off``, one MPI rank); an AOTInductor file runs on the device it
    was compiled for, so ``compile.sh`` holds the command to compile it again on the machine that
    runs LAMMPS (``--device cuda``);
  - DeePMD-kit: ``base.pth`` (and ``base.ckpt.pt``) for ``pair_style deepmd``;
* a pair correction ΔU as ``correction.table``: one ``pair_style table linear N`` section per
  species pair (:mod:`difftre_torch.export.tables`; the interpolation error is stated in the
  snippet and in ``export.json``), added to the base by ``pair_style hybrid/overlay``. Its
  per-atom constants (eV per atom of each species) move no force and are not in LAMMPS's
  energy; they are listed so that energies can be compared with difftre_torch's;
* ``structure.data`` (the job's structure, when given) and ``in.nvt``, a short run that
  includes the snippet; ``export.json`` records all of it.

A model with a refined base and no correction (``refine.parameters: model``) is the base alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from ase import Atoms

from difftre_torch.checkpoint import atomic_write_json
from difftre_torch.export import tables as tab

TABLE_FILE = "correction.table"
SNIPPET = "in.refined"
# pair_nequip needs newton pair off; newton bond stays on (it cannot change after read_data)
NEWTON_PAIR_OFF = "newton off on"
NEQUIP_LIMIT = ("pair_style nequip comes with the pair_nequip_allegro plugin (LAMMPS 10 Sep 2025 or newer); "
                "it needs `newton off` and refuses more than one MPI rank")


class ExportError(ValueError):
    """A model that cannot be written for LAMMPS as asked; the message says why and what to do."""


@dataclass
class LammpsExportOptions:
    """How the model is written. table_points: N of the tables (None: the smallest N, doubling
    from 1000, whose per-pair force error is at most ``force_tolerance_eV_per_A``). inner_A: the
    tables' inner radius r_in (Å; LAMMPS stops on a closer pair). compile: run nequip-compile
    (False: only ``compile.sh``). compile_device: nequip-compile's ``--device``. fold: a NequIP
    base and the correction as one model (:func:`difftre_torch.export.nequip.fold_correction`:
    one ``refined.nequip.pt2`` for ``pair_style nequip``, the per-atom constants included, at the
    cost of the base's neighbour list to the correction's cut-off) instead of tables."""

    table_points: int | None = None
    inner_A: float = 0.5
    force_tolerance_eV_per_A: float = 1e-6
    compile: bool = True
    compile_device: str = "cpu"
    fold: bool = False

    def __post_init__(self) -> None:
        if self.table_points is not None and self.table_points < 2:
            raise ExportError(f"table_points: expected at least 2, got {self.table_points}")
        if self.inner_A <= 0:
            raise ExportError(f"inner_A: expected > 0 Å, got {self.inner_A}")
        if self.force_tolerance_eV_per_A <= 0:
            raise ExportError(f"force_tolerance_eV_per_A: expected > 0, got {self.force_tolerance_eV_per_A}")


@dataclass
class BaseStyle:
    """The base model's LAMMPS pair style: ``style`` (pair_style word), ``style_args`` (after
    the word in ``pair_style``), ``coeff_args`` (after ``* *`` and, under hybrid, the style name
    in ``pair_coeff``), the files written, the lines the style needs before it (``newton off on``),
    its limits in words and the compile command (NequIP)."""

    style: str
    style_args: list[str]
    coeff_args: list[str]
    files: list[str]
    setup: list[str]
    limits: list[str]
    compile_command: list[str] | None = None


def model_type_names(base: torch.nn.Module, species: list[str]) -> list[str]:
    """The base model's type name for each species (LAMMPS type order), as pair_coeff wants them."""
    from ase.data import atomic_numbers

    names = getattr(base, "type_names", None) or getattr(base, "type_map", None)
    table = getattr(base, "type_of_number", None)
    if names is None or table is None:
        return list(species)
    out = []
    for s in species:
        index = int(table[atomic_numbers[s]])
        if index < 0:
            raise ExportError(f"the base model has no type for {s} (its types: {list(names)})")
        out.append(names[index])
    return out


def write_base(base: torch.nn.Module, out: Path, species: list[str], options: LammpsExportOptions,
               log: Callable[[str], None]) -> BaseStyle:
    """The base model's files in ``out`` and its :class:`BaseStyle`."""
    from difftre_torch.potentials.io import save_potential

    types = model_type_names(base, species)
    if hasattr(base, "write_back") and hasattr(base, "type_map"):  # DeePMD-kit
        written = save_potential(base, out / "base")
        files = [written.name] + [p.name for p in out.glob("base.ckpt.pt")]
        return BaseStyle("deepmd", [written.name], types, files, [], [
            "pair_style deepmd comes with DeePMD-kit's LAMMPS plugin (`plugin load libdeepmd_lmp.so`) or a "
            "LAMMPS built with it; it runs on several MPI ranks"])
    source = getattr(base, "source", None)
    if source is None or getattr(source, "format", None) is None:
        raise ExportError(f"no LAMMPS pair style for a base of type {type(base).__name__}: LAMMPS export "
                          "knows NequIP and DeePMD-kit models")
    if source.format == "aotinductor":
        raise ExportError(f"the base is an AOTInductor file ({source.path}); export from its checkpoint or "
                          "package so that nequip-compile can target pair_nequip")
    limits = [NEQUIP_LIMIT]
    written = save_potential(base, out / "base")
    if source.format == "torchscript":  # already what pair_nequip's TorchScript path loads
        return BaseStyle("nequip", [], [written.name, *types], [written.name], [NEWTON_PAIR_OFF], limits)
    from difftre_torch.export.nequip import compile_for_lammps
    from difftre_torch.potentials.compiled import compile_command

    compiled = out / "base.nequip.pt2"
    command = compile_command(written.name, compiled.name, device=options.compile_device, target="pair_nequip")
    files = [written.name]
    if options.compile:
        log(f"compiling the NequIP base for pair_nequip ({options.compile_device}) ...")
        compile_for_lammps(written, compiled, options.compile_device)
        files.append(compiled.name)
    return BaseStyle("nequip", [], [compiled.name, *types], files, [NEWTON_PAIR_OFF], limits, command)


def pair_lines(base: BaseStyle, table: tuple[list[tab.PairTable], int] | None, species: list[str]) -> list[str]:
    """The ``pair_style`` and ``pair_coeff`` lines: the base alone, or the base and the tables
    under ``hybrid/overlay``."""
    if table is None:
        return [" ".join(["pair_style", base.style, *base.style_args]),
                " ".join(["pair_coeff", "*", "*", *base.coeff_args])]
    tables, n = table
    lines = [" ".join(["pair_style", "hybrid/overlay", base.style, *base.style_args, "table", "linear", str(n)]),
             " ".join(["pair_coeff", "*", "*", base.style, *base.coeff_args])]
    from ase.data import chemical_symbols

    index = {s: k + 1 for k, s in enumerate(species)}
    for t in tables:
        a, b = sorted((index[chemical_symbols[t.species[0]]], index[chemical_symbols[t.species[1]]]))
        lines.append(f"pair_coeff {a} {b} table {TABLE_FILE} {t.keyword}")
    return lines


def export_lammps(potential: torch.nn.Module, out_dir: str | Path, species: list[str], *,
                  options: LammpsExportOptions | None = None, structure: Atoms | None = None,
                  source: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Write ``potential`` (a base model, or a :class:`CorrectedPotential`) for LAMMPS into
    ``out_dir``; species: element symbols in LAMMPS type order. Returns the ``export.json``
    record (files, pair lines, table errors, per-atom constants); ``source`` names the model file
    in it."""
    from ase.data import atomic_numbers

    from difftre_torch.potentials.correction import CorrectedPotential

    options = options or LammpsExportOptions()
    unknown = [s for s in species if s not in atomic_numbers]
    if not species or unknown:
        raise ExportError(f"species: expected element symbols in LAMMPS type order, got {species}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    correction = potential.correction if isinstance(potential, CorrectedPotential) else None
    base = potential.base if correction is not None else potential
    record: dict = {"model": source, "species": list(species), "units": "metal", "atom_style": "atomic"}
    if options.fold:
        if correction is None or not hasattr(base, "type_names"):
            raise ExportError("fold: only a NequIP base with a pair correction can be folded into one model")
        style = write_folded(potential, out, species, options, log)
        return finish(record, style, pair_lines(style, None, species), out, structure, species)
    table = None
    if correction is not None:
        missing = [s for s in species if atomic_numbers[s] not in correction.spec.species]
        if missing:
            raise ExportError(f"the correction knows species {correction.spec.species} (atomic numbers), "
                              f"not {missing}")
        n = options.table_points or tab.points_for_force_error(correction, options.inner_A,
                                                               options.force_tolerance_eV_per_A)
        tables = tab.tabulate(correction, n, options.inner_A)
        tab.check_finite(tables)
        errors = tab.table_errors(correction, tables)
        constants = tab.per_atom_constants(correction)
        tab.write_table_file(tables, out / TABLE_FILE, "\n".join([
            "difftre_torch pair correction: e(r) eV, f(r) = -de/dr eV/A, N points equally spaced in r^2",
            f"use: pair_style table linear {n} (same N, so LAMMPS takes these values without a re-spline)",
            f"max per-pair error of that interpolation: energy {errors.energy_eV:.2e} eV, "
            f"force {errors.force_eV_per_A:.2e} eV/A"]))
        table = (tables, n)
        record["correction"] = {"file": TABLE_FILE, "points": n, "inner_A": options.inner_A,
                                "cutoff_A": correction.cutoff_A, "sections": [t.keyword for t in tables],
                                "errors": errors.to_json(), "per_atom_constants_eV": constants,
                                "spec": asdict(correction.spec)}
        log(f"correction: {len(tables)} tables of {n} points, per-pair error ≤ {errors.energy_eV:.1e} eV, "
            f"{errors.force_eV_per_A:.1e} eV/Å")
    style = write_base(base, out, species, options, log)
    return finish(record, style, pair_lines(style, table, species), out, structure, species)


def write_folded(potential, out: Path, species: list[str], options: LammpsExportOptions,
                 log: Callable[[str], None]) -> BaseStyle:
    """Base and correction folded into ``refined.ckpt`` (and compiled to ``refined.nequip.pt2``)."""
    from difftre_torch.export.nequip import compile_for_lammps, fold_correction
    from difftre_torch.potentials.compiled import compile_command
    from difftre_torch.potentials.io import save_potential

    if potential.base.source is None or potential.base.source.format not in ("checkpoint", "package"):
        raise ExportError("fold: the NequIP base must come from a checkpoint or package")
    record = save_potential(potential, out / "refined")
    folded = fold_correction(out / "refined.base.ckpt", record, out / "refined.ckpt")
    compiled = out / "refined.nequip.pt2"
    files = [folded.name]
    if options.compile:
        log(f"compiling the folded model for pair_nequip ({options.compile_device}) ...")
        compile_for_lammps(folded, compiled, options.compile_device)
        files.append(compiled.name)
    return BaseStyle("nequip", [], [compiled.name, *model_type_names(potential.base, species)], files, [NEWTON_PAIR_OFF],
                     [NEQUIP_LIMIT,
                      f"folded: base and pair correction in one model; its neighbour list reaches "
                      f"{potential.correction.cutoff_A} A (the correction's cut-off), the per-atom constants included"],
                     compile_command(folded.name, compiled.name, device=options.compile_device, target="pair_nequip"))


def finish(record: dict, style: BaseStyle, lines: list[str], out: Path, structure: Atoms | None,
           species: list[str]) -> dict:
    """Write compile.sh, in.refined, structure.data, in.nvt and export.json; returns the record."""
    record["base"] = asdict(style)
    record["pair_lines"] = lines
    if style.compile_command:
        script = out / "compile.sh"
        script.write_text("#!/bin/sh\n# compile the NequIP model on the machine that runs LAMMPS "
                          "(--device cuda for a GPU)\ncd \"$(dirname \"$0\")\" || exit 1\n"
                          + " ".join(style.compile_command) + "\n")
        script.chmod(0o755)
    (out / SNIPPET).write_text(snippet(record, style, lines))
    if structure is not None:
        write_structure(structure, out / "structure.data", species)
        (out / "in.nvt").write_text(example_deck(species))
        record["structure"] = "structure.data"
    atomic_write_json(out / "export.json", record)
    return record


def snippet(record: dict, style: BaseStyle, lines: list[str]) -> str:
    """``in.refined``: comments that say what is loaded and its limits, then the commands."""
    species = record["species"]
    head = ["# The refined model for LAMMPS (units metal, atom_style atomic), written by difftre_torch.",
            "# Include it after read_data:  include in.refined",
            "# LAMMPS atom types: " + ", ".join(f"{k + 1} = {s}" for k, s in enumerate(species)),
            f"# base: pair_style {style.style}"]
    head += [f"#   {limit}" for limit in style.limits]
    if style.compile_command and not any(f.endswith(".pt2") for f in style.files):
        head += ["#   not compiled yet: run compile.sh on the machine that runs LAMMPS"]
    if "correction" in record:
        c = record["correction"]
        e = c["errors"]
        head += [f"# correction: {c['file']}, pair_style table linear {c['points']} from r = {c['inner_A']} A "
                 f"to {c['cutoff_A']} A (a closer pair stops LAMMPS)",
                 f"#   interpolation error per pair <= {e['max_pair_energy_error_eV']:.2e} eV, "
                 f"{e['max_pair_force_error_eV_per_A']:.2e} eV/A",
                 "#   per-atom constants of the correction, not in LAMMPS's energy (they move no force): "
                 + ", ".join(f"{s} {v:+.6f} eV" for s, v in c["per_atom_constants_eV"].items())]
    return "\n".join(head + ["", *style.setup, *lines, ""])


def write_structure(atoms: Atoms, path: Path, species: list[str]) -> Path:
    """``atoms`` as a LAMMPS data file (atom_style atomic, metal units, masses; ASE turns the
    cell into LAMMPS's orientation), types in ``species`` order."""
    from ase.io import write

    write(path, atoms, format="lammps-data", specorder=list(species), masses=True, units="metal",
          atom_style="atomic")
    return path


def example_deck(species: list[str]) -> str:
    """``in.nvt``: 300 K Langevin NVT of structure.data with the refined model, a dump that
    ``difftre compare --frames dump.lammpstrj --types ...`` reads."""
    return "\n".join([
        "# NVT at 300 K with the refined model: lmp -in in.nvt",
        "units metal", "atom_style atomic", "boundary p p p",
        "read_data structure.data",
        "include in.refined",
        "timestep 0.001",
        "velocity all create 300.0 4928459 mom yes rot yes dist gaussian",
        "fix md all nve", "fix heat all langevin 300.0 300.0 0.1 48279 zero yes",
        "thermo 100", "thermo_style custom step temp pe press",
        "dump traj all custom 100 dump.lammpstrj id type x y z",
        "run 10000",
        f"# compare: difftre compare CONFIG --frames dump.lammpstrj --types {' '.join(species)}", ""])


