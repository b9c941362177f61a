"""Do independent replicas agree within their block errors? The statistics behind the published
σ of the stand-in experiment (:mod:`recipes.world.experiment`): block-size analysis, pairwise
χ²/bin of replicas, the Birge ratio that scales σ to the replica scatter, and checks of that
noise model on replicas it was not fitted to (held out, leave-one-out).

``functions`` maps a function name to (x [n], per-frame values [F, n]) of all replicas
concatenated; ``slices`` says which frames belong to which replica (in ``names`` order);
``masks`` restrict a function's χ² to some bins; ``dof`` is the block degrees of freedom per
replica (its σ estimate), so consistent replicas give χ²/bin ≈ ν/(ν − 1).
"""

from __future__ import annotations

import math

import torch

from difftre_torch.statistics import block_means, chi2_per_bin, mean_sem


def block_analysis(values: torch.Tensor, block_counts=(2, 5, 10, 25, 50)) -> dict[int, float]:
    """{n_blocks: median over bins of the block standard error} of per-frame values [F, n]
    (bins with σ > 0). σ independent of n_blocks: the blocks are longer than the correlation
    time; σ falling as n_blocks grows: the blocks are too short and σ is underestimated."""
    out = {}
    for n in block_counts:
        if 2 <= n <= values.shape[0] // 2:
            _, sem = mean_sem(block_means(values, n))
            positive = sem[sem > 0]
            out[n] = float(positive.median()) if positive.numel() else 0.0
    return out


def noise_check(names: list[str], functions: dict, slices: list[slice], dof: int,
                masks: dict[str, torch.Tensor]) -> dict | None:
    """χ²/bin of every pair of replicas for every function, each with its own block σ, over the
    bins of ``masks[name]`` where given; the headline is the neutron g(r) (else the first function) of the first two.
    None with fewer than two replicas."""
    if len(names) < 2:
        return None
    stats = {name: [mean_sem(values[s]) for s in slices] for name, (_, values) in functions.items()}
    pairs = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            pairs[f"{names[i]} vs {names[j]}"] = {
                name: dict(zip(("chi2_per_bin", "n_bins"), chi2_per_bin(*st[i], *st[j], masks.get(name))))
                for name, st in stats.items()}
    headline = "neutron_rdf" if "neutron_rdf" in functions else next(iter(functions))
    first = next(iter(pairs.values()))[headline]
    return {
        "function": headline,
        "replicas": names[:2],
        **first,
        "expected_chi2_per_bin_if_consistent": dof / (dof - 1) if dof > 1 else None,
        "block_dof_per_replica": dof,
        "pairs": pairs,
    }


def birge_ratios(noise: dict | None) -> dict[str, float]:
    """σ scale per function, sqrt(max(1, χ̄²/E[χ²])): χ̄² the mean over replica pairs of the
    noise check's χ²/bin, E[χ²] its expectation for consistent replicas. {} without a check."""
    if noise is None or not noise["expected_chi2_per_bin_if_consistent"]:
        return {}
    expected = noise["expected_chi2_per_bin_if_consistent"]
    out = {}
    for name in next(iter(noise["pairs"].values())):
        values = [pair[name]["chi2_per_bin"] for pair in noise["pairs"].values()
                  if math.isfinite(pair[name]["chi2_per_bin"])]
        if values:
            out[name] = math.sqrt(max(1.0, sum(values) / len(values) / expected))
    return out


def held_out_check(names: list[str], functions: dict, slices: list[slice], frames: torch.Tensor,
                   dof: int, masks: dict[str, torch.Tensor], test: list[str]) -> dict:
    """Test the published noise model on replicas it never saw.

    The replicas not in ``test`` ("rest", at least two) are published as :func:`publish` would:
    x̄ and block σ from their pooled blocks (weights ``frames`` [M]), σ scale s from the Birge ratio
    of their own pairs only. Each test replica k, with its own block σ_k, then gives
    χ²_k/bin = mean over bins of (x_k − x̄)² / (s² (σ_k² + σ̄²)) (``masks`` as in the noise check).
    If block σ × Birge ratio describes the replica scatter, χ²_k/bin ≈ the noise check's
    expectation ν/(ν − 1) (σ's from ν = ``dof`` block dof); it stays above that when the rest's
    scale does not cover a new replica. Returns {"rest", "expected…", "replicas": {k: {function:
    {chi2_per_bin, n_bins, sigma_scale}}}}."""
    index = {name: i for i, name in enumerate(names)}
    missing = [t for t in test if t not in index]
    if missing:
        raise ValueError(f"held-out replicas {missing} are not among the replicas {names}")
    rest = [i for i, name in enumerate(names) if name not in test]
    if len(rest) < 2:
        raise ValueError(f"the held-out check needs two replicas besides {test}; have {len(rest)}")
    starts = [0]
    for i in rest:
        starts.append(starts[-1] + slices[i].stop - slices[i].start)
    rest_slices = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]
    rest_functions = {name: (x, torch.cat([v[slices[i]] for i in rest])) for name, (x, v) in functions.items()}
    rest_frames = torch.cat([frames[slices[i]] for i in rest])
    scales = birge_ratios(noise_check([names[i] for i in rest], rest_functions, rest_slices, dof, masks))
    rest_stats = {name: mean_sem(values, rest_frames) for name, (_, values) in rest_functions.items()}
    replicas = {}
    for name_k in test:
        own = slices[index[name_k]]
        entry = {}
        for name, (_, values) in functions.items():
            mean, sem = rest_stats[name]
            mean_k, sem_k = mean_sem(values[own])
            s = scales.get(name, 1.0)
            chi2, n = chi2_per_bin(mean_k, s * sem_k, mean, s * sem, masks.get(name))
            entry[name] = {"chi2_per_bin": chi2, "n_bins": n, "sigma_scale": s}
        replicas[name_k] = entry
    return {"rest": [names[i] for i in rest],
            "expected_chi2_per_bin_if_consistent": dof / (dof - 1) if dof > 1 else None,
            "replicas": replicas}


def leave_one_out(names: list[str], functions: dict, slices: list[slice], frames: torch.Tensor,
                  dof: int, masks: dict[str, torch.Tensor]) -> dict | None:
    """:func:`held_out_check` with each replica held out in turn, and per function the mean of
    its χ²/bin over the held-out replicas. None with fewer than three replicas."""
    if len(names) < 3:
        return None
    held = {name: held_out_check(names, functions, slices, frames, dof, masks, [name])["replicas"][name]
            for name in names}
    mean = {f: sum(h[f]["chi2_per_bin"] for h in held.values()) / len(held) for f in functions}
    return {"expected_chi2_per_bin_if_consistent": dof / (dof - 1) if dof > 1 else None,
            "mean_chi2_per_bin": mean, "replicas": held,
            "note": "each replica against the other replicas' mean and sigma x their own Birge ratio"}
