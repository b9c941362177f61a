"""Pair lists of fixed snapshots, searched once and reused by every pass over them.

A store's snapshots do not move between updates, yet each update passes over them twice (the
energies without a graph, then the chunked gradient), and the pool, the curvature and the
evaluation pass over them again. For a potential that takes a precomputed list (``pairs=``,
:func:`~difftre_torch.potentials.base.pair_list_request`) the search is done once per store
(:class:`~difftre_torch.neighbors.PairCache`, kept on the store and on its device) and every
later chunk is called with its slice of the cache. A cache that would exceed ``limit_mb``
(14 bytes per pair) is not built; the potential then searches in each pass as before.
"""

from __future__ import annotations

from typing import Iterator

import torch

from difftre_torch.neighbors import PAIR_BYTES, PairCache
from difftre_torch.potentials.base import WithPairs, pair_list_request

DEFAULT_LIMIT_MB = 1024.0
"""The default cap on one store's cached pairs, MiB."""


def cache_pairs(potential, positions: torch.Tensor, cells: torch.Tensor,
                limit_mb: float = DEFAULT_LIMIT_MB) -> PairCache | None:
    """The pair lists of positions [S, N, 3] Å in cells [S, 3, 3] Å (rows) at ``potential``'s
    cut-off, or None if the potential takes no list, ``limit_mb`` ≤ 0, or the lists would exceed
    ``limit_mb`` (estimated from the first snapshot's count)."""
    request = pair_list_request(potential)
    if request is None or limit_mb <= 0 or positions.shape[0] == 0:
        return None
    cutoff, full = request
    first = PairCache.build(positions[:1], cells[:1], cutoff, full)
    if len(first.i) * PAIR_BYTES * positions.shape[0] > limit_mb * 2 ** 20:
        return None
    return PairCache.build(positions, cells, cutoff, full)


def store_pairs(potential, store, limit_mb: float = DEFAULT_LIMIT_MB) -> PairCache | None:
    """``store``'s cache for ``potential`` (:func:`cache_pairs`), built on first use and kept on
    the store (``store.pair_cache``) while its cut-off and list kind stay the potential's."""
    request = pair_list_request(potential)
    if request is None or limit_mb <= 0:
        return None
    cached = store.pair_cache
    if cached is not None and (cached.cutoff_A, cached.full) == request and len(cached) == len(store):
        return cached
    if store.pair_cache_refused == (request, limit_mb):
        return None
    store.pair_cache = cache_pairs(potential, store.positions, store.cells, limit_mb)
    store.pair_cache_refused = None if store.pair_cache is not None else (request, limit_mb)
    return store.pair_cache


def chunk_calls(potential, n: int, chunk_size: int, cache: PairCache | None,
                dtype: torch.dtype) -> Iterator[tuple[slice, object]]:
    """(snapshot slice, potential to call on it) for each chunk of ``n`` snapshots: bound to the
    chunk's cached pairs (:class:`~difftre_torch.potentials.base.WithPairs`) when there is a
    cache, else the potential itself. ``dtype``: the positions' (for the shifts)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for k in range(0, n, chunk_size):
        sl = slice(k, min(k + chunk_size, n))
        yield sl, (potential if cache is None else WithPairs(potential, cache.pairs(sl, dtype)))
