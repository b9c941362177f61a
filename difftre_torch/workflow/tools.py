"""``difftre compare``, ``difftre evaluate`` and ``difftre export``: one objective at a time,
for any model file, and the refined model out to an MD engine.

* :func:`compare`: a model's ensemble against the experiment (objective 1), sampled at the
  config's ``compare`` state points, or computed from frames the user already has (LAMMPS
  dumps and data files, any file ase.io reads: :mod:`difftre_torch.trajectories`, streamed;
  each file one replica, frames in time order, so block errors follow the time order): R_w,
  χ²/bin, scalar targets, an overlay figure and ``compare.json``.
* :func:`evaluate`: models against the config's labelled frame sets (errors with bootstrap 95 %
  intervals), with the paired difference of every further model against the first on the same
  frames; ``evaluate.json``.
* :func:`export_model`: the refined model (a finished run's main one, or a file) for LAMMPS
  (:mod:`difftre_torch.export.lammps`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difftre_torch.checkpoint import atomic_write_json
from difftre_torch.config import ConfigError, JobConfig
from difftre_torch.workflow.build import (
    build_base_potential,
    build_system,
    build_targets,
    comparable,
    compare_entries,
    read_frames,
)


def _model(job: JobConfig, path: str | None):
    if path is None:
        return build_base_potential(job)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--model: {p} does not exist")
    return build_base_potential(job, p)


def trajectory_chunks(files: list[str], *, type_map: dict[int, int] | None = None, skip: int = 0, every: int = 1,
                      chunk: int = 32, progress: bool = True):
    """The frames of ``files`` (file k = replica k, its frames in time order) for
    :func:`difftre_torch.compare.compare_stream`: returns (frames per file, atomic numbers [N],
    an iterator of (k, positions [C, N, 3] Å, cells [C, 3, 3] Å rows)), memory one chunk of
    frames. Every frame must hold the first frame's atoms in the same order (a TrajectoryError
    names file, frame and field otherwise)."""
    from difftre_torch.trajectories import TrajectoryError, count_frames, iter_frames

    paths = [Path(f) for f in files]
    for path in paths:
        if not path.exists():
            raise ConfigError(f"--frames: {path} does not exist")
    counts = [len(range(skip, count_frames(p), every)) for p in paths]
    for path, n in zip(paths, counts):
        if n < 1:
            raise ConfigError(f"--frames: {path} has no frames left after --skip {skip} --every {every}")
    first = next(iter_frames(paths[0], type_map=type_map, skip=skip, every=every))
    reference = first.numbers

    def chunks():
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(counts), desc="frames", unit="frame", disable=None if progress else True)
        for k, path in enumerate(paths):
            positions, cells = [], []
            for frame in iter_frames(path, type_map=type_map, skip=skip, every=every):
                if len(frame.numbers) != len(reference) or not np.array_equal(frame.numbers, reference):
                    raise TrajectoryError(f"{path}: frame {frame.index}" + (
                        f" (timestep {frame.timestep})" if frame.timestep is not None else "")
                        + f": field atoms: {len(frame.numbers)} atoms, not the {len(reference)} atoms of "
                        f"{paths[0]} frame {first.index} in the same order")
                positions.append(frame.positions)
                cells.append(frame.cell)
                if len(positions) == chunk:
                    yield k, torch.as_tensor(np.array(positions)), torch.as_tensor(np.array(cells))
                    bar.update(len(positions))
                    positions, cells = [], []
            if positions:
                yield k, torch.as_tensor(np.array(positions)), torch.as_tensor(np.array(cells))
                bar.update(len(positions))
        bar.close()

    return counts, reference, chunks()


def compare(job: JobConfig, out: Path, model: str | None = None, frames: list[str] | None = None,
            state_point: str | None = None, types: list[str] | None = None, data_file: str | None = None,
            skip: int = 0, every: int = 1, log=print) -> dict:
    """Compare a model (or frames) with the experiment; writes ``out/compare.json`` and
    ``out/functions.png``; returns {"comparison", "table"}. Frames: any file
    :mod:`difftre_torch.trajectories` reads (LAMMPS dumps and data files, ase.io formats), LAMMPS
    types named by ``types`` (element symbols in type order) or ``data_file``'s Masses; the
    first ``skip`` frames of each file dropped, then every ``every``-th kept."""
    from ase.data import chemical_symbols

    from difftre_torch.compare import compare_stream
    from difftre_torch.trajectories import parse_type_map
    from difftre_torch.workflow.report import figure_functions
    from difftre_torch.workflow.steps import compare_model

    atoms = build_system(job)
    fit = build_targets(job, job.targets)
    targets = build_targets(job, compare_entries(job))
    if frames:
        name = state_point or next((p.name for p in job.state_points if p.compare), job.state_points[0].name)
        try:
            point = job.point(name)
        except KeyError:
            raise ConfigError(f"--state-point: {name!r} is not a state point of {job.source}") from None
        mine = comparable(targets, point)
        type_map = parse_type_map(types, data_file)
        counts, numbers, chunks = trajectory_chunks(frames, type_map=type_map, skip=skip, every=every)
        expected = sorted(set(atoms.get_chemical_symbols()))
        found = sorted({chemical_symbols[z] for z in numbers})
        if found != expected:
            raise ConfigError(f"--frames: {frames[0]} frame {skip}: field atoms: elements {found}, not the config's "
                              f"{expected} (check --types, or the data file's Masses)")
        if len(numbers) != len(atoms):
            log(f"note: the frames hold {len(numbers)} atoms, the config's structure {len(atoms)}: targets whose "
                "options describe the cell (repeats, layers_per_cell) are taken as the config states them")
        comparison = {name: compare_stream(chunks, counts, torch.as_tensor(numbers), mine, name,
                                           n_blocks=job.compare.n_blocks,
                                           stats={"source": [str(f) for f in frames], "frames_per_file": counts,
                                                  "skip": skip, "every": every}).to_json()}
    else:
        comparison = compare_model(job, _model(job, model), atoms, targets, fit)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", comparison)
    figure_functions({"model": comparison}, out / "functions.png")
    rows = ["| target | state point | R_w | χ²/bin | model | experiment |", "|---|---|---:|---:|---:|---:|"]
    for point in [p for p in comparison if p != "blow_ups"]:
        for name, t in comparison[point]["targets"].items():
            value = "" if t["x"] is not None else f"{np.mean(t['model']):.4g}"
            exp = "" if t["x"] is not None else f"{np.mean(t['experiment']):.4g}"
            rows.append(f"| {name} | {point} | {t['r_w']:.3f} | {t['chi2_per_bin']:.3g} | {value} | {exp} |")
    return {"comparison": comparison, "table": "\n".join(rows)}


def evaluate(job: JobConfig, out: Path, models: list[str] | None = None) -> dict:
    """Every model against the frame sets; writes ``out/evaluate.json``; returns {"results", "table"}."""
    from difftre_torch.workflow.checks import paired
    from difftre_torch.workflow.steps import evaluate_model

    if not job.evaluation.sets:
        raise ConfigError(f"{job.source}: evaluation.sets: give at least one labelled frame set to evaluate on")
    sets = {s.name: read_frames(job, s.file, f"evaluation.sets ({s.name}).file") for s in job.evaluation.sets}
    names = models or [None]
    results = {}
    for path in names:
        key = "config potential" if path is None else str(path)
        results[key] = evaluate_model(job, _model(job, path), sets, None)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "evaluate.json", results)
    rows = ["| model | set | reference | F RMSE (meV/Å) | E RMSE − offset (meV/atom) | paired ΔF vs first |",
            "|---|---|---|---:|---:|---:|"]
    first = next(iter(results.values()))
    for key, r in results.items():
        for set_name, s in r["sets"].items():
            for ref in [k[3:] for k in s if k.startswith("vs_")]:
                f, e = s[f"vs_{ref}"]["forces_rmse_meV_per_A"], s[f"vs_{ref}"]["energy_rmse_debiased_meV_per_atom"]
                p = None if r is first else paired(first["sets"][set_name], s, ref, "forces_rmse_meV_per_A")
                rows.append(f"| {key} | {set_name} | {ref} | {f['value']:.1f} [{f['ci'][0]:.1f}, {f['ci'][1]:.1f}] | "
                            f"{e['value']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}] | "
                            + ("" if p is None else f"{p['value']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}]") + " |")
    return {"results": results, "table": "\n".join(rows)}


def main_refined_model(job: JobConfig, results: dict | None = None, run_folder: Path | None = None) -> Path:
    """The refined model of the main λ that ``difftre refine`` wrote for ``job`` (from the output
    folder's ``steps/results.json``; ``results``: that file already read; ``run_folder``: where
    the run lies now, if it was moved or is read from another working directory)."""
    folder = run_folder or job.out_dir
    path = folder / "steps" / "results.json"
    if results is None:
        if not path.exists():
            raise ConfigError(f"{job.source}: no refined model: {path} does not exist (run `difftre refine` "
                              "first, or give --model FILE)")
        import json

        results = json.loads(path.read_text())
    model = (results.get("refine") or {}).get("refined", {}).get("model")
    if not model:
        raise ConfigError(f"{path}: the refinement has not finished (no refine.refined.model); give --model FILE")
    model = Path(model)
    if not model.exists():  # recorded relative to the working directory of the run: refine/lambda_<λ>/<file>
        model = folder.joinpath(*model.parts[-3:])
    return model


def export_model(job: JobConfig, out: Path, engine: str = "lammps", model: str | None = None,
                 types: list[str] | None = None, options=None, results: dict | None = None,
                 run_folder: Path | None = None, log=print) -> dict:
    """Write the refined model (``model``, default :func:`main_refined_model`) for ``engine``
    into ``out``: see :mod:`difftre_torch.export.lammps`. types: element symbols in LAMMPS type
    order (default: the structure's elements by atomic number)."""
    from ase.data import atomic_numbers, chemical_symbols

    from difftre_torch.export.lammps import ExportError, export_lammps

    if engine != "lammps":
        raise ConfigError(f"export: unknown engine {engine!r} (known: lammps)")
    path = Path(model) if model else main_refined_model(job, results, run_folder)
    potential = _model(job, str(path))
    atoms = build_system(job)
    present = sorted(set(int(z) for z in atoms.numbers))
    if types:
        unknown = [t for t in types if t not in atomic_numbers]
        missing = [chemical_symbols[z] for z in present if chemical_symbols[z] not in types]
        if unknown or missing or len(set(types)) != len(types):
            raise ConfigError(f"--types: expected distinct element symbols covering the structure's "
                              f"{[chemical_symbols[z] for z in present]}, got {types}")
    species = list(types) if types else [chemical_symbols[z] for z in present]
    log(f"exporting {path} for LAMMPS (types: " + ", ".join(f"{k + 1} = {s}" for k, s in enumerate(species)) + ")")
    try:
        return export_lammps(potential, out, species, options=options, structure=atoms, source=str(path), log=log)
    except ExportError as exc:
        raise ConfigError(f"export {path}: {exc}") from None
