"""The capacity probe: its force RMSE against the same model's forces through difftre's own
NequIPPotential (autograd), and a short fit that changes the model."""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.io import read, write

from recipes.world import capacity

MODEL = "data/world/base_model/base.ckpt"


def _folder(tmp_path):
    frames = read("data/world/dataset/val.extxyz.gz", index=":12")
    hot = [a for a in frames if a.info.get("temperature_target_K") == 1000.0]
    assert len(hot) >= 3
    write(tmp_path / "train.extxyz.gz", hot[:2])
    write(tmp_path / "val.extxyz.gz", hot[2:4])
    return hot[2:4]


def test_probe_rmse_matches_difftre_forces_and_a_fit_moves_it(tmp_path):
    from difftre_torch.potentials import evaluate
    from difftre_torch.potentials.nequip_files import load_nequip

    val = _folder(tmp_path)
    potential = load_nequip(MODEL)
    sq = n = 0.0
    for atoms in val:
        ev = evaluate(potential, torch.tensor(atoms.positions)[None], torch.tensor(atoms.cell.array)[None],
                      torch.tensor(atoms.numbers))
        diff = ev.forces[0].double().numpy() - atoms.get_forces()
        sq, n = sq + float(np.square(diff).sum()), n + diff.size
    independent = 1000 * math.sqrt(sq / n)

    rows = capacity.fit(MODEL, str(tmp_path), 1000.0, n_frames=2, epochs=1, lr=1e-3)
    assert [r[0] for r in rows] == [0, 1]
    assert abs(rows[0][2] - independent) < 1e-2 * independent  # float32 model, float64 labels
    assert rows[1][1] != rows[0][1] and all(math.isfinite(x) for r in rows for x in r[1:])
