"""The ``## update`` section of RESULTS.md: header, the time and memory table, the phase table
and the verdict against the targets."""

from __future__ import annotations

import textwrap

import torch

from benchmarks.common import device_title, command_line, machine_description, now_text, versions

SECTION = "## update"


def title(device: torch.device) -> str:
    """This section's heading for ``device`` (:func:`~benchmarks.common.device_title`)."""
    return device_title(SECTION, device)


def _growth(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return 100.0 * (value - reference) / reference


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    ref = rows[0]
    lines = [f"| N | update s | fwd+bwd s | ratio | update, step 1 at hand s | its ratio "
             f"| fwd+bwd over the cached lists s | ratio to it "
             f"| update searching every pass s | its ratio | peak memory MB | growth vs N={ref['n']} % "
             f"| peak MB, default malloc | its growth % |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['n']} | {row['update_s']:.3f} | {row['fwd_bwd_s']:.3f} | "
            f"{row['update_s'] / row['fwd_bwd_s']:.2f} | {row['update_given_s']:.3f} | "
            f"{row['update_given_s'] / row['fwd_bwd_s']:.2f} | {row['fwd_bwd_listed_s']:.3f} | "
            f"{row['update_s'] / row['fwd_bwd_listed_s']:.2f} | {row['update_searching_s']:.3f} | "
            f"{row['update_searching_s'] / row['fwd_bwd_s']:.2f} | {row['peak_MB']:.1f} | "
            f"{_fmt(_growth(row['peak_MB'], ref['peak_MB']), '+.1f')} | "
            f"{_fmt(row['peak_default_malloc_MB'], '.1f')} | "
            f"{_fmt(_growth(row['peak_default_malloc_MB'], ref['peak_default_malloc_MB']), '+.1f')} |")
    return "\n".join(lines)


def phase_table(rows: list[dict]) -> str:
    lines = ["| N | update: fwd no-graph | update: fwd with graph | update: bwd + loss "
             "| update: of which neighbour lists | fwd+bwd: fwd | fwd+bwd: bwd "
             "| fwd+bwd: of which neighbour lists | store MB | pair cache MB | its search s | N_eff/N |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        u, b = row["update_phases_s"], row["baseline_phases_s"]
        lines.append(f"| {row['n']} | {u['fwd_nograd']:.3f} | {u['fwd_graph']:.3f} | "
                     f"{u['bwd_and_loss']:.3f} | {u['neighbours']:.3f} | {b['fwd']:.3f} | "
                     f"{b['bwd']:.3f} | {b['neighbours']:.3f} | {row['store_MB']:.1f} | "
                     f"{row['pair_cache_MB']:.1f} | {row['pair_search_s']:.3f} | "
                     f"{row['n_eff'] / row['n']:.3f} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    worst_ratio = max(row["update_s"] / row["fwd_bwd_s"] for row in rows)
    worst_strict = max(row["update_s"] / row["fwd_bwd_listed_s"] for row in rows)
    worst_growth = max(abs(_growth(row["peak_MB"], rows[0]["peak_MB"]) or 0.0) for row in rows)
    worst_given = max(row["update_given_s"] / row["fwd_bwd_s"] for row in rows)
    text = (f"Targets: update ≤ 1.3 × fwd+bwd — reusing a store (step 1 computed) "
            f"{'met' if worst_ratio <= 1.3 else 'NOT met'} (worst {worst_ratio:.2f}); right after a "
            f"sample or a reweighting that decided on sampling (step 1 at hand) "
            f"{'met' if worst_given <= 1.3 else 'NOT met'} (worst {worst_given:.2f}); against a fwd+bwd that also skips the search "
            f"{'met' if worst_strict <= 1.3 else 'NOT met'} (worst {worst_strict:.2f}); peak memory "
            f"flat within 10 % of N={rows[0]['n']} — "
            f"{'met' if worst_growth <= 10.0 else 'NOT met'} (worst {worst_growth:.1f} %).")
    default = [_growth(row["peak_default_malloc_MB"], rows[0]["peak_default_malloc_MB"]) for row in rows]
    if all(g is not None for g in default):
        text += (f" With glibc's default malloc the RSS peak changes by up to {max(default, key=abs):+.1f} %:"
                 " heap blocks freed by earlier chunks stay cached and fragment; the headline"
                 " (fixed-threshold) column leaves that slack out.")
    return text


def section(rows: list[dict], args, model_text: str, device: torch.device, notes: list[str]) -> str:
    header = textwrap.dedent(f"""\
        {title(device)}

        One DiffTRe update (`difftre_gradient`, reweighted RDF loss, chunk size {args.chunk_size})
        against one plain forward+backward pass over the same N snapshots (same chunks), and the
        peak memory of the update; fresh processes per N, after a two-chunk warm-up. The store is
        filled as the trainer fills it: each snapshot's pair list searched once ('its search s')
        and reused by both passes of every update. 'Step 1 at hand': the same update handed the
        energies at θ (computed once outside the clock), as the trainer hands them in right after
        a sample (the store's reference energies) and after the reweighting that decides whether
        to sample again. Beside it, the same update searching in every
        pass (as before the cache) and a fwd+bwd over the cached lists. Times: median of
        {args.repeats} interleaved runs, seconds.

        - date: {now_text()}
        - machine: {machine_description(device, args.threads)}
        - versions: {versions()}
        - command: `{command_line("benchmarks.update")}`
        - model: {model_text}; {rows[0]['atoms']} atoms per snapshot; device {device}
        - peak memory: {rows[0]['memory_method']}
        - notes: {' '.join(notes)}

        """)
    return (header + table(rows) + "\n\nPhases of the same runs (median s; neighbour lists are "
            "part of the forward passes):\n\n" + phase_table(rows) + "\n\n" + verdict(rows) + "\n")
