"""The ``## sampling`` section of RESULTS.md: header, then per model one table of rates and
shares and the verdict against the targets."""

from __future__ import annotations

import textwrap

import torch

from benchmarks.common import device_title, command_line, machine_description, now_text
from benchmarks.common import versions as common_versions
from benchmarks.sampling.timing import STEP_LABEL

SECTION = "## sampling"


def title(device: torch.device, models: list[str] | None = None) -> str:
    """This section's heading for ``device`` (:func:`~benchmarks.common.device_title`); a run of
    ``--model deepmd`` alone has its own section (DeePMD-kit is an optional extra), so that it
    does not replace the NequIP and LJ tables."""
    return device_title(SECTION + (", DeePMD-kit" if models == ["deepmd"] else ""), device)


def versions() -> str:
    """"torch X, nequip Y, …, ase Z, numpy W" for the header."""
    return common_versions(("nequip", "e3nn", "deepmd-kit", "vesin-torch", "ase", "numpy"))


def table(rows: list[dict]) -> str:
    compiled = any("vs_eager" in row for row in rows)
    lines = ["| system | atoms | sampler | R | MD steps/s | replica-steps/s | atom-steps/s | batched/ASE "
             "| limit replica-steps/s | batched/limit | model share of step | neighbour-list share "
             "| list rebuilds per replica-step |" + (" compiled vs eager |" if compiled else ""),
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if compiled else "")]
    for row in rows:
        fmt = lambda key, spec, scale=1.0: format(row[key] * scale, spec) if key in row else "–"  # noqa: E731
        lines.append(
            f"| {row['system']} | {row['atoms']} | {row['sampler']} | {row['R']} | "
            f"{row['replica_steps_s'] / row['R']:.1f} | {row['replica_steps_s']:.1f} | "
            f"{row['replica_steps_s'] * row['atoms']:.3g} | {fmt('vs_ase', '.2f')} | "
            f"{fmt('limit_replica_steps_s', '.1f')} | {fmt('vs_limit', '.0%')} | "
            f"{fmt('model_share', '.0%')} | {fmt('neighbour_share', '.0%')} | "
            f"{fmt('rebuilds_per_replica_step', '.3f')} |" + (f" {fmt('vs_eager', '.2f')} |" if compiled else ""))
    return "\n".join(lines)


def verdict(rows: list[dict], device: torch.device) -> str:
    lines = []
    for system in dict.fromkeys(row["system"] for row in rows):
        batched = [row for row in rows if row["system"] == system and row["sampler"] == "batched"]
        best = max(batched, key=lambda row: row["replica_steps_s"])
        ase = next(row for row in rows if row["system"] == system and row["sampler"] != "batched")
        ceiling = max(batched, key=lambda row: row["limit_replica_steps_s"])
        lines.append(f"- {system}: best R = {best['R']}: {best['vs_ase']:.1f}× ASE, "
                     f"{100 * best['vs_limit']:.0f} % of the model-bound limit. The model alone "
                     f"allows at most {ceiling['limit_replica_steps_s'] / ase['replica_steps_s']:.2f}× ASE "
                     f"(its best replica-steps/s, at R = {ceiling['R']}); ASE at R = 1 runs at "
                     f"{100 * ase['replica_steps_s'] / batched[0]['limit_replica_steps_s']:.0f} % of "
                     f"the R = {batched[0]['R']} limit.")
        variants = [row for row in rows if row["system"] == system and "vs_eager" in row]
        for label in dict.fromkeys(row["sampler"] for row in variants):
            best_variant = max((row for row in variants if row["sampler"] == label),
                               key=lambda row: row["replica_steps_s"])
            eager_model = label == STEP_LABEL
            limit_name = "the model-bound limit" if eager_model else "the compiled model's own limit"
            lines.append(f"  {label.removeprefix('batched, ')}: best R = {best_variant['R']}: "
                         f"{best_variant['vs_ase']:.1f}× ASE, "
                         f"{best_variant['vs_eager']:.2f}× the eager batched sampler at that R, "
                         f"{best_variant['replica_steps_s'] * best_variant['atoms']:.3g} atom-steps/s, "
                         f"{100 * best_variant['vs_limit']:.0f} % of {limit_name} "
                         f"({best_variant['limit_replica_steps_s'] * best_variant['atoms']:.3g} atom-steps/s).")
            if device.type != "cpu" and not eager_model:
                lines.append(f"  GPU target: {label} ≥ 90 % of the compiled model's limit at the best R: "
                             f"{'met' if best_variant['vs_limit'] >= 0.9 else 'NOT met'}.")
        if device.type == "cpu":
            eight = [row for row in batched if row["R"] >= 8]
            if eight:
                worst = min(row["vs_ase"] for row in eight)
                lines.append(f"  CPU target batched ≥ 2× ASE at R ≥ 8: {'met' if worst >= 2 else 'NOT met'} "
                             f"(lowest {worst:.2f}×).")
            else:
                lines.append("  CPU target batched ≥ 2× ASE at R ≥ 8: not measured (no R ≥ 8 in this run).")
        else:
            lines.append(f"  GPU targets ≥ 20× ASE: {'met' if best['vs_ase'] >= 20 else 'NOT met'}; "
                         f"≥ 90 % of the limit: {'met' if best['vs_limit'] >= 0.9 else 'NOT met'} "
                         f"(the rest of the step: model {best['model_share']:.0%}, neighbour lists "
                         f"{best['neighbour_share']:.0%}, integrator, checks and Python "
                         f"{1 - best['model_share'] - best['neighbour_share']:.0%}).")
    return "\n".join(lines)


def section(blocks: list[tuple[str, list[dict]]], args, device: torch.device, notes: list[str]) -> str:
    """The ``## sampling`` section: header, then one table and verdict per (model text, rows)."""
    header = textwrap.dedent(f"""\
        {title(device, args.model)}

        MD throughput in NVT at one state point: AseSampler (ASE `Langevin`, one replica) against
        BatchedSampler (R replicas as one batch; BAOAB, Verlet list with 1 Å skin, blow-up checks
        every 10 steps) and the model-bound limit (`forces_and_stress` alone on the same R
        snapshots with a precomputed exact neighbour list). Rates from the second of two `sample`
        rounds (the first warms up), each sized to ~{args.seconds:g} s, snapshots and checks
        included; limit: mean over back-to-back calls. batched/ASE compares replica-steps/s;
        batched/limit = limit time per call / batched time per step; the compiled rows' limit is
        the compiled model's own. Shares: fraction of the batched step's wall time inside the
        model call and inside neighbour-list upkeep.

        - date: {now_text()}
        - machine: {machine_description(device, args.threads)}
        - versions: {versions()}
        - command: `{command_line("benchmarks.sampling")}`
        - notes: {' '.join(notes)}
        """)
    parts = [header]
    for model_text, rows in blocks:
        parts.append(f"\n### {model_text}; device {device}\n\n" + table(rows) + "\n\n"
                     + verdict(rows, device) + "\n")
    return "".join(parts)
