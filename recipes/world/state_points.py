"""Publish the stand-in world's experiment at its other state points.

``python -m recipes.world.state_points [--runs runs/world] [--out data/world/experiment_states]
[--experiment data/world/experiment] [--quick]``

Input: the finished replicas of the ``states`` campaign of :mod:`recipes.world.trajectories`
(reality NPT on the 112-atom cell at 150, 375 and 450 K and 1 bar, and at 300 K and 1 GPa; two
replicas each). Each state point is published exactly as the 300 K experiment is
(:func:`recipes.world.experiment.publish`: lattice.json with a, c and the interlayer spacing and
their errors, the neutron and X-ray totals g(r), G(r), S(Q) with block errors, the replicas'
noise check and Birge-scaled σ) into ``<out>/<tag>/``, tag ``T<K>_P1bar`` or ``T<K>_P<GPa>GPa``.

``<out>/states.json`` indexes them with the 300 K, 1 bar publication (``--experiment``) beside
them: per state point its temperature (K), pressure (GPa), folder, lattice values ± errors, the
replicas and the neutron G(r) noise check (pair χ²/bin against its expectation). The state
point :data:`HELD_OUT` (375 K, 1 bar) is marked ``held_out``: it is published like the others
but no shipped refinement config fits it; the report compares the refined model's prediction
with it. A state point with fewer than ``--min-replicas`` finished replicas is listed under
``pending`` and not published.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from difftre_torch.checkpoint import atomic_write_json
from recipes.world.experiment import ExperimentConfig, publish
from recipes.world.replicas import find_jobs
from recipes.world.trajectories import ONE_BAR_GPA, STATE_POINTS, state_job_name

HELD_OUT = (375.0, ONE_BAR_GPA)  # (K, GPa): published, fitted by no shipped config
GENERATOR = "python -m recipes.world.state_points"


def state_tag(temperature_K: float, pressure_GPa: float) -> str:
    """``T300_P1bar`` or ``T300_P1GPa``: the folder of a state point."""
    return f"T{temperature_K:.0f}_P1bar" if pressure_GPa <= 2 * ONE_BAR_GPA else f"T{temperature_K:.0f}_P{pressure_GPa:g}GPa"


def _noise(summary: dict) -> dict | None:
    """The neutron G(r) (instrument Q range) noise check of a publication: χ²/bin of each replica
    pair, its expectation for consistent replicas, and the σ scale (Birge ratio) applied."""
    noise = summary.get("noise_check")
    if not noise:
        return None
    key = "neutron_G_instrument"
    return {"function": key, "chi2_per_bin": {pair: v[key]["chi2_per_bin"] for pair, v in noise["pairs"].items()},
            "expected": noise["expected_chi2_per_bin_if_consistent"],
            "sigma_scale": (summary.get("sigma_scale") or {}).get(key, 1.0)}


def _entry(temperature_K: float, pressure_GPa: float, folder: str, summary: dict, own: bool = True) -> dict:
    """One state point of the index; ``own``: published by this command (else listed beside)."""
    return {"temperature_K": temperature_K, "pressure_GPa": pressure_GPa, "dir": folder, "own": own,
            "held_out": (temperature_K, pressure_GPa) == HELD_OUT,
            "lattice": summary["lattice"], "replicas": [r["job"] for r in summary["replicas"]],
            "n_frames": sum(r["n_frames"] for r in summary["replicas"]), "noise_check": _noise(summary)}


def publish_states(runs: str | Path, out: str | Path, experiment: str | Path | None, config: ExperimentConfig, *,
                   quick: bool = False, min_replicas: int = 2, progress: bool = True,
                   argv: list[str] | None = None) -> dict:
    """Publish every state point of :data:`~recipes.world.trajectories.STATE_POINTS` that has
    ``min_replicas`` finished replicas under ``runs`` into ``out``; write and return the index."""
    t0 = time.perf_counter()
    out = Path(out)
    index: dict = {"generator": GENERATOR, "command": " ".join([GENERATOR, *(argv or [])]), "runs": str(runs),
                   "quick": quick, "held_out": {"temperature_K": HELD_OUT[0], "pressure_GPa": HELD_OUT[1]},
                   "state_points": {}, "pending": {}}
    if experiment is not None and (Path(experiment) / "experiment_summary.json").exists():
        summary = json.loads((Path(experiment) / "experiment_summary.json").read_text())
        state = summary["state_point"]
        index["state_points"][state_tag(state["temperature_K"], state["pressure_GPa"])] = _entry(
            state["temperature_K"], state["pressure_GPa"], str(experiment), summary, own=False)
    walls = []
    for temperature, pressure, _ in STATE_POINTS:
        tag = state_tag(temperature, pressure)
        pattern = state_job_name(temperature, pressure, "reality", "*")
        jobs = find_jobs(runs, pattern)
        if len(jobs) < min_replicas:
            index["pending"][tag] = f"{len(jobs)} of {min_replicas} replicas {pattern!r} finished under {runs}"
            print(f"[state_points] {tag}: pending ({index['pending'][tag]})", flush=True)
            continue
        summary = publish(runs, out / tag, config, quick=quick, reality_pattern=pattern,
                          teacher_pattern="no-teacher-replica", progress=progress)
        index["state_points"][tag] = _entry(temperature, pressure, tag, summary)
        walls += [json.loads((j / "done.json").read_text()).get("wall_s") or 0.0 for j in jobs]
        walls.append(summary["wall_s"])
    index["wall_s"] = round(time.perf_counter() - t0, 1)
    index["md_and_analysis_wall_s"] = round(float(sum(walls)), 1)
    atomic_write_json(out / "states.json", index)
    return index


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python -m recipes.world.state_points --runs runs/world --out data/world/experiment_states",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/world", help="where the states campaign's jobs are")
    parser.add_argument("--out", default="data/world/experiment_states", help="output folder")
    parser.add_argument("--experiment", default="data/world/experiment",
                        help="the 300 K, 1 bar publication to list beside them ('' for none)")
    parser.add_argument("--min-replicas", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="few frames, short r range (smoke test)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from recipes.world import calculators

    calculators.set_threads()
    config = ExperimentConfig.quick() if args.quick else ExperimentConfig()
    index = publish_states(args.runs, args.out, args.experiment or None, config, quick=args.quick,
                           min_replicas=args.min_replicas, progress=not args.no_progress,
                           argv=list(sys.argv[1:] if argv is None else argv))
    print(json.dumps({tag: {k: e["lattice"][k] for k in ("a_A", "spacing_A") if k in e["lattice"]}
                      for tag, e in index["state_points"].items()}, indent=1), flush=True)
    return index


if __name__ == "__main__":
    main()
