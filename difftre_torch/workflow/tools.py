"""``difftre compare`` and ``difftre evaluate``: one objective at a time, for any model file.

* :func:`compare`: a model's ensemble against the experiment (objective 1), sampled at the
  config's ``compare`` state points, or computed from frames the user already has (any file
  ase.io reads; each file one replica, frames in time order, so block errors follow the time
  order): R_w, χ²/bin, scalar targets, an overlay figure and ``compare.json``.
* :func:`evaluate`: models against the config's labelled frame sets (errors with bootstrap 95 %
  intervals), with the paired difference of every further model against the first on the same
  frames; ``evaluate.json``.
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


def frames_as_samples(job: JobConfig, files: list[str], point_name: str, numbers: np.ndarray):
    """:class:`~difftre_torch.sampling.sampler.RawSamples` of the frames in ``files`` (replica k = file k)."""
    from difftre_torch.sampling.base import RawSamples
    from difftre_torch.frames import read_frames_file

    positions, cells, replica = [], [], []
    for k, name in enumerate(files):
        path = Path(name)
        if not path.exists():
            raise ConfigError(f"--frames: {path} does not exist")
        try:
            frames = read_frames_file(path)
        except Exception as exc:
            raise ConfigError(f"--frames: {path} could not be read by ase.io ({exc})") from None
        for j, atoms in enumerate(frames):
            if len(atoms) != len(numbers) or not np.array_equal(atoms.numbers, numbers):
                raise ConfigError(f"--frames: {path} frame {j}: its atoms ({atoms.get_chemical_formula()}, "
                                  f"{len(atoms)}) are not the config's system ({len(numbers)} atoms in the same order)")
            positions.append(atoms.positions)
            cells.append(atoms.cell.array)
            replica.append(k)
    point = job.point(point_name).state_point()
    return RawSamples(point, torch.as_tensor(np.array(positions)), torch.as_tensor(np.array(cells)),
                      torch.as_tensor(replica), {"source": [str(f) for f in files]})


def compare(job: JobConfig, out: Path, model: str | None = None, frames: list[str] | None = None,
            state_point: str | None = None) -> dict:
    """Compare a model (or frames) with the experiment; writes ``out/compare.json`` and
    ``out/functions.png``; returns {"comparison", "table"}."""
    from difftre_torch.compare import compare_samples
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
        samples = frames_as_samples(job, frames, name, atoms.numbers)
        comparison = {name: compare_samples(samples, torch.as_tensor(atoms.numbers), mine,
                                            n_blocks=job.compare.n_blocks).to_json()}
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
