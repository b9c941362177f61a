"""Publish the stand-in world's experiment: what diffraction and total scattering would report
for reality's 300 K, 1 bar NPT replicas of the 112-atom g-C3N4 cell.

``python -m recipes.world.experiment [--runs runs/world] [--out data/world/experiment] [--quick] [--held-out NAME,...|new]``

Input: the finished jobs of the ``experiment`` campaign of :mod:`recipes.world.trajectories`,
``<runs>/npt300_reality_cell112_s*/{frames.extxyz,done.json}`` (positions and cells, no labels);
``npt300_teacher_cell112_s*`` only for the teacher-vs-reality comparison.

Conventions (:mod:`difftre_torch.observables.scattering`): cell vectors are rows; g(r) → 1 at
large r; G(r) = 4πρr(g − 1) in Å⁻²; S(Q) → 1 at large Q, Q = 4π sinθ/λ in Å⁻¹; Faber–Ziman
totals with neutron weights b_c, x-ray weights Z in real space and f(Q) (Waasmaier–Kirfel) for
the x-ray S(Q).

Estimators
----------
A diffractometer measures the scattered intensity per atom averaged over the sample's states,
so S(Q) − 1 = (1/Q) ∫ ⟨G_f(r)⟩ sin(Qr) dr with each frame's own density ρ_f = N/V_f in
G_f = 4πρ_f r (g_f − 1): the measured G is the frame mean ⟨G_f⟩ (what the ``"G"`` observable of
:mod:`difftre_torch.observables.registry` averages), and the reported g is derived from it with
the mean density, g = 1 + ⟨G_f⟩/(4π⟨ρ⟩r), as an experimentalist does. This g differs from the
frame mean ⟨g_f⟩ (the registry's ``"rdf"``) by cov(ρ_f, g_f)/⟨ρ⟩, which NPT volume fluctuations
make comparable to σ at large r (the summary's ``rdf_vs_frame_mean_g`` says how much): a
refinement should target G, or accept that offset. Every published function is linear in the
block means of the partial G_ab, so each replica's frames are cut into ``n_blocks`` contiguous
time blocks (leading frames that do not fill a block are dropped), a function is evaluated on
each block mean, the published value is the frame-weighted mean over the blocks of all replicas
and its σ the standard error from their scatter, σ² = M/(M − 1) · Σ_m w_m² (x_m − x̄)²
(w_m ∝ frames in block m; equal blocks give s²/M). Default: 10 blocks of 50 frames = 0.5 ps per
replica, 30 blocks in all; the summary's ``block_analysis`` shows σ against the block count for
replica 1.

Lattice parameters per frame and their errors: :mod:`recipes.world.replicas`. Block
statistics: :mod:`difftre_torch.statistics`. The noise check, Birge ratio, held-out and
leave-one-out checks below: :mod:`recipes.world.replica_noise`.

Replica scatter beyond σ: block σ misses whatever is slower than a block. In this world the
slowest mode is the layers' sliding (the stacking registry, hence c, differs between replicas
by far more than its block error while a and the spacing agree), so two replicas' g(r) can
differ by more than their block σ. When the noise check's χ²/bin exceeds its expectation for
consistent replicas, every σ of that function is multiplied by the Birge ratio
sqrt(χ̄²/E[χ²]) (``inflate_sigma``; the summary's ``sigma_scale``), so a fit against the
published data is not over-confident. The noise check itself always uses the raw block σ.

Held-out check (``held_out_check`` in the summary): the Birge ratio is fitted to the replicas
it scales, so it is tested on replicas it never saw. Each replica in turn is compared with the
others' pooled mean, with σ² = s²(σ_k² + σ̄²) and s the Birge ratio of the others' pairs only
(:func:`~recipes.world.replica_noise.held_out_check`); χ²/bin near the noise check's expectation says the published σ covers a
new replica, well above it says the scatter is still underestimated.

σ floor: where a function does not fluctuate (below the closest approach at a fixed cell; in NPT
only the density's error remains there) the block σ is 0 or tiny; an experiment never reports a
zero error and a χ² loss would weight the bin without bound, so published
σ ≥ ``sigma_floor_fraction`` × the median positive σ of that function (raw σ in the χ² checks).

Noise check (the issue's "two independent replicas agree within σ"): for each pair of replicas,
χ²/bin = mean over bins of (x₁ − x₂)² / (σ₁² + σ₂²), each σ from that replica's own blocks,
over bins where σ₁² + σ₂² > 0 (for g and G only where a pair was ever counted: below the closest
approach they carry only the density's error, which would count once per bin). With ν = n_blocks − 1 degrees of freedom per σ its expectation
for consistent replicas is ν/(ν − 1) (E[1/χ²₂ᵥ]), 1.125 for 10 blocks; reported beside it.

Range: g is histogrammed in 0.02 Å bins to r_max + r_pad = 25 Å and published to r_max = 20 Å;
the 5 Å beyond feed the Q-space transforms (as the registry's G observable does: target grid
+ 5 Å), and S(Q) is transformed from the whole 25 Å with a real-space Lorch window: a crystal's
g(r) does not decay, so without it the truncation at R leaves ripples of order 1 in S(Q); with it
the Bragg peaks are broadened by ~2π/R and only dips of a few tenths below 0 remain beside the
strongest peaks (≈ −0.3 next to (002) at 1.6 Å⁻¹ for rattled cell112 frames). The
periodic g(r) past half the cell's width is the crystal's, except that each atom also meets its
own periodic images at the lattice vectors (c ≈ 6.7 Å, and 14.2 Å in-plane for cell112), which
move rigidly with it: those pairs are broadened only by the cell's fluctuations. A refinement
that samples the same cell computes the same quantity, so this is information the cell holds,
not an error, but it is not what a macroscopic crystal would give there.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from difftre_torch.checkpoint import atomic_save_npz, atomic_write_json, atomic_write_text
from difftre_torch.experiment.readers import ExperimentalData, write_gr
from difftre_torch.observables import (
    G_to_g,
    G_to_S,
    S_to_G,
    faber_ziman_weights,
    g_to_G,
    lattice_lengths,
    number_density,
    partial_rdfs,
)
from difftre_torch.statistics import block_means, chi2_per_bin, mean_sem
from recipes.world.replica_noise import (
    birge_ratios,
    block_analysis,
    held_out_check,
    leave_one_out,
    noise_check,
)
from recipes.world.replicas import (
    Replica,
    find_jobs,
    formula_unit,
    lattice_per_frame,
    lattice_statistics,
    load_replica,
)

REALITY_JOBS = "npt300_reality_cell112_s*"
TEACHER_JOBS = "npt300_teacher_cell112_s*"
RADIATIONS = ("neutron", "xray")
GENERATOR = "python -m recipes.world.experiment"


@dataclass
class ExperimentConfig:
    """Grids and statistics of the published experiment (Å, Å⁻¹)."""

    r_max_A: float = 20.0  # published r range: bin centres below r_max_A
    r_pad_A: float = 5.0  # g(r) is computed to r_max_A + r_pad_A for the Q-space transforms
    bin_width_A: float = 0.02  # histogram bin Δr
    q_min: float = 0.5  # instrument Q range of the G(r) files and range of S(Q), Å⁻¹
    q_max: float = 25.0
    q_step: float = 0.02  # published S(Q) grid spacing, Å⁻¹
    sq_lorch_r: bool = True  # real-space Lorch window in g → S(Q) (no termination ripples)
    n_blocks: int = 10  # contiguous time blocks per replica
    layers_per_unit: int = 2  # AB stacking: two layers per unit c
    sigma_floor_fraction: float = 0.1
    inflate_sigma: bool = True  # scale σ by the replicas' Birge ratio where they disagree (docstring)
    max_frames: int | None = None  # thin each replica evenly to at most this many frames

    @classmethod
    def quick(cls) -> "ExperimentConfig":
        """Small grids and few frames, for smoke tests."""
        return cls(r_max_A=8.0, q_step=0.05, n_blocks=4, max_frames=40)


@dataclass
class ReplicaBlocks:
    """Block means of one replica's per-frame partials.

    r: [n_r] bin centres, Å; pairs: species pairs (Z_a ≤ Z_b) in the order of axis 1;
    g: [M, P, n_r] frame means of the partial g_ab; G: [M, P, n_r] frame means of the partial
    G_ab = 4πρ_f r (g_ab − 1), Å⁻²; rho: [M] mean number density, Å⁻³; frames: [M] frames per
    block; lattice: {name: [F] per-frame values} (see :func:`lattice_per_frame`).
    """

    name: str
    r: torch.Tensor
    pairs: list[tuple[int, int]]
    g: torch.Tensor
    G: torch.Tensor
    rho: torch.Tensor
    frames: torch.Tensor
    lattice: dict[str, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- statistics


def floored_sigma(sigma: torch.Tensor, fraction: float) -> torch.Tensor:
    """σ with a floor of ``fraction`` × the median positive σ (see the module docstring)."""
    positive = sigma[sigma > 0]
    if positive.numel() == 0:
        raise ValueError("every σ is zero: the blocks do not fluctuate (identical frames?)")
    return sigma.clamp_min(fraction * float(positive.median()))


# ----------------------------------------------------------------------------- scattering


def frame_partials(positions: torch.Tensor, cells: torch.Tensor, numbers, r_max_A: float,
                   bin_width_A: float, *, chunk: int = 32, progress: bool = False):
    """Per-frame partials on bins of ``bin_width_A`` from 0 to ``r_max_A``.

    Returns (r [n_r] Å, pairs, g [F, P, n_r], G [F, P, n_r] Å⁻², ρ [F] Å⁻³) with
    G_ab = 4πρ_f r (g_ab − 1) at each frame's own density; hard histograms of
    :func:`~difftre_torch.observables.partial_rdfs` (periodic images included).
    """
    n_bins = int(round(r_max_A / bin_width_A))
    starts = range(0, positions.shape[0], chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, leave=False, unit="chunk", desc=f"g(r) to {r_max_A:g} Å")
    g_chunks, r, pairs = [], None, None
    for s in starts:
        r, partials = partial_rdfs(positions[s:s + chunk], cells[s:s + chunk], numbers,
                                   n_bins * bin_width_A, n_bins)
        pairs = sorted(partials)
        g_chunks.append(torch.stack([partials[p] for p in pairs], dim=1))
    g = torch.cat(g_chunks)
    rho = number_density(len(numbers), cells)
    G = g_to_G(r, g, rho[:, None])
    return r, pairs, g, G, rho


def instrument_G_from_G(r: torch.Tensor, G: torch.Tensor, q_min: float, q_max: float, *,
                        lorch: bool = False, q_step: float | None = None) -> torch.Tensor:
    """G(r) as an instrument measuring q_min ≤ Q ≤ q_max reports it, from the ideal G, [..., n_r].

    The construction of :func:`~difftre_torch.observables.instrument_G` (S on a uniform grid of
    spacing ≤ π/(10 R), R = r[-1], then the sine transform over [q_min, q_max] with optional
    Lorch window), starting from G = 4πρr(g − 1) so it is linear and applies to block means of
    per-frame G at varying ρ.
    """
    step = math.pi / (10.0 * float(r[-1])) if q_step is None else float(q_step)
    n_q = max(2, math.ceil((q_max - q_min) / step) + 1)
    q = torch.linspace(q_min, q_max, n_q, dtype=G.dtype)
    return S_to_G(q, G_to_S(r, G, q), r, q_min=q_min, q_max=q_max, lorch=lorch)


def published_grids(config: ExperimentConfig, r: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(number of published r bins, S(Q) grid q_min..q_max in steps of q_step)."""
    n_r = int((r < config.r_max_A).sum())
    n_q = int(round((config.q_max - config.q_min) / config.q_step)) + 1
    return n_r, torch.linspace(config.q_min, config.q_max, n_q, dtype=r.dtype)


def total_functions(r: torch.Tensor, pairs, G: torch.Tensor, numbers, rho_mean: float,
                    config: ExperimentConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The published totals of block-mean partials, {"<radiation>_<function>": (x, values)}.

    G: [M, P, n_r] block means of the partial G_ab (pairs order) on the bin centres r up to
    r_max + r_pad; rho_mean: the mean number density ⟨ρ⟩, Å⁻³.
    Functions (values [M, n]): ``G_ideal`` ⟨4πρ_f r (g_f − 1)⟩, ``rdf`` g = 1 + G/(4π⟨ρ⟩r),
    ``G_instrument`` and ``G_instrument_lorch`` (through [q_min, q_max]), all on r < r_max;
    ``S`` on the S(Q) grid (x-ray with f(Q) weights, both with the real-space Lorch window if
    ``sq_lorch_r``). Real-space x-ray totals use weights Z.
    """
    n_r, q = published_grids(config, r)
    out = {}
    for radiation in RADIATIONS:
        weights = faber_ziman_weights(numbers, radiation)
        W = torch.stack([weights[p] for p in pairs]).to(G)  # [P]
        G_tot = torch.einsum("p,mpr->mr", W, G)
        g_tot = G_to_g(r, G_tot, rho_mean)
        if radiation == "xray":
            weights_q = faber_ziman_weights(numbers, "xray", q=q)
            Wq = torch.stack([weights_q[p] for p in pairs])  # [P, n_q]
            S_pairs = G_to_S(r, G, q, lorch=config.sq_lorch_r)  # [M, P, n_q]
            S = torch.einsum("pq,mpq->mq", Wq.to(G), S_pairs)
        else:
            S = G_to_S(r, G_tot, q, lorch=config.sq_lorch_r)
        out[f"{radiation}_rdf"] = (r[:n_r], g_tot[:, :n_r])
        out[f"{radiation}_G_ideal"] = (r[:n_r], G_tot[:, :n_r])
        for suffix, lorch in (("", False), ("_lorch", True)):
            G_inst = instrument_G_from_G(r, G_tot, config.q_min, config.q_max, lorch=lorch)
            out[f"{radiation}_G_instrument{suffix}"] = (r[:n_r], G_inst[:, :n_r])
        out[f"{radiation}_S"] = (q, S)
    return out


def replica_blocks(replica: Replica, config: ExperimentConfig, r_max_A: float, *,
                   progress: bool = False) -> tuple[ReplicaBlocks, torch.Tensor]:
    """Block means of one replica's partials and its per-frame lattice; also the per-frame
    neutron total g [F, n_r] (for the block-size analysis)."""
    r, pairs, g, G, rho = frame_partials(replica.positions, replica.cells, replica.numbers, r_max_A,
                                       config.bin_width_A, progress=progress)
    n_blocks = min(config.n_blocks, g.shape[0])
    frames = torch.full((n_blocks,), float(g.shape[0] // n_blocks))
    weights = faber_ziman_weights(replica.numbers, "neutron")
    g_neutron = torch.einsum("p,fpr->fr", torch.stack([weights[p] for p in pairs]).to(g), g)
    lattice = lattice_per_frame(replica.cells, replica.repeats, config.layers_per_unit, replica.numbers)
    blocks = ReplicaBlocks(replica.name, r, pairs, block_means(g, n_blocks), block_means(G, n_blocks),
                           block_means(rho, n_blocks), frames, lattice)
    return blocks, g_neutron


def pooled(replicas: list[ReplicaBlocks]) -> tuple[ReplicaBlocks, list[slice]]:
    """The blocks of all replicas concatenated, and each replica's slice of them."""
    slices, start = [], 0
    for rep in replicas:
        slices.append(slice(start, start + len(rep.frames)))
        start += len(rep.frames)
    if any(rep.pairs != replicas[0].pairs or not torch.equal(rep.r, replicas[0].r) for rep in replicas):
        raise ValueError("replicas differ in species or r grid; cannot pool them")
    first = replicas[0]
    cat = {k: torch.cat([getattr(rep, k) for rep in replicas]) for k in ("g", "G", "rho", "frames")}
    return ReplicaBlocks("pooled", first.r, first.pairs, **cat), slices


# ----------------------------------------------------------------------------- writers

_FILE_FUNCTION = {"rdf": "rdf", "G_ideal": "G", "G_instrument": "G", "G_instrument_lorch": "G", "S": "S"}
_CSV_COLUMNS = {"rdf": "r_A,g,sigma", "G": "r_A,G_per_A2,sigma_per_A2", "S": "Q_per_A,S,sigma"}
_DESCRIPTION = {
    "rdf": "{radiation}-weighted total g(r)",
    "G_ideal": "{radiation}-weighted G(r) = 4 pi rho r (g - 1), all Q",
    "G_instrument": "{radiation}-weighted G(r) through Q = {q_min:g}-{q_max:g} 1/A, no window",
    "G_instrument_lorch": "{radiation}-weighted G(r) through Q = {q_min:g}-{q_max:g} 1/A, Lorch window",
    "S": "{radiation} S(Q), Faber-Ziman{xray_q}",
}


def write_csv(path: str | Path, x, values, sigma, columns: str, comment: str) -> Path:
    """x, value, sigma columns with a ``#`` comment line and a header row, atomically."""
    rows = "\n".join(f"{a!r},{b!r},{c!r}" for a, b, c in zip(*(np.asarray(v, dtype=np.float64).tolist()
                                                             for v in (x, values, sigma))))
    return atomic_write_text(path, f"# {comment}\n{columns}\n{rows}\n")


def write_published(out: Path, functions: dict, sigmas: dict, *, composition: dict, config: ExperimentConfig,
                    temperature_K: float | None, source: str) -> list[Path]:
    """The .gr, .sq and CSV files of both radiations; returns the paths written."""
    written = []
    for name, (x, values) in functions.items():
        radiation, kind = name.split("_", 1)
        function = _FILE_FUNCTION[kind]
        description = _DESCRIPTION[kind].format(
            radiation=radiation, q_min=config.q_min, q_max=config.q_max,
            xray_q=" with f(Q) form factors" if radiation == "xray" else "")
        sigma = sigmas[name]
        written.append(write_csv(out / f"{name}.csv", x, values, sigma, _CSV_COLUMNS[function],
                                 f"{description}; sigma: block standard error; {source}"))
        if kind not in ("G_instrument", "G_instrument_lorch", "S"):
            continue
        header = {
            "mode": radiation,
            "composition": composition,
            "qmin": config.q_min,
            "qmax": config.q_max,
            "temperature": temperature_K,
        }
        if function == "G":
            header.update(rmin=float(x[0]), rmax=float(x[-1]), rstep=config.bin_width_A,
                          lorch=kind.endswith("lorch"))
        else:
            header.update(lorch_r=config.sq_lorch_r, weighting="xray_q" if radiation == "xray" else "neutron")
        header["rmax_transform"] = config.r_max_A + config.r_pad_A  # Å, g(r) range of the transforms
        header["comment"] = f"{description}; sigma: block standard error; {source}"
        header["generator"] = GENERATOR
        suffix = ".sq" if function == "S" else ("_lorch.gr" if kind.endswith("lorch") else ".gr")
        data = ExperimentalData(function, x.numpy(), values.numpy(), sigma.numpy())
        written.append(write_gr(out / f"{radiation}{suffix}", data, header))
    return written


# ----------------------------------------------------------------------------- main


def teacher_comparison(teacher: Replica, config: ExperimentConfig, published: dict, sigmas: dict,
                       masks: dict[str, torch.Tensor], out: Path, progress: bool) -> tuple[dict, Path]:
    """Teacher-vs-reality χ²/bin of the totals at their own cells (σ² = σ_T² + σ_R², block
    errors) and the teacher's lattice; writes ``diagnostics/teacher.npz``."""
    blocks, _ = replica_blocks(teacher, config, config.r_max_A, progress=progress)
    rho_mean = float(mean_sem(blocks.rho, blocks.frames)[0])
    functions = total_functions(blocks.r, blocks.pairs, blocks.G, teacher.numbers, rho_mean,
                                ExperimentConfig(**{**asdict(config), "r_pad_A": 0.0}))
    chi2, arrays = {}, {"r_A": functions["neutron_rdf"][0].numpy()}
    seen = blocks.g.sum(dim=(0, 1)) > 0  # bins where the teacher counted a pair
    for name in ("neutron_rdf", "neutron_G_ideal", "xray_rdf"):
        mean, sem = mean_sem(functions[name][1])
        mask = seen | masks[name] if name in masks else None
        chi2[name] = dict(zip(("chi2_per_bin", "n_bins"),
                              chi2_per_bin(mean, sem, published[name][1], sigmas[name], mask)))
        arrays[name], arrays[f"sigma_{name}"] = mean.numpy(), sem.numpy()
    lattice = lattice_statistics([blocks.lattice], config.n_blocks)
    summary = {
        "job": teacher.name,
        "n_frames": int(teacher.positions.shape[0]),
        "chi2_per_bin": chi2,
        "lattice": {k: {"value": v["value"], "error": v["error"]} for k, v in lattice.items()},
        "note": "each at its own NPT cell; sigma^2 = teacher block SE^2 + reality block SE^2",
    }
    return summary, atomic_save_npz(out / "diagnostics" / "teacher.npz", **arrays)


def _error_key(key: str) -> str:
    """"a_A" → "a_err_A", "density_g_cm3" → "density_err_g_cm3"."""
    name, unit = key.split("_", 1)
    return f"{name}_err_{unit}"


def replicas_new_since(summary_path: Path, names: list[str]) -> list[str]:
    """The replicas of ``names`` that the published summary at ``summary_path`` did not use, when
    at least two others remain to publish σ from (else [], as with no earlier summary): the
    replicas a held-out check of the new publication can test."""
    if not summary_path.exists():
        return []
    try:
        before = {entry["job"] for entry in json.loads(summary_path.read_text())["replicas"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{summary_path}: expected an experiment summary with 'replicas': "
                         f"[{{'job': name, ...}}] ({err})") from None
    new = [n for n in names if n not in before]
    return new if len(names) - len(new) >= 2 else []


def publish(runs: str | Path, out: str | Path, config: ExperimentConfig, *, quick: bool = False,
            reality_pattern: str = REALITY_JOBS, teacher_pattern: str = TEACHER_JOBS,
            progress: bool = True, held_out: list[str] | str | None = None) -> dict:
    """Read the finished replicas under ``runs``, write every file under ``out``; returns the
    summary (also written as ``experiment_summary.json``). ``held_out``: replica names tested
    together against the σ the others alone would publish (summary ``held_out_check.split``),
    e.g. replicas run after a first publication; "new": the replicas that the summary already
    at ``out`` does not list (:func:`replicas_new_since`)."""
    t0 = time.perf_counter()
    out = Path(out)
    previous_summary = out / "experiment_summary.json"
    jobs = find_jobs(runs, reality_pattern)
    if not jobs:
        raise FileNotFoundError(f"no finished reality replicas {reality_pattern!r} under {runs}: "
                                "run `python -m recipes.world.trajectories experiment` first")
    replicas = [load_replica(j, config.max_frames) for j in jobs]
    numbers = replicas[0].numbers
    if any(not np.array_equal(rep.numbers, numbers) for rep in replicas):
        raise ValueError("reality replicas have different species lists")
    analysed = []
    for rep in replicas:
        print(f"[experiment] {rep.name}: {rep.positions.shape[0]} frames of {len(numbers)} atoms",
              flush=True)
        analysed.append(replica_blocks(rep, config, config.r_max_A + config.r_pad_A, progress=progress))
    blocks = [b for b, _ in analysed]
    pool, slices = pooled(blocks)
    rho_mean = float(mean_sem(pool.rho, pool.frames)[0])
    functions = total_functions(pool.r, pool.pairs, pool.G, numbers, rho_mean, config)

    published, raw_sigmas = {}, {}
    for name, (x, values) in functions.items():
        mean, sem = mean_sem(values, pool.frames)
        published[name], raw_sigmas[name] = (x, mean), sem
    names = [rep.name for rep in replicas]
    # below the closest approach g and G carry only the density's error: the χ² checks skip
    # the bins where no pair was ever counted, so they test the structure
    n_pub = published["neutron_rdf"][0].shape[0]
    seen = pool.g[:, :, :n_pub].sum(dim=(0, 1)) > 0
    masks = {f"{rad}_{f}": seen for rad in RADIATIONS for f in ("rdf", "G_ideal")}
    dof = min(len(b.frames) for b in blocks) - 1
    noise = noise_check(names, functions, slices, dof, masks)
    scales = birge_ratios(noise) if config.inflate_sigma else {}
    held_out_summary = leave_one_out(names, functions, slices, pool.frames, dof, masks)
    if held_out == "new":
        held_out = replicas_new_since(previous_summary, names)
        print(f"[experiment] held out (new since {previous_summary}): {held_out or 'none'}", flush=True)
    if held_out:
        held_out_summary = {**(held_out_summary or {}),
                            "split": held_out_check(names, functions, slices, pool.frames, dof, masks, held_out)}
    sigmas = {name: floored_sigma(sem * scales.get(name, 1.0), config.sigma_floor_fraction)
              for name, sem in raw_sigmas.items()}

    lattice = lattice_statistics([b.lattice for b in blocks], config.n_blocks)
    n_frames = [int(rep.positions.shape[0]) for rep in replicas]
    state = {"temperature_K": replicas[0].temperature_K, "pressure_GPa": replicas[0].pressure_GPa}
    lattice_json = {
        **{key: v["value"] for key, v in lattice.items()},
        **{_error_key(key): v["error"] for key, v in lattice.items()},
        "error": "max(standard error of the replica means, block standard error)",
        "definition": {"a_A": "(|a1|/n1 + |a2|/n2)/2 of the 28-atom unit", "c_A": "|a3|/n3",
                       "spacing_A": f"V/|a1 x a2|/({config.layers_per_unit} n3)"},
        "details": lattice,
        "repeats": list(replicas[0].repeats),
        "layers_per_unit": config.layers_per_unit,
        "n_frames": int(sum(n_frames)),
        "n_frames_per_replica": n_frames,
        "replicas": names,
        "n_blocks_per_replica": config.n_blocks,
        **state,
    }

    composition = formula_unit(numbers)
    source = (f"reality NPT {state['temperature_K']} K, {len(replicas)} replicas, "
              f"{sum(n_frames)} frames of {len(numbers)} atoms")
    files = write_published(out, published, sigmas, composition=composition, config=config,
                            temperature_K=state["temperature_K"], source=source)
    files.append(atomic_write_json(out / "lattice.json", lattice_json))
    r_pub = published["neutron_rdf"][0]
    partials = {"r_A": r_pub.numpy(), "pairs": np.array(pool.pairs)}
    for k, pair in enumerate(pool.pairs):
        label = "_".join(chemical_symbols[z] for z in pair)
        mean, sem = mean_sem(G_to_g(r_pub, pool.G[:, k, :n_pub], rho_mean), pool.frames)
        partials[f"g_{label}"], partials[f"sigma_g_{label}"] = mean.numpy(), sem.numpy()
    files.append(atomic_save_npz(out / "diagnostics" / "partials.npz", **partials))

    teacher = None
    teacher_jobs = find_jobs(runs, teacher_pattern)
    if teacher_jobs:
        trep = load_replica(teacher_jobs[0], config.max_frames)
        print(f"[experiment] {trep.name}: {trep.positions.shape[0]} frames (teacher)", flush=True)
        teacher, path = teacher_comparison(trep, config, published, raw_sigmas, masks, out, progress)
        files.append(path)

    # ⟨g_f⟩ (the registry's "rdf") against the published g = 1 + ⟨G_f⟩/(4π⟨ρ⟩r)
    weights = faber_ziman_weights(numbers, "neutron")
    g_frames = torch.einsum("p,mpr->mr", torch.stack([weights[p] for p in pool.pairs]).to(pool.g),
                            pool.g[:, :, :n_pub])
    offset = (mean_sem(g_frames, pool.frames)[0] - published["neutron_rdf"][1]).abs() / sigmas["neutron_rdf"]
    interval = replicas[0].frame_interval_fs
    block_frames = n_frames[0] // min(config.n_blocks, n_frames[0])
    counts = block_analysis(analysed[0][1][:, :n_pub])
    summary_path = out / "experiment_summary.json"
    summary = {
        "generator": GENERATOR,
        "quick": quick,
        "runs": str(runs),
        "state_point": state,
        "composition": "".join(f"{s}{n}" for s, n in composition.items()),
        "n_atoms": int(len(numbers)),
        "repeats": list(replicas[0].repeats),
        "number_density_per_A3": rho_mean,
        "replicas": [{"job": n, "n_frames": f, "dir": str(j)} for n, f, j in zip(names, n_frames, jobs)],
        "grids": {
            "r_bin_width_A": config.bin_width_A,
            "r_published_A": [float(r_pub[0]), float(r_pub[-1]), n_pub],
            "r_max_transform_A": config.r_max_A + config.r_pad_A,
            "q_instrument_per_A": [config.q_min, config.q_max],
            "q_sq_per_A": [config.q_min, config.q_max, config.q_step],
            "sq_real_space_lorch": config.sq_lorch_r,
            "self_image_r_A": float(lattice_lengths(replicas[0].cells).min()),
        },
        "blocks": {
            "per_replica": config.n_blocks,
            "frames_per_block": block_frames,
            "block_ps": None if interval is None else block_frames * interval / 1000.0,
            "sigma_floor_fraction": config.sigma_floor_fraction,
        },
        "block_analysis": {
            "replica": names[0],
            "median_sigma_neutron_frame_mean_g": {str(k): v for k, v in counts.items()},
            "sem_c_A": {str(k): float(mean_sem(block_means(blocks[0].lattice["c_A"], k))[1])
                        for k in counts},
        },
        "rdf_vs_frame_mean_g": {"max_abs_over_sigma": float(offset.max()),
                                "median_abs_over_sigma": float(offset.median())},
        "lattice": {k: {"value": v["value"], "error": v["error"]} for k, v in lattice.items()},
        "noise_check": noise,
        "sigma_scale": scales,
        "held_out_check": held_out_summary,
        "teacher_vs_reality": teacher,
        "config": asdict(config),
        "files": sorted(str(p.relative_to(out)) for p in files + [summary_path]),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(summary_path, summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/world", help="where the experiment campaign's jobs are")
    parser.add_argument("--out", default=None,
                        help="output folder (default data/world/experiment; <runs>/experiment_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="few frames, short r range (smoke test)")
    parser.add_argument("--n-blocks", type=int, default=None, help="time blocks per replica")
    parser.add_argument("--reality", default=REALITY_JOBS, help="glob of the reality replicas")
    parser.add_argument("--teacher", default=TEACHER_JOBS, help="glob of the teacher replica")
    parser.add_argument("--held-out", default=None,
                        help="comma-separated replica names to test against the others' published σ, "
                             "or 'new': those the summary already in --out did not use")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from recipes.world import calculators

    calculators.set_threads()
    config = ExperimentConfig.quick() if args.quick else ExperimentConfig()
    if args.n_blocks is not None:
        config.n_blocks = args.n_blocks
    out = args.out or (str(Path(args.runs) / "experiment_quick") if args.quick else "data/world/experiment")
    summary = publish(args.runs, out, config, quick=args.quick, reality_pattern=args.reality,
                      teacher_pattern=args.teacher, progress=not args.no_progress,
                      held_out=(args.held_out if args.held_out in (None, "new") else args.held_out.split(",")))
    noise, teacher = summary["noise_check"], summary["teacher_vs_reality"]
    print(json.dumps({"lattice": summary["lattice"],
                      "replica_chi2_per_bin": noise and noise["chi2_per_bin"],
                      "held_out_chi2_per_bin": summary["held_out_check"]
                      and summary["held_out_check"].get("mean_chi2_per_bin", {}).get("neutron_rdf"),
                      "held_out_split": summary["held_out_check"]
                      and {k: v["neutron_rdf"]["chi2_per_bin"]
                           for k, v in summary["held_out_check"].get("split", {}).get("replicas", {}).items()},
                      "teacher_vs_reality": teacher and teacher["chi2_per_bin"],
                      "out": out, "wall_s": summary["wall_s"]}, indent=1), flush=True)
    return summary


if __name__ == "__main__":
    main()
