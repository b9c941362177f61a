"""The pipeline of `difftre refine` end to end on the g-C3N4 recipe's config, cut down to a tiny world.

The world here is small and cheap, not physical: a 1-epoch tiny NequIP model trained on
EMT-labelled frames of the shipped teacher cell, an "experiment" made from rattled frames of the
same cell, EMT-labelled held-out frames with a scaled copy as the teacher's labels. It checks the
wiring (every step, every file, caching and resume), not the physics, which the full run reports.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from difftre_torch.experiment.readers import ExperimentalData, write_gr
from difftre_torch.experiment.target import Target
from difftre_torch.observables.registry import static_observables
from difftre_torch.config import parse_job
from difftre_torch.config.parse import read_mapping
from difftre_torch.workflow.pipeline import Pipeline
from recipes.world.structures import make_cell

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "data" / "world" / "structures" / "teacher_unit.extxyz"


def _labelled(atoms, scale=1.0, teacher=False):
    atoms = atoms.copy()
    atoms.calc = EMT()
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, energy=e * scale, forces=f * scale, stress=s * scale)
    if teacher:
        atoms.info["teacher_energy"] = e
        atoms.info["teacher_stress"] = s
        atoms.arrays["teacher_forces"] = f
    return atoms


def _rattled(cell_name, n, seed, amplitude=0.05):
    base = make_cell(read(UNIT), cell_name)
    out = []
    for k in range(n):
        a = base.copy()
        a.rattle(amplitude, seed=seed + k)
        out.append(a)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pytest.importorskip("nequip")
    from difftre_torch.testing import train_tiny_nequip

    root = tmp_path_factory.mktemp("world")
    train = [_labelled(a) for a in _rattled("train56", 6, 0)]
    model = train_tiny_nequip(root / "model", train, max_epochs=1)
    (root / "dataset").mkdir()
    write(root / "dataset" / "train.extxyz.gz", train)
    write(root / "dataset" / "test.extxyz.gz", [_labelled(a) for a in _rattled("train56", 3, 50)])
    held = root / "heldout"
    held.mkdir()
    write(held / "train56.extxyz.gz", [_labelled(a, 1.1, True) for a in _rattled("train56", 3, 100)])
    write(held / "cell112.extxyz.gz", [_labelled(a, 1.1, True) for a in _rattled("cell112", 3, 200)])
    # "experiment": frame-mean neutron G(r) of rattled frames, through an instrument Q range
    frames = _rattled("train56", 4, 300, amplitude=0.1)
    r = torch.arange(0.51, 6.0, 0.02, dtype=torch.float64)
    opts = {"weighting": "neutron", "q_min": 0.5, "q_max": 25.0, "lorch": False, "r_max_A": 8.0}
    G = static_observables(torch.as_tensor(np.stack([a.positions for a in frames])),
                           torch.as_tensor(np.stack([a.cell.array for a in frames])),
                           torch.as_tensor(frames[0].numbers), [Target("G", "G", torch.zeros(len(r)), x=r, options=opts)],
                           4)["G"].mean(0)
    exp = root / "experiment"
    exp.mkdir()
    write_gr(exp / "neutron.gr", ExperimentalData("G", r.numpy(), G.numpy(), np.full(len(r), 0.05)),
             {"mode": "neutron", "composition": {"C": 12, "N": 16}, "qmin": 0.5, "qmax": 25.0,
              "rmin": float(r[0]), "rmax": float(r[-1]), "rstep": 0.02, "lorch": False, "rmax_transform": 8.0})
    lengths = frames[0].cell.lengths()
    lattice = {"a_A": float(lengths[0] / 2), "c_A": float(lengths[2]), "spacing_A": float(lengths[2] / 2),
               "a_err_A": 0.01, "c_err_A": 0.01, "spacing_err_A": 0.005}
    (exp / "lattice.json").write_text(json.dumps(lattice))
    return parse_job(world_job(root, model, exp, held), ROOT, str(root / "job.yaml"))


def world_job(root, model, exp, held) -> dict:
    """The recipe's full.yaml, cut down to the tiny world (a mapping, as read from YAML)."""
    data = read_mapping(ROOT / "recipes" / "gc3n4" / "full.yaml")
    data["system"] = {"structure": str(UNIT), "repeat": [2, 1, 1]}
    data["potential"]["path"] = str(model)
    data["sampler"].update({"equilibration_steps": 4, "reequilibration_steps": 2, "snapshots_per_replica": 4,
                            "stride": 2, "timestep_fs": 0.5, "min_distance_A": 0.5})
    for point in data["state_points"]:
        point["replicas"] = 2
    lattice = str(exp / "lattice.json")
    data["targets"][0].update({"file": str(exp / "neutron.gr"), "x_range": [1.0, 5.0]})
    for entry in data["targets"][1:] + data["compare"]["targets"]:
        entry["file"] = lattice
        if entry.get("options", {}).get("repeats"):
            entry["options"]["repeats"] = [2, 1, 1]
    data["compare"]["targets"] = data["compare"]["targets"][:4]  # no g(r) file in this world
    data["compare"]["targets"][0].update({"file": str(exp / "neutron.gr"), "x_range": [1.0, 5.9]})
    data["compare"]["n_blocks"] = 2
    data["force_matching"] = {"file": str(root / "dataset" / "train.extxyz.gz"), "scan": [0.0, 10.0]}
    data["trainer"].update({"updates": 2, "chunk_size": 4, "fm_batch_frames": 2, "learning_rate": 1e-3,
                            "force_matching_weight": 10.0, "progress": False})
    both = {"reality": "label", "teacher": "teacher"}
    data["evaluation"]["sets"] = [
        {"name": "train56", "file": str(held / "train56.extxyz.gz"), "references": both},
        {"name": "cell112", "file": str(held / "cell112.extxyz.gz"), "references": both},
        {"name": "teacher test split", "file": str(root / "dataset" / "test.extxyz.gz"), "references": {"teacher": "label"}}]
    data["evaluation"]["n_boot"] = 20
    data["evaluation"]["binding"].update({"spacings_A": [3.2, 3.6, 4.0],
                                          "structure": str(ROOT / "data/world/structures/reality_unit.extxyz"),
                                          "references": str(ROOT / "data/world/binding_curve.json")})
    data["output"] = {"dir": str(root / "out")}
    return data


def test_pipeline_end_to_end_then_cached(world, monkeypatch):
    """The whole pipeline; λ = 0's model done first on its own (``--lambda``, as a second
    process would), which the main run then finds done; the base's evaluation held by "another
    process" meanwhile, so the main run does the rest first, waits, and takes it when freed;
    then every item again from its cache."""
    import os
    import socket

    from difftre_torch.config import ConfigError
    from difftre_torch.workflow import pipeline as pipeline_mod

    logs = []
    side = Pipeline(world, log=logs.append)
    with pytest.raises(ConfigError, match=r"--lambda 5: not one of this config's force-matching weights \['10', '0'\]"):
        side.run_model(5.0)
    alone = side.run_model(0.0)
    assert set(alone) == {"refine", "structure_refined", "evaluate"}
    assert not any(" base:" in line for line in logs)  # only λ = 0's items
    done = Path(alone["refine"]["dir"]) / "refine_result.json"
    stamp = done.stat().st_mtime_ns
    out = world.out_dir
    lock = out / "steps" / "evaluate" / "base.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # a live holder
    waits = []
    monkeypatch.setattr(pipeline_mod.time, "sleep", lambda s: (waits.append(s), lock.unlink()))
    logs.clear()
    report = Pipeline(world, log=logs.append, poll_s=0.01).run()
    assert done.stat().st_mtime_ns == stamp  # not refined twice
    assert waits == [0.01]  # waited once, when nothing else was left
    line = lambda text: next(i for i, x in enumerate(logs) if text in x)  # noqa: E731
    assert line("evaluate base: another process works on it") < line("evaluate refined: running") \
        < line("evaluate base: running")
    assert sum("done before" in x for x in logs) == 3  # λ = 0's refine, structure, evaluation
    for name in ("REPORT.md", "summary.json", "functions.png", "scalars.png", "training.png", "binding.png",
                 "errors_vs_size.png"):
        assert (out / "report" / name).stat().st_size > 0, name
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["structure"]) == {"base", "refined", "lambda_0"}
    assert set(summary["evaluation"]) == {"base", "refined", "lambda_0"}
    for model in summary["structure"].values():
        assert np.isfinite(model["npt"]["G_total"]["r_w"]) and np.isfinite(model["nvt_exp"]["G_total"]["r_w"])
        assert "spacing" in model["npt"] and "spacing" not in model["nvt_exp"]  # no cell observable at fixed cell
    sets = summary["evaluation"]["refined"]["sets"]
    assert list(sets) == ["train56", "cell112", "teacher test split"] and sets["cell112"]["atoms"] == 112
    f = sets["cell112"]["vs_reality"]["forces_rmse_meV_per_A"]
    assert f["ci"][0] <= f["value"] <= f["ci"][1]
    checks = summary["checks"]
    name = "cell112: forces_rmse_meV_per_A vs reality refined < base, intervals apart"
    assert "R_w of G_total cut by >= 70 %" in checks and name in checks
    assert not any(k.startswith("train56:") for k in checks)  # min_atoms: 56 leaves out the training cell
    assert all(isinstance(v["holds"], bool) for v in checks.values())
    paired = checks[name]["paired_difference"]
    f_base = summary["evaluation"]["base"]["sets"]["cell112"]["vs_reality"]["forces_rmse_meV_per_A"]["value"]
    assert paired["value"] == pytest.approx(f["value"] - f_base)
    assert paired["ci"][0] <= paired["value"] <= paired["ci"][1]
    ceiling = summary["evaluation"]["refined"]["pair_ceiling"]["cell112"]
    assert ceiling["ceiling_forces_rmse_meV_per_A"] <= ceiling["base_forces_rmse_meV_per_A"] + 1e-6
    assert "teacher test split" not in summary["evaluation"]["refined"]["pair_ceiling"]  # no reality labels
    assert "| R_w of G_total, npt |" in report["headline"]
    refined = summary["refine"]["refined"]
    assert Path(refined["model"]).exists() and refined["lambda"] == 10.0
    assert summary["refine"]["lambda_0"]["model"] == alone["refine"]["model"]
    assert (Path(refined["dir"]) / "checkpoint.pt").exists()
    assert (Path(refined["dir"]) / "tensorboard").is_dir()
    md = (out / "report" / "REPORT.md").read_text()
    assert "## Labelled frames" in md and "E RMSE − bias" in md
    scan = md.split("## λ scan")[1]
    rows = {x.split(" | ")[0].lstrip("| "): x for x in scan.splitlines() if x.startswith("| ")}
    assert {"base", "refined", "lambda_0"} <= set(rows)
    assert rows["lambda_0"].startswith("| lambda_0 | 0 | ") and rows["refined"].startswith("| refined | 10 | ")
    assert f"{paired['value']:+.2f} [{paired['ci'][0]:+.2f}, {paired['ci'][1]:+.2f}]" in rows["refined"]
    # a second run takes every step from its cache and rewrites the same report
    logs.clear()
    again = Pipeline(world, log=logs.append).run()
    assert sum("done before" in x for x in logs) == 8  # the base: 2 items; refined and λ = 0: 3 each
    assert again["headline"] == report["headline"]


def test_findings_say_what_the_numbers_say():
    from difftre_torch.workflow.report import findings

    name = "cell252: forces_rmse_meV_per_A vs reality refined < base, intervals apart"
    check = {"holds": False, "base": {"value": 74.0, "ci": [73.0, 75.0]}, "refined": {"value": 73.5, "ci": [72.5, 74.5]},
             "paired_difference": {"value": -0.5, "ci": [-0.7, -0.3]}}
    evaluation = {"refined": {"pair_ceiling": {"cell252": {
        "frames": 15, "base_forces_rmse_meV_per_A": 74.1, "ceiling_forces_rmse_meV_per_A": 65.8}}}}
    text = "\n".join(findings({name: check}, evaluation))
    assert "74 → 73.5" in text and "-0.5 [-0.7, -0.3]" in text and "better on the same frames" in text
    assert "65.8 meV/Å from the base's 74.1" in text
    check["paired_difference"] = {"value": 0.1, "ci": [-0.1, 0.3]}
    assert "no change is resolved" in "\n".join(findings({name: check}, {"refined": {}}))
    assert findings({name: {**check, "holds": True}}, evaluation) == []


def test_an_output_folder_made_from_other_inputs_is_refused(world, tmp_path):
    from difftre_torch.config import ConfigError
    from difftre_torch.workflow.pipeline import check_inputs, clear_outputs, input_fingerprint

    out = tmp_path / "out"
    out.mkdir()
    check_inputs(out, input_fingerprint(world))
    check_inputs(out, input_fingerprint(world))  # same inputs: fine
    raw = dict(world.raw)
    raw["trainer"] = {**raw["trainer"], "updates": 3}
    other = parse_job(raw, world.base_dir, world.source)
    with pytest.raises(ConfigError, match=r"changed: config.*--fresh"):
        check_inputs(out, input_fingerprint(other))
    clear_outputs(out)
    check_inputs(out, input_fingerprint(other))


def test_summary_paths_are_relative_to_the_working_directory():
    from difftre_torch.workflow.report import portable

    root = Path("/repo/root")
    obj = {"model": "/repo/root/outputs/m.pt", "other": "/elsewhere/x", "n": 3,
           "runs": [{"dir": "/repo/root/outputs/run"}, "/repo/rootless/y"]}
    assert portable(obj, root) == {"model": "outputs/m.pt", "other": "/elsewhere/x", "n": 3,
                                   "runs": [{"dir": "outputs/run"}, "/repo/rootless/y"]}
