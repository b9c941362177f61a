"""Provenance of the stand-in world's shipped data: what made each file, and the re-measured numbers.

``python -m recipes.world.provenance [--runs runs/world] [--data data/world]``

Writes ``<data>/PROVENANCE.md`` and ``<data>/provenance.json`` (both excluded from their own
listing). For every other file under ``<data>``: its path, size (bytes) and sha256, and the
command, seeds and wall time of the producer that made it, read from the record each producer
writes beside its output:

* ``structures/relax.json``  — :mod:`recipes.world.relax` (``structures/*``);
* ``binding_curve.json``     — :mod:`recipes.world.binding`;
* ``heldout/heldout.json``   — :mod:`recipes.world.heldout` (``heldout/*``; MD seeds and wall
  times of the source jobs included);
* ``dataset/dataset.json``   — :mod:`recipes.world.dataset` (``dataset/*``; the MD jobs' seeds and
  wall times from ``<runs>/<job>/done.json`` when the runs are here);
* ``experiment/experiment_summary.json`` — :mod:`recipes.world.experiment` (``experiment/*``);
* ``base_model/metrics.json`` — :mod:`recipes.world.train_base` ``--publish`` (``base_model/*``;
  the seed from its nequip config); ``base_model_converged/metrics.json`` the same for the model
  trained on from it (its command as train_base recorded it);
* ``experiment_states/states.json`` — :mod:`recipes.world.state_points` (``experiment_states/*``;
  the MD seeds and wall times of the ``states`` campaign's replicas).

A file no record claims is listed with command ``NO RECORD`` (tests/test_world_shipped.py then
fails). A producer whose record is absent is listed as ``pending: <what produces it>``.

The section "Measured for this project, re-measured" sets the numbers first quoted for this world beside
the values these records (and the held-out files) give now; a value whose source does not exist
yet is written as ``pending: <what produces it>``, never estimated. Package versions and the
machine are those of the process that writes the provenance (the producers ran on it unless
their records say otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from difftre_torch.environment import machine, package_versions

OUTPUTS = ("PROVENANCE.md", "provenance.json")
PACKAGES = ("torch", "nequip", "chgnet", "dftd3", "deepmd-kit", "dpdata", "ase", "numpy")
NO_RECORD = "NO RECORD"


@dataclass
class Source:
    """One producer's record: the files it claims (paths relative to the data dir, POSIX), how
    they were made, and the re-measured numbers it holds. ``pending`` says what would produce
    it when its record is absent (then ``files`` is empty)."""

    name: str
    record: str
    command: str = ""
    seeds: str = ""
    wall_s: float | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pending: str | None = None
    per_job_seeds: dict = field(default_factory=dict)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_files(data: Path) -> list[str]:
    """Every file under ``data`` except the provenance outputs, relative POSIX paths, sorted."""
    return sorted(p.relative_to(data).as_posix() for p in data.rglob("*")
                  if p.is_file() and p.relative_to(data).as_posix() not in OUTPUTS)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _under(files: list[str], folder: str) -> list[str]:
    return [f for f in files if f.startswith(folder + "/")]


def _done(runs: Path | None, job: str) -> dict | None:
    return _load(runs / job / "done.json") if runs is not None else None


def _md_seeds(runs: list[Path | None], jobs: list[str]) -> tuple[str, float | None, dict]:
    """Seeds of ``jobs`` from their done.json (first of ``runs`` that has it): a short text (each
    job's seed for up to 6 jobs, else the range), the summed MD wall time (s) and {job: seed}."""
    found = {}
    for job in jobs:
        found[job] = next((d for r in runs if r is not None and (d := _done(r, job))), None)
    per_job = {j: d["job"]["seed"] for j, d in found.items() if d}
    if len(per_job) <= 6:
        text = "; ".join(f"{j}: {seed}" for j, seed in per_job.items())
    else:
        text = f"{len(per_job)} jobs, seeds {min(per_job.values())}-{max(per_job.values())}"
    missing = len(jobs) - len(per_job)
    if missing:
        text += f"{'; ' if text else ''}{missing} job(s) without done.json here"
    walls = [d.get("wall_s") for d in found.values() if d and d.get("wall_s") is not None]
    return text, (float(sum(walls)) if walls else None), per_job


# --------------------------------------------------------------------------- the producers


def relax_source(data: Path, files: list[str], runs: Path | None) -> Source:
    src = Source("structures", "structures/relax.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = "python -m recipes.world.relax (relaxed 28-atom units)"
        return src
    starts = sorted({r["start_spacing_A"] for runs_ in rec["runs"].values() for r in runs_})
    src.command = f"{rec['command']} --out {data.as_posix()}/structures --fmax {rec['fmax_eV_A']}"
    src.seeds = f"none (deterministic FIRE + FrechetCellFilter from spacings {starts} A)"
    src.wall_s = float(sum(r.get("wall_s", 0.0) for runs_ in rec["runs"].values() for r in runs_))
    src.files = _under(files, "structures")
    return src


def binding_source(data: Path, files: list[str], runs: Path | None) -> Source:
    src = Source("binding curve", "binding_curve.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = "python -m recipes.world.binding (needs structures/)"
        return src
    src.command, src.wall_s = rec["command"], rec.get("wall_s")
    src.seeds = "none (single-point energies)"
    src.files = [f for f in files if f == src.record]
    return src


def heldout_source(data: Path, files: list[str], runs: Path | None) -> Source:
    src = Source("held-out frames", "heldout/heldout.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = ("python -m recipes.world.heldout --runs <runs> after the `heldout` campaign "
                       "(python -m recipes.world.trajectories heldout) finishes")
        return src
    jobs = [j for cell in rec["cells"].values() for j in cell["jobs"]]
    src.command = rec["command"]
    src.seeds = "MD " + "; ".join(f"{j['job']}: {j['seed']}" for j in jobs)
    walls = [j["md_wall_s"] for j in jobs if j.get("md_wall_s") is not None]
    src.wall_s = float(sum(walls)) + float(rec.get("wall_s", 0.0))
    src.notes.append("wall time = reality MD of the source jobs + export")
    src.files = _under(files, "heldout")
    return src


def dataset_source(data: Path, files: list[str], runs: Path | None) -> Source:
    src = Source("training set", "dataset/dataset.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = ("python -m recipes.world.dataset --runs <runs> after the `training` "
                       "campaign (python -m recipes.world.trajectories training) finishes")
        return src
    split = rec["split"]
    src.command = (f"python -m recipes.world.dataset --runs {rec['runs']} --out {data.as_posix()}/dataset "
                   f"--seed {split['seed']} --val-fraction {split['val_fraction']} "
                   f"--test-fraction {split['test_fraction']} --guard-frames {split['guard_frames']}")
    md_seeds, src.wall_s, src.per_job_seeds = _md_seeds([Path(rec["runs"]), runs], sorted(rec["per_job"]))
    src.seeds = f"split {split['seed']}; MD {md_seeds or 'see <runs>/train_*/done.json'}"
    src.notes.append("wall time = teacher MD of the source jobs (the split itself takes seconds)")
    src.files = _under(files, "dataset")
    return src


def experiment_source(data: Path, files: list[str], runs: Path | None) -> Source:
    src = Source("experiment", "experiment/experiment_summary.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = ("python -m recipes.world.experiment --runs <runs> after the `experiment` "
                       "campaign's npt300_* replicas finish")
        return src
    jobs = [r["job"] for r in rec["replicas"]]
    teacher = rec.get("teacher_vs_reality") or {}
    if teacher.get("job"):
        jobs.append(teacher["job"])
    src.command = (f"{rec['generator']} --runs {rec['runs']} --out {data.as_posix()}/experiment"
                   + (" --quick" if rec.get("quick") else ""))
    split = (rec.get("held_out_check") or {}).get("split")
    if split:
        src.command += " --held-out " + ",".join(split["replicas"])
    md_seeds, md_wall, src.per_job_seeds = _md_seeds([Path(rec["runs"]), runs], jobs)
    from_names = "; ".join(f"{j}: {m.group(1)}" for j in jobs if (m := re.search(r"_s(\d+)$", j)))
    src.seeds = f"MD {md_seeds or from_names}"
    src.wall_s = (md_wall or 0.0) + float(rec.get("wall_s", 0.0))
    src.notes.append("wall time = NPT MD of the replicas (when their done.json is here) + analysis")
    src.files = _under(files, "experiment")
    return src


def _repo_relative(path) -> str:
    """``path`` relative to the repository root when it lies inside it (as a command would be
    typed there), else as given."""
    root = Path(__file__).resolve().parents[2]
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def base_model_source(data: Path, files: list[str], runs: Path | None, folder: str = "base_model",
                      name: str = "base model") -> Source:
    src = Source(name, f"{folder}/metrics.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = ("python -m recipes.world.train_base --publish after the training set "
                       "(data/world/dataset) exists")
        if folder != "base_model":
            src.pending = ("python -m recipes.world.train_base --config recipes/world/base_model_finetune.yaml "
                           f"--init-from data/world/base_model/base.ckpt --publish --publish-to data/world/{folder}")
        return src
    src.files = _under(files, folder)
    if rec.get("command"):  # recorded by train_base itself
        src.command = rec["command"]
        src.seeds = "nequip seed of base_model.yaml; continued from the checkpoint named by --init-from"
        src.wall_s = (rec.get("training") or {}).get("wall_s")
        src.notes.append("wall time = nequip-train of this run (all launches), not of the run it continued; "
                         "evaluation not included")
        return src
    run_dir = Path(rec["checkpoint"]).parent
    launch = _load(run_dir / "train_base.json") or {}
    overrides = [o for o in launch.get("overrides", []) if not o.startswith("dataset_")]
    sets = "".join(f" --set {o}" for o in overrides)
    epochs = f" --max-epochs {launch['max_epochs']}" if launch.get("max_epochs") else ""
    src.command = (f"python -m recipes.world.train_base --data {_repo_relative(rec['dataset'])} "
                   f"--run {_repo_relative(run_dir)}{sets}{epochs} --publish --publish-to "
                   f"{_repo_relative(data)}/base_model")
    config = Path(launch.get("config", Path(__file__).with_name("base_model.yaml")))
    match = re.search(r"^seed:\s*(\d+)", config.read_text(), re.M) if config.exists() else None
    src.seeds = f"nequip seed {match.group(1)} ({config.name})" if match else "see the nequip config"
    src.wall_s = (rec.get("training") or {}).get("wall_s")
    src.notes.append("wall time = nequip-train (all launches; a launch killed without a record is "
                     "bounded by the next launch's start); evaluation not included")
    return src


def deepmd_model_source(data: Path, files: list[str], runs: Path | None) -> Source:
    src = Source("DeePMD base model", "deepmd_model/metrics.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = ("python -m recipes.world.train_deepmd --publish after the training set "
                       "(data/world/dataset) exists")
        return src
    src.command = rec["command"].strip()
    seed = rec["input"]["training"]["seed"]
    src.seeds = f"dp train seed {seed}, descriptor and fitting seeds {rec['input']['model']['descriptor']['seed']}"
    src.wall_s = rec.get("wall_s")
    src.notes.append("wall time = dp --pt train (all launches); conversion, freeze and dp test not included")
    src.files = _under(files, "deepmd_model")
    return src


def converged_base_source(data: Path, files: list[str], runs: Path | None) -> Source:
    return base_model_source(data, files, runs, "base_model_converged", "converged base model")


def states_source(data: Path, files: list[str], runs: Path | None) -> Source:
    src = Source("experiment at other state points", "experiment_states/states.json")
    rec = _load(data / src.record)
    if rec is None:
        src.pending = ("python -m recipes.world.state_points --runs <runs> after the `states` campaign's "
                       "replicas finish")
        return src
    jobs = [j for e in rec["state_points"].values() if e.get("own", True) for j in e["replicas"]]
    src.command = rec["command"]
    md_seeds, _, src.per_job_seeds = _md_seeds([Path(rec["runs"]), runs], jobs)
    src.seeds = f"MD {md_seeds}"
    src.wall_s = rec.get("md_and_analysis_wall_s")
    src.notes.append("wall time = NPT MD of the replicas + analysis")
    src.files = _under(files, "experiment_states")
    return src


PRODUCERS = (relax_source, binding_source, heldout_source, dataset_source, experiment_source,
             base_model_source, deepmd_model_source, states_source, converged_base_source)


# --------------------------------------------------------------------------- re-measured numbers


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _with_error(entry: dict, key: str, digits: int = 3) -> str:
    """``entry[key]`` ± its error: ``{"value", "error"}`` dicts (experiment_summary.json) or a flat
    ``"a_A"`` beside ``"a_err_A"`` (lattice.json)."""
    value = entry[key]
    if isinstance(value, dict):
        value, err = value["value"], value["error"]
    else:
        name, unit = key.split("_", 1)
        err = entry.get(f"{name}_err_{unit}")
    return f"{value:.{digits}f}" + (f" ± {err:.{digits}f}" if err is not None else "")


def measured(data: Path) -> list[tuple[str, str, str, str]]:
    """Rows (quantity, the first quoted number, re-measured value or ``pending: ...``, source)."""
    rows = []
    relax = _load(data / "structures/relax.json")
    pend_relax = "pending: python -m recipes.world.relax"
    for who, quoted_d in (("teacher", "3.98 (CHGNet)"), ("reality", "3.30 (CHGNet + D3)")):
        rows.append((f"{who} relaxed interlayer spacing (Å), 0 K", quoted_d,
                     _fmt(relax[who]["spacing_A"]) if relax else pend_relax, "structures/relax.json"))
        rows.append((f"{who} relaxed lattice a (Å), 0 K", "≈ 7.12" if who == "teacher" else "—",
                     _fmt(relax[who]["a_A"]) if relax else pend_relax, "structures/relax.json"))
    lattice = _load(data / "experiment/lattice.json")
    summary = _load(data / "experiment/experiment_summary.json")
    pend_exp = "pending: python -m recipes.world.experiment (experiment campaign's NPT replicas)"
    for key, label in (("a_A", "a (Å)"), ("c_A", "c (Å)"), ("spacing_A", "interlayer spacing (Å)")):
        rows.append((f"reality 300 K NPT {label}", "—",
                     _with_error(lattice, key) if lattice else pend_exp, "experiment/lattice.json"))
    teacher = (summary or {}).get("teacher_vs_reality")
    for key, label in (("a_A", "a (Å)"), ("spacing_A", "interlayer spacing (Å)")):
        rows.append((f"teacher 300 K NPT {label}", "—",
                     _with_error(teacher["lattice"], key) if teacher else
                     "pending: python -m recipes.world.experiment with the teacher replica "
                     "npt300_teacher_cell112_s201 finished", "experiment/experiment_summary.json"))
    rows.append(("teacher vs reality total neutron g(r) χ²/bin, each at its own NPT cell", "≈ 65",
                 _fmt(teacher["chi2_per_bin"]["neutron_rdf"]["chi2_per_bin"], 1) if teacher else
                 "pending: python -m recipes.world.experiment with the teacher replica finished",
                 "experiment/experiment_summary.json"))
    noise = (summary or {}).get("noise_check")
    rows.append(("two reality replicas, neutron g(r) χ²/bin (expected if consistent)", "≈ 1",
                 f"{noise['chi2_per_bin']:.2f} ({noise['expected_chi2_per_bin_if_consistent']:.3f}); "
                 f"published σ of g(r) × {summary.get('sigma_scale', {}).get('neutron_rdf', 1.0):.2f} "
                 "(Birge ratio: the replicas' layer registries differ, c "
                 + " vs ".join(f"{c:.2f}" for c in lattice_c_means(data)) + " Å)"
                 if noise else "pending: python -m recipes.world.experiment with ≥ 2 replicas finished",
                 "experiment/experiment_summary.json"))
    held = (summary or {}).get("held_out_check")
    rows.append(("each reality replica vs the others' mean and Birge-scaled σ, neutron g(r) χ²/bin "
                 "(expected if σ covers it)", "≈ 1",
                 ", ".join(f"{name.rsplit('_', 1)[-1]} {entry['neutron_rdf']['chi2_per_bin']:.2f}"
                           for name, entry in held["replicas"].items())
                 + f"; mean {held['mean_chi2_per_bin']['neutron_rdf']:.2f} "
                 f"({held['expected_chi2_per_bin_if_consistent']:.3f})"
                 if held else "pending: python -m recipes.world.experiment with ≥ 3 replicas finished",
                 "experiment/experiment_summary.json"))
    split = (held or {}).get("split")
    if split:
        rows.append(("replicas run after σ was published, vs the σ of "
                     + ", ".join(n.rsplit("_", 1)[-1] for n in split["rest"]) + " alone: neutron g(r) χ²/bin "
                     "(expected if σ covers them)", "≈ 1",
                     ", ".join(f"{name.rsplit('_', 1)[-1]} {entry['neutron_rdf']['chi2_per_bin']:.2f}"
                               for name, entry in split["replicas"].items())
                     + f" ({split['expected_chi2_per_bin_if_consistent']:.3f}); σ scale of the rest "
                     + f"{next(iter(split['replicas'].values()))['neutron_rdf']['sigma_scale']:.2f}",
                     "experiment/experiment_summary.json"))
    rows += _d3_rows(data)
    binding = _load(data / "binding_curve.json")
    for who, quoted in (("teacher", "3.8–4.0 Å, 11–12 meV/atom"), ("reality", "— (≈ 46 meV/atom)")):
        value = "pending: python -m recipes.world.binding"
        if binding:
            m = binding["minimum"][who]
            value = f"{m['spacing_A']:.2f} Å, {m['depth_meV_per_atom']:.1f} meV/atom"
        rows.append((f"{who} binding minimum (rigid layers, reality's unit; vs 8 Å)", quoted,
                     value, "binding_curve.json"))
    metrics = _load(data / "base_model/metrics.json")
    rows.append(("base model test split: E RMSE (meV/atom), F RMSE (meV/Å); all sets in "
                 "base_model/metrics.md", "—",
                 f"{_metric(metrics['test']['energy_rmse_meV_per_atom'], 2)}, "
                 f"{_metric(metrics['test']['forces_rmse_meV_per_A'], 1)}" if metrics else
                 "pending: python -m recipes.world.train_base --publish", "base_model/metrics.json"))
    for folder, who in (("base_model", "base model"), ("base_model_converged", "converged base model")):
        m = _load(data / f"{folder}/metrics.json")
        rows.append((f"{who} force RMSE vs teacher on the 300 K held-out frames (meV/Å), per cell", "—",
                     ", ".join(f"{cell} {_metric(e['vs_teacher']['forces_rmse_meV_per_A'], 1)}"
                               for cell, e in m.get("heldout", {}).items() if "vs_teacher" in e)
                     if m and m.get("heldout") else f"pending: python -m recipes.world.train_base (→ {folder})",
                     f"{folder}/metrics.json"))
    states = _load(data / "experiment_states/states.json")
    for tag, e in (states or {}).get("state_points", {}).items():
        role = " (held out of the refinements)" if e.get("held_out") else ""
        rows.append((f"reality NPT a, interlayer spacing (Å) at {e['temperature_K']:g} K, "
                     f"{e['pressure_GPa']:g} GPa{role}", "—",
                     f"{_with_error(e['lattice'], 'a_A')}, {_with_error(e['lattice'], 'spacing_A')}",
                     "experiment_states/states.json"))
    if not states:
        rows.append(("reality NPT lattice at 150, 375, 450 K (1 bar) and 300 K (1 GPa)", "—",
                     "pending: python -m recipes.world.state_points (states campaign)",
                     "experiment_states/states.json"))
    deepmd = _load(data / "deepmd_model/metrics.json")
    rows.append(("DeePMD base model test split (dp --pt test, per system): E RMSE (meV/atom), F RMSE (meV/Å)",
                 "—", "; ".join(f"{t['system'].rsplit('/', 1)[-1]} ({t['frames']} frames) "
                                f"{1000 * t['energy_rmse_per_atom_eV']:.2f}, {1000 * t['force_rmse_eV_per_A']:.1f}"
                                for t in deepmd["test"]) if deepmd else
                 "pending: python -m recipes.world.train_deepmd --publish", "deepmd_model/metrics.json"))
    return rows


def _metric(entry, digits: int) -> str:
    """A metrics.json error: a number, or ``{"value", "ci": [lo, hi]}`` (bootstrap interval)."""
    if isinstance(entry, dict):
        ci = entry.get("ci")
        text = f"{entry['value']:.{digits}f}"
        return text + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")
    return f"{entry:.{digits}f}"


def lattice_c_means(data: Path) -> list[float]:
    """Each reality replica's mean c (Å) from experiment/lattice.json ([] if absent)."""
    lattice = _load(data / "experiment" / "lattice.json") or {}
    return lattice.get("details", {}).get("c_A", {}).get("replica_means", [])


def _d3_rows(data: Path) -> list[tuple[str, str, str, str]]:
    """D3 force RMS (reality − teacher forces) on the held-out frames, total and per cell."""
    label = "D3 force RMS on held-out frames (meV/Å)"
    quoted = "28–37 (56 atoms)"
    if not any((data / "heldout").glob("*.extxyz.gz")):
        return [(label, quoted, "pending: python -m recipes.world.heldout after the heldout "
                 "campaign (python -m recipes.world.trajectories heldout) finishes", "heldout/")]
    import numpy as np

    from recipes.world.heldout import force_difference_rms_meV_A, read_heldout

    cells = read_heldout(data / "heldout")
    rows, squares, count = [], 0.0, 0
    for cell, frames in cells.items():
        rms = force_difference_rms_meV_A(frames)
        n = sum(3 * len(a) for a in frames)
        squares, count = squares + rms**2 * n, count + n
        rows.append((f"{label}, {cell} ({len(frames)} frames of {len(frames[0])} atoms)",
                     quoted if cell == "train56" else "—", _fmt(rms, 1), f"heldout/{cell}.extxyz.gz"))
    rows.insert(0, (f"{label}, all cells", quoted, _fmt(float(np.sqrt(squares / count)), 1), "heldout/"))
    return rows


# --------------------------------------------------------------------------- environment and output


def versions() -> dict[str, str]:
    return package_versions(PACKAGES)


def collect(data: str | Path, runs: str | Path | None = None) -> dict:
    """Everything PROVENANCE.md shows, as the provenance.json dict."""
    data = Path(data)
    runs = Path(runs) if runs is not None else None
    files = data_files(data)
    sources = [produce(data, files, runs) for produce in PRODUCERS]
    # A producer whose files are all unchanged since the previous provenance keeps what that one
    # said (command, seeds, wall time): its campaign folder or run record may not be on this
    # machine any more, and rewriting must not lose them.
    before = _load(data / "provenance.json") or {}
    previous = {s["name"]: s for s in before.get("sources", [])}
    old_sha = {e["path"]: e["sha256"] for e in before.get("files", [])}
    for src in sources:
        old = previous.get(src.name)
        unchanged = bool(src.files) and all(
            old_sha.get(f"{data.as_posix()}/{f}") == sha256(data / f) for f in src.files)
        if old and unchanged and not old.get("pending"):
            src.command, src.seeds, src.wall_s = old["command"], old["seeds"], old["wall_s"]
            src.per_job_seeds, src.notes = old.get("per_job_seeds", {}), list(old.get("notes", []))
    owner = {}
    for src in sources:
        for f in src.files:
            owner.setdefault(f, src)
    entries = []
    for f in files:
        src = owner.get(f)
        entries.append({"path": f"{data.as_posix()}/{f}", "bytes": (data / f).stat().st_size,
                        "sha256": sha256(data / f), "producer": src.name if src else None,
                        "command": src.command if src else NO_RECORD,
                        "seeds": src.seeds if src else "", "wall_s": src.wall_s if src else None,
                        "record": src.record if src else None})
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "python -m recipes.world.provenance" + (f" --runs {runs}" if runs else "")
                   + f" --data {data.as_posix()}",
        "files": entries,
        "sources": [{"name": s.name, "record": s.record, "command": s.command, "seeds": s.seeds,
                     "wall_s": s.wall_s, "files": len(s.files), "notes": s.notes,
                     "per_job_seeds": s.per_job_seeds,
                     "pending": s.pending} for s in sources],
        "measured": [dict(zip(("quantity", "issue_4", "value", "source"), r)) for r in measured(data)],
        "versions": versions(),
        "machine": machine(),
    }


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(prov: dict) -> str:
    """PROVENANCE.md from :func:`collect`'s dict."""
    m, v = prov["machine"], prov["versions"]
    lines = [
        "# Provenance of data/world",
        "",
        f"Written by `{prov['command']}` on {prov['generated']}; do not edit by hand. "
        "Every file below was made by the command in its row (paths relative to the repository "
        "root); `NO RECORD` means no producer claims it.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['platform']}). Packages: "
        + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "## Files",
        "",
        "| file | bytes | sha256 | command | seeds | wall time (s) |",
        "|---|---:|---|---|---|---:|",
    ]
    for e in prov["files"]:
        wall = "—" if e["wall_s"] is None else f"{e['wall_s']:.0f}"
        lines.append(f"| `{e['path']}` | {e['bytes']} | `{e['sha256']}` | `{_cell(e['command'])}` | "
                     f"{_cell(e['seeds'])} | {wall} |")
    lines += ["", "## Producers", ""]
    for s in prov["sources"]:
        if s["pending"]:
            lines.append(f"- **{s['name']}** (`{s['record']}`): pending: {s['pending']}")
        else:
            notes = "; ".join(s["notes"])
            lines.append(f"- **{s['name']}** (`{s['record']}`): {s['files']} file(s), "
                         f"`{s['command']}`" + (f"; {notes}" if notes else ""))
    lines += ["", "## Measured for this project, re-measured", "",
              "| quantity | first quoted | re-measured | source |", "|---|---|---|---|"]
    for row in prov["measured"]:
        lines.append("| " + " | ".join(_cell(row[k]) for k in ("quantity", "issue_4", "value", "source"))
                     + " |")
    return "\n".join(lines) + "\n"


def write(data: str | Path, runs: str | Path | None = None) -> dict:
    """Write ``<data>/PROVENANCE.md`` and ``<data>/provenance.json``; returns the dict. When
    nothing but the time of writing would change, the files are left as they are (so a rerun
    with the same data leaves the tree clean) and the existing record is returned."""
    import json

    from difftre_torch.checkpoint import atomic_write_json, atomic_write_text

    prov = collect(data, runs)
    record = Path(data) / "provenance.json"
    if record.exists():
        before = json.loads(record.read_text())
        if {k: v for k, v in before.items() if k != "generated"} == {k: v for k, v in prov.items() if k != "generated"}:
            return before
    atomic_write_json(record, prov)
    atomic_write_text(Path(data) / "PROVENANCE.md", markdown(prov))
    return prov


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=None, help="the campaigns' run directory (MD seeds, wall times)")
    parser.add_argument("--data", default="data/world")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    prov = write(args.data, args.runs)
    unclaimed = [e["path"] for e in prov["files"] if e["command"] == NO_RECORD]
    pending = [s["name"] for s in prov["sources"] if s["pending"]]
    print(f"[provenance] {len(prov['files'])} files -> {args.data}/PROVENANCE.md; "
          f"pending: {', '.join(pending) or 'none'}; without a record: {unclaimed or 'none'}", flush=True)
    return prov


if __name__ == "__main__":
    main()
