"""The g-C3N4 recipe end to end on a tiny stand-in world (recipes/gc3n4/).

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
import yaml
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from difftre_torch.experiment.readers import ExperimentalData, write_gr
from difftre_torch.experiment.target import Target
from difftre_torch.observables.registry import static_observables
from recipes.gc3n4 import config as config_mod
from recipes.gc3n4.pipeline import Pipeline, lambdas
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
    overrides = {
        "paths": {"model": str(model), "structure": str(UNIT), "experiment": str(exp), "heldout": str(held),
                  "teacher_train": str(root / "dataset" / "train.extxyz.gz"),
                  "teacher_test": str(root / "dataset" / "test.extxyz.gz"),
                  "binding": str(ROOT / "data" / "world" / "binding_curve.json"), "out": str(root / "out")},
        "system": {"cell": "train56", "repeats": [2, 1, 1]},
        "experiment": {"fit_r_A": [1.0, 5.0], "report_r_A": [1.0, 5.9]},
        "sampler": {"equilibration_steps": 4, "reequilibration_steps": 2, "snapshots_per_replica": 4,
                    "stride": 2, "replicas": 2, "timestep_fs": 0.5, "min_distance_A": 0.5},
        "compare": {"n_blocks": 2},
        "trainer": {"updates": 2, "chunk_size": 4, "fm_batch_frames": 2, "learning_rate": 1e-3},
        "refine": {"force_matching_weight": 10.0, "lambda_scan": [0.0, 10.0]},
        "transfer": {"n_boot": 20, "binding_spacings_A": [3.2, 3.6, 4.0]},
    }
    return config_mod.load(config_mod.DEFAULT_CONFIG, quick=True, overrides=overrides)


def test_config_modes_and_errors(tmp_path):
    quick = config_mod.load(quick=True)
    full = config_mod.load()
    assert quick.mode == "quick" and full.mode == "full"
    assert quick.trainer.updates < full.trainer.updates and quick.refine.lambda_scan == []
    assert len(lambdas(full)) == len(set(full.refine.lambda_scan) | {full.refine.force_matching_weight})
    assert lambdas(full)[0] == full.refine.force_matching_weight
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(config_mod.DEFAULT_CONFIG.read_text())
    data["sampler"]["timestep"] = 1.0
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"bad.yaml: sampler: unknown field\(s\) \['timestep'\]"):
        config_mod.load(bad)
    with pytest.raises(ValueError, match="sampler.kind"):
        config_mod.load(overrides={"sampler": {"kind": "lammps"}})
    with pytest.raises(ValueError, match="trainer.select must be 'best' or 'last', got 'final'"):
        config_mod.load(overrides={"trainer": {"select": "final"}})
    with pytest.raises(ValueError, match="refine.parameters"):
        config_mod.load(overrides={"refine": {"parameters": "last_layer"}})
    with pytest.raises(ValueError, match=r"refine.correction: unknown field\(s\) \['cutof'\]"):
        config_mod.load(overrides={"refine": {"correction": {"cutof": 8.0}}})


def test_missing_inputs_name_the_producer(tmp_path):
    from recipes.gc3n4.inputs import experiment_targets, load_model

    config = config_mod.load(overrides={"paths": {"experiment": str(tmp_path), "model": str(tmp_path / "m.ckpt")}})
    with pytest.raises(FileNotFoundError, match="neutron.gr.*recipes.world.experiment"):
        experiment_targets(config)
    with pytest.raises(FileNotFoundError, match="m.ckpt.*train_base --publish"):
        load_model(config)
    (tmp_path / "neutron.gr").write_text("#L r G dG\n1.0 0.1 0.01\n1.1 0.2 0.01\n")
    (tmp_path / "lattice.json").write_text(json.dumps({"a_A": 7.1, "c_A": 6.7}))
    with pytest.raises(KeyError, match="lattice.json.*'a_err_A'"):
        experiment_targets(config)


def test_pipeline_end_to_end_then_cached(world, monkeypatch):
    """The whole pipeline; λ = 0's model done first on its own (``--lambda``, as a second
    process would), which the main run then finds done; the base's transfer held by "another
    process" meanwhile, so the main run does the rest first, waits, and takes it when freed;
    then every item again from its cache."""
    import os
    import socket

    from recipes.gc3n4 import pipeline as pipeline_mod

    logs = []
    side = Pipeline(world, log=logs.append)
    with pytest.raises(ValueError, match=r"--lambda 5: not one of this config's force-matching weights \['10', '0'\]"):
        side.run_model(5.0)
    alone = side.run_model(0.0)
    assert set(alone) == {"refine", "structure_refined", "transfer"}
    assert not any("base" in line for line in logs)  # only λ = 0's items
    done = Path(alone["refine"]["dir"]) / "refine_result.json"
    stamp = done.stat().st_mtime_ns
    lock = Path(world.paths.out) / "steps" / "transfer" / "base.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # a live holder
    waits = []
    monkeypatch.setattr(pipeline_mod.time, "sleep", lambda s: (waits.append(s), lock.unlink()))
    logs.clear()
    report = Pipeline(world, log=logs.append, poll_s=0.01).run()
    assert done.stat().st_mtime_ns == stamp  # not refined twice
    assert waits == [0.01]  # waited once, when nothing else was left
    busy = next(i for i, line in enumerate(logs) if "transfer base: another process works on it" in line)
    assert busy < logs.index("[gc3n4] transfer refined: running") < logs.index("[gc3n4] transfer base: running")
    assert sum("done before" in line for line in logs) == 3  # λ = 0's refine, structure, transfer
    out = Path(world.paths.out)
    for name in ("REPORT.md", "summary.json", "G_overlay.png", "lattice.png", "training.png", "binding.png",
                 "errors_vs_size.png", "lambda_scan.png"):
        assert (out / "report" / name).stat().st_size > 0, name
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["structure"]) == {"base", "refined", "lambda_0"}
    assert set(summary["transfer"]) == {"base", "refined", "lambda_0"}
    for model in summary["structure"].values():
        assert np.isfinite(model["npt"]["G_total"]["r_w"]) and np.isfinite(model["nvt_exp"]["G_total"]["r_w"])
    cells = summary["transfer"]["refined"]["heldout"]
    assert list(cells) == ["train56", "cell112"] and cells["cell112"]["atoms"] == 112
    f = cells["cell112"]["vs_reality"]["forces_rmse_meV_per_A"]
    assert f["ci"][0] <= f["value"] <= f["ci"][1]
    crit = summary["criteria"]
    assert "R_w cut by >= 70 %" in crit and "cell112: force RMSE vs reality refined < base, intervals apart" in crit
    assert "train56: force RMSE vs reality refined < base, intervals apart" not in crit  # the training cell
    assert all(isinstance(v["holds"], bool) for v in crit.values())
    paired = crit["cell112: force RMSE vs reality refined < base, intervals apart"]["paired_difference"]
    f_base = summary["transfer"]["base"]["heldout"]["cell112"]["vs_reality"]["forces_rmse_meV_per_A"]["value"]
    assert paired["value"] == pytest.approx(f["value"] - f_base)
    assert paired["ci"][0] <= paired["value"] <= paired["ci"][1]
    ceiling = summary["transfer"]["refined"]["pair_ceiling"]["cell112"]
    assert ceiling["ceiling_forces_rmse_meV_per_A"] <= ceiling["base_forces_rmse_meV_per_A"] + 1e-6
    assert "| R_w of total G(r), NPT |" in report["headline"]
    # the refinement trained: θ moved, and the refined checkpoint is what the steps evaluated
    refined = summary["refine"]["refined"]
    assert Path(refined["model"]).exists() and refined["lambda"] == 10.0
    assert summary["refine"]["lambda_0"]["model"] == alone["refine"]["model"]
    assert (Path(refined["dir"]) / "checkpoint.pt").exists()
    assert (Path(refined["dir"]) / "tensorboard").is_dir()
    md = (out / "report" / "REPORT.md").read_text()
    assert "## Transferability" in md and "E RMSE − bias" in md
    # the λ scan's table: one row per model, the refined row's paired change as the criteria's
    scan = md.split("## λ scan")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in scan.splitlines() if line.startswith("| ")}
    assert {"base", "refined", "lambda_0", "experiment (reality)"} <= set(rows)
    assert rows["lambda_0"].startswith("| lambda_0 | 0 | ") and rows["refined"].startswith("| refined | 10 | ")
    assert f"{paired['value']:+.2f} [{paired['ci'][0]:+.2f}, {paired['ci'][1]:+.2f}]" in rows["refined"]
    # a second run takes every step from its cache and rewrites the same report
    logs.clear()
    again = Pipeline(world, log=logs.append).run()
    assert sum("done before" in line for line in logs) == 8  # the base: 2 items; refined and λ = 0: 3 each
    assert again["headline"] == report["headline"]


def test_findings_say_what_the_numbers_say():
    from recipes.gc3n4.report import findings

    name = "cell252: force RMSE vs reality refined < base, intervals apart"
    check = {"holds": False, "base": {"value": 74.0, "ci": [73.0, 75.0]}, "refined": {"value": 73.5, "ci": [72.5, 74.5]},
             "paired_difference": {"value": -0.5, "ci": [-0.7, -0.3]}}
    transfer = {"refined": {"pair_ceiling": {"cell252": {
        "frames": 15, "base_forces_rmse_meV_per_A": 74.1, "ceiling_forces_rmse_meV_per_A": 65.8,
        "base_energy_rmse_debiased_meV_per_atom": 0.38, "ceiling_energy_rmse_debiased_meV_per_atom": 0.52}}}}
    text = "\n".join(findings({name: check}, transfer))
    assert "74.0 → 73.5" in text and "intervals overlap" in text
    assert "-0.50 [-0.70, -0.30]" in text and "better on the same frames" in text
    assert "65.8 meV/Å from the base's 74.1" in text
    check["paired_difference"] = {"value": 0.1, "ci": [-0.1, 0.3]}
    assert "no change is resolved" in "\n".join(findings({name: check}, {"refined": {}}))
    assert findings({name: {**check, "holds": True}}, transfer) == []
    energy = "cell252: de-biased energy RMSE vs reality refined <= base"
    check = {"holds": False, "base": {"value": 0.38, "ci": [0.3, 0.45]}, "refined": {"value": 0.41, "ci": [0.33, 0.5]},
             "paired_difference": {"value": 0.03, "ci": [0.01, 0.05]}}
    text = "\n".join(findings({energy: check}, transfer))
    assert "0.38 → 0.41 meV/atom" in text and "+0.03 [+0.01, +0.05] meV/atom" in text and "worse" in text
    assert "gives 0.52 meV/atom here, from the base's 0.38" in text and "raises this error too" in text


def test_an_output_folder_made_from_other_inputs_is_refused(tmp_path):
    from recipes.gc3n4.pipeline import check_inputs, clear_outputs, input_fingerprint

    data = tmp_path / "exp"
    data.mkdir()
    (data / "neutron.gr").write_text("1 2 3\n")
    config = config_mod.load(quick=True, overrides={"paths": {"experiment": str(data), "out": str(tmp_path / "out")}})
    out = tmp_path / "out"
    out.mkdir()
    check_inputs(out, input_fingerprint(config))
    check_inputs(out, input_fingerprint(config))  # same inputs: fine
    (data / "neutron.gr").write_text("1 2 4\n")
    with pytest.raises(RuntimeError, match=r"other inputs \(changed: .*neutron.gr\).*--fresh"):
        check_inputs(out, input_fingerprint(config))
    other = config_mod.load(quick=True, overrides={"paths": {"experiment": str(data)}, "trainer": {"updates": 3}})
    clear_outputs(out)
    check_inputs(out, input_fingerprint(config))
    with pytest.raises(RuntimeError, match=r"changed: config"):
        check_inputs(out, input_fingerprint(other))


def test_summary_paths_are_relative_to_the_repository():
    from recipes.gc3n4.report import portable

    root = Path("/repo/root")
    obj = {"model": "/repo/root/outputs/m.pt", "other": "/elsewhere/x", "n": 3,
           "runs": [{"dir": "/repo/root/outputs/run"}, "/repo/rootless/y"]}
    assert portable(obj, root) == {"model": "outputs/m.pt", "other": "/elsewhere/x", "n": 3,
                                   "runs": [{"dir": "outputs/run"}, "/repo/rootless/y"]}
