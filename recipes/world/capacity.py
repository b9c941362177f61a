"""Is the base model bound by its size? Two measurements on the world's training set.

``fit``: continue training a published NequIP checkpoint on ``--frames`` training frames of one
temperature only (forces only, one frame per Adam step, the rate cosine-decayed to 1e-3 of
``--lr``) and print the force RMSE (meV/Å) on those frames and on up to 16 validation frames of
the same temperature, every 5 epochs. A model with room to spare drives the error on a few dozen
frames far below its error on the whole set; one that stalls there is bound by its form.

``cost``: the seconds of one energy + forces call (as in MD) and of one training step (forces,
backward, Adam) on a 56-atom frame for NequIP models of several sizes (untrained weights, the
base model's other settings), so that a larger model's price is known before training it.

    python -m recipes.world.capacity fit --model data/world/base_model/base.ckpt --temperature 300
    python -m recipes.world.capacity cost
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

SIZES = ((1, 32, 32), (2, 32, 32), (2, 64, 64))
"""(l_max, num_features, radial_mlp_width) that ``cost`` compares; the first is the base model's."""


def _graphs(frames, r_max: float = 6.0) -> list[dict]:
    from nequip.data import from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    nl = NeighborListTransform(r_max=r_max)
    types = ChemicalSpeciesToAtomTypeMapper(model_type_names=["C", "N"],
                                            chemical_species_to_atom_type_map={"C": "C", "N": "N"})
    return [nl(types(from_ase(a))) for a in frames]


def force_rmse_meV(model, graphs: list[dict], batch: int = 4) -> float:
    """Force RMSE of ``model`` on ``graphs`` (labelled nequip data dicts), meV/Å."""
    from nequip.data.AtomicDataDict import batched_from_list

    sq = n = 0.0
    for k in range(0, len(graphs), batch):
        data = batched_from_list(graphs[k:k + batch])
        diff = (model(dict(data))["forces"] - data["forces"]).detach()
        sq, n = sq + float(diff.pow(2).sum()), n + diff.numel()
    return 1000.0 * math.sqrt(sq / n)


def fit(model_path: str, data: str, temperature: float, n_frames: int, epochs: int, lr: float,
        seed: int = 1) -> list[tuple[int, float, float]]:
    """(epoch, train RMSE, validation RMSE) rows, meV/Å, from epoch 0 (the checkpoint as given)."""
    from ase.io import read
    from nequip.data.AtomicDataDict import batched_from_list
    from nequip.model.saved_models.load_utils import load_saved_model

    from difftre_torch.potentials.nequip_files import _nequip_state

    def at_temperature(split):
        return [a for a in read(f"{data}/{split}.extxyz.gz", index=":")
                if a.info.get("temperature_target_K") == temperature]

    train, val = at_temperature("train"), at_temperature("val")[:16]
    if len(train) < n_frames or not val:
        raise SystemExit(f"{data}: {len(train)} training and {len(val)} validation frames at "
                         f"{temperature} K; need {n_frames} and at least 1")
    rng = np.random.default_rng(seed)
    train = [train[k] for k in rng.choice(len(train), n_frames, replace=False)]
    train_graphs, val_graphs = _graphs(train), _graphs(val)
    with _nequip_state():
        model = load_saved_model(model_path, compile_mode="eager")
    model.train()
    rows = [(0, force_rmse_meV(model, train_graphs), force_rmse_meV(model, val_graphs))]
    print(f"epoch 0: train {rows[0][1]:.1f}, validation {rows[0][2]:.1f} meV/Å", flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * n_frames, lr * 1e-3)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for k in rng.permutation(n_frames):
            graph = batched_from_list([train_graphs[k]])
            loss = (model(dict(graph))["forces"] - graph["forces"]).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
        if epoch % 5 == 0 or epoch == epochs:
            rows.append((epoch, force_rmse_meV(model, train_graphs), force_rmse_meV(model, val_graphs)))
            print(f"epoch {epoch}: train {rows[-1][1]:.1f}, validation {rows[-1][2]:.1f} meV/Å "
                  f"(lr {schedule.get_last_lr()[0]:.1e}, {time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def cost(data: str, repeats: int = 8) -> list[dict]:
    """Per size of :data:`SIZES`: parameters, ms per energy + forces call and per training step."""
    from ase.io import read
    from nequip.data.AtomicDataDict import batched_from_list
    from nequip.model import NequIPGNNModel

    from difftre_torch.potentials.nequip_files import _nequip_state

    graphs = _graphs(read(f"{data}/val.extxyz.gz", index=f":{repeats}"))
    rows = []
    for l_max, features, width in SIZES:
        with _nequip_state():
            model = NequIPGNNModel(
                seed=4, model_dtype="float32", type_names=["C", "N"], r_max=6.0, num_bessels=8,
                bessel_trainable=False, polynomial_cutoff_p=6, l_max=l_max, parity=False, num_layers=3,
                num_features=features, radial_mlp_depth=2, radial_mlp_width=width, avg_num_neighbors=78.0,
                per_type_energy_scales={"C": 1.0, "N": 1.0}, per_type_energy_shifts={"C": -8.5, "N": -8.5},
                per_type_energy_scales_trainable=False, per_type_energy_shifts_trainable=False)
        optimizer = torch.optim.Adam(model.parameters(), 1e-4)
        model(dict(batched_from_list(graphs[:1])))  # first call: lazy set-up
        start = time.perf_counter()
        for graph in graphs:
            model(dict(batched_from_list([graph])))["forces"].detach()
        call_ms = 1000 * (time.perf_counter() - start) / len(graphs)
        start = time.perf_counter()
        for graph in graphs:
            model(dict(batched_from_list([graph])))["forces"].pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        step_ms = 1000 * (time.perf_counter() - start) / len(graphs)
        rows.append({"l_max": l_max, "features": features, "parameters": sum(p.numel() for p in model.parameters()),
                     "call_ms": call_ms, "step_ms": step_ms})
        print(f"l_max {l_max}, {features} features: {rows[-1]['parameters']} parameters, "
              f"{call_ms:.0f} ms per energy + forces call, {step_ms:.0f} ms per training step "
              f"({len(graphs[0]['pos'])} atoms)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.world.capacity", description=__doc__.split("\n\n")[0],
        epilog="example: python -m recipes.world.capacity fit --model data/world/base_model/base.ckpt "
               "--temperature 300 --frames 40 --epochs 60",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["fit", "cost"])
    parser.add_argument("--model", default="data/world/base_model/base.ckpt", help="fit: the checkpoint")
    parser.add_argument("--data", default="data/world/dataset", help="train/val .extxyz.gz folder")
    parser.add_argument("--temperature", type=float, default=300.0, help="fit: the frames' target K")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "fit":
        fit(args.model, args.data, args.temperature, args.frames, args.epochs, args.lr)
    else:
        cost(args.data)


if __name__ == "__main__":
    main()
