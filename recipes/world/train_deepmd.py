"""Train the world's DeePMD-kit base model (se_e2_a) with ``dp --pt train``, resumably; freeze it.

``python -m recipes.world.train_deepmd [--data data/world/dataset] [--run runs/deepmd_model]
[--steps 30000] [--threads 2] [--quick] [--publish] [--publish-to data/world/deepmd_model]``

What a DeePMD-kit user does, on the stand-in world's DFT-like (teacher) frames:

1. The train/val/test splits (extxyz) become ``deepmd/npy`` system folders with dpdata (one
   folder per formula; ``type_map`` [C, N]; dpdata turns the ASE stress into DeePMD's virial,
   W = −V σ).
2. ``dp --pt train input.json`` in ``<run>`` (the input written from :func:`input_json`: se_e2_a,
   r_c 6 Å, float64, energy + force + virial loss). A run with a ``checkpoint`` file resumes
   with ``--restart`` from the checkpoint it names; a run that reached its step count is not
   retrained. The input is recorded and a resume with another input is refused.
3. ``dp --pt freeze`` → ``model.pth`` (TorchScript) and ``dp --pt test`` on the test split
   (energy per atom, forces, virial RMSE), recorded with the wall time in ``metrics.json``.

``--publish`` copies ``model.pth``, ``input.json`` and ``metrics.json`` to ``--publish-to`` (the
checkpoints, 4.7 MB each with their optimizer state, stay in ``<run>``). ``--quick``: 20 steps of a tiny net, for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from difftre_torch.checkpoint import atomic_write_json

TYPE_MAP = ["C", "N"]


def input_json(train: list[str], val: list[str], steps: int, quick: bool = False) -> dict:
    """DeePMD-kit's training input: se_e2_a (r_c 6 Å, smooth from 0.5 Å), float64 nets."""
    descriptor = {"type": "se_e2_a", "rcut": 6.0, "rcut_smth": 0.5, "sel": [60, 70],
                  "neuron": [4, 8] if quick else [16, 32, 64], "axis_neuron": 4 if quick else 8,
                  "resnet_dt": False, "precision": "float64", "seed": 1}
    fitting = {"neuron": [8] if quick else [120, 120, 120], "resnet_dt": True, "precision": "float64",
               "seed": 1}
    return {
        "model": {"type_map": TYPE_MAP, "descriptor": descriptor, "fitting_net": fitting},
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 3e-6,
                          "decay_steps": max(1, min(1000, steps // 20))},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000,
                 "limit_pref_f": 1, "start_pref_v": 0.02, "limit_pref_v": 1},
        "training": {
            "training_data": {"systems": train, "batch_size": "auto"},
            "validation_data": {"systems": val, "batch_size": 1, "numb_btch": 4},
            "numb_steps": steps, "seed": 1, "disp_file": "lcurve.out",
            "disp_freq": max(1, min(500, steps // 10)), "save_freq": max(1, min(2000, steps // 5)),
        },
    }


def to_deepmd_npy(extxyz: Path, out: Path) -> list[str]:
    """The frames of ``extxyz`` as deepmd/npy folders under ``out`` (one per formula)."""
    from difftre_torch.frames import read_frames_file, write_deepmd_npy

    return [str(p) for p in write_deepmd_npy(read_frames_file(extxyz), out, TYPE_MAP)]


def _dp() -> str:
    from difftre_torch.environment import console_script

    return console_script("dp", "install deepmd-kit (make setup installs it)")


def _run(args: list[str], cwd: Path, log: Path, env: dict) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(args)}\n")
        f.flush()
        rc = subprocess.call(args, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit code {rc}; see {log}")


def _last_step(run_dir: Path) -> int:
    """The step of the checkpoint named in ``<run>/checkpoint`` (0 if none)."""
    pointer = run_dir / "checkpoint"
    if not pointer.exists():
        return 0
    match = re.search(r"model\.ckpt-(\d+)\.pt", pointer.read_text())
    return int(match.group(1)) if match else 0


def train(data_dir: Path, run_dir: Path, steps: int, threads: int, quick: bool) -> dict:
    """Convert the data (once), then run or resume ``dp --pt train``; returns the run record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DP_INTRA_OP_PARALLELISM_THREADS": str(threads),
           "DP_INTER_OP_PARALLELISM_THREADS": "1"}
    split = {}
    for name in ("train", "val", "test"):
        folder = run_dir / "data" / name
        if not folder.exists():
            tmp = folder.with_name(name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            to_deepmd_npy(data_dir / f"{name}.extxyz.gz", tmp)
            tmp.replace(folder)
        split[name] = sorted(str(p.relative_to(run_dir)) for p in folder.iterdir() if p.is_dir())
    config = input_json(split["train"], split["val"], steps, quick)
    record_path = run_dir / "train_deepmd.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"history": []}
    if record.get("input") not in (None, config):
        raise RuntimeError(f"{run_dir} holds a run made with another input; use another --run or delete it")
    record["input"] = config
    (run_dir / "input.json").write_text(json.dumps(config, indent=1))
    done = _last_step(run_dir)
    if done < steps:
        args = [_dp(), "--pt", "train", "input.json"]
        if done:
            args += ["--restart", f"model.ckpt-{done}.pt"]
        t0 = time.perf_counter()
        print(f"[train_deepmd] {' '.join(args[1:])} in {run_dir} (from step {done})", flush=True)
        _run(args, run_dir, run_dir / "train.log", env)
        record["history"].append({"from_step": done, "wall_s": round(time.perf_counter() - t0, 1)})
    record["steps"] = _last_step(run_dir)
    atomic_write_json(record_path, record)
    _run([_dp(), "--pt", "freeze", "-c", ".", "-o", "model.pth"], run_dir, run_dir / "freeze.log", env)
    test_log = run_dir / "test.log"
    test_log.unlink(missing_ok=True)
    for system in split["test"]:
        _run([_dp(), "--pt", "test", "-m", "model.pth", "-s", system], run_dir, test_log, env)
    record["test"] = parse_test_log(test_log.read_text())
    record["wall_s"] = round(sum(h["wall_s"] for h in record["history"]), 1)
    atomic_write_json(record_path, record)
    return record


def parse_test_log(text: str) -> list[dict]:
    """Per test system: frames and the RMSEs ``dp test`` prints (energy/atom eV, force eV/Å,
    virial/atom eV)."""
    out, current = [], None
    for line in text.splitlines():
        if "# testing system" in line:
            current = {"system": line.split(":")[-1].strip()}
            out.append(current)
        elif current is not None:
            for key, pattern in (("frames", r"number of test data\s*:\s*(\d+)"),
                                 ("energy_rmse_per_atom_eV", r"Energy RMSE/Natoms\s*:\s*([0-9.eE+-]+)"),
                                 ("force_rmse_eV_per_A", r"Force\s+RMSE\s*:\s*([0-9.eE+-]+)"),
                                 ("virial_rmse_per_atom_eV", r"Virial RMSE/Natoms\s*:\s*([0-9.eE+-]+)")):
                match = re.search(pattern, line)
                if match:
                    current[key] = float(match.group(1)) if key != "frames" else int(match.group(1))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/world/dataset", help="output of recipes.world.dataset")
    parser.add_argument("--run", default="runs/deepmd_model", help="dp train's working directory")
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny net, 20 steps (tests)")
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--publish-to", default="data/world/deepmd_model")
    args = parser.parse_args(argv)
    steps = 20 if args.quick else args.steps
    run_dir = Path(args.run).resolve()
    record = train(Path(args.data).resolve(), run_dir, steps, args.threads, args.quick)
    record["dataset"] = str(Path(args.data))
    record["command"] = "python -m recipes.world.train_deepmd " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(run_dir / "metrics.json", record)
    print(json.dumps(record["test"], indent=1), flush=True)
    if args.publish:
        target = Path(args.publish_to)
        target.mkdir(parents=True, exist_ok=True)
        for src, name in ((run_dir / "model.pth", "model.pth"), (run_dir / "input.json", "input.json"),
                          (run_dir / "metrics.json", "metrics.json")):
            shutil.copyfile(src, target / (name + ".tmp"))
            (target / (name + ".tmp")).replace(target / name)
        print(f"[train_deepmd] published {run_dir} -> {target}", flush=True)
    return record


if __name__ == "__main__":
    main()
