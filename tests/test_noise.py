"""Per-replica noise streams: a restored stream continues exactly, wherever in a block it was
saved (mid-block, at a block boundary, before any block)."""

from __future__ import annotations

import io

import pytest
import torch

from difftre_torch.sampling.noise import ReplicaNoise, replica_seed


def _draws(noise: ReplicaNoise, n: int) -> torch.Tensor:
    """[n, R, width]: the next n steps of every stream."""
    return torch.stack([noise.next() for _ in range(n)]) if n else torch.empty(0)


@pytest.mark.parametrize("used", [0, 5, 8, 13, 16])
def test_restored_stream_continues_exactly(used):
    """Block of 8 steps: saved after 0, 5, 8 (a boundary: the block is used up), 13 and 16 steps;
    the next 20 steps of the restored streams equal the original's, and differ from the 20
    steps the original drew before (no block is replayed)."""
    seeds = [replica_seed(0, 0, r) for r in range(3)]
    original = ReplicaNoise(seeds, width=4, block_steps=8, device="cpu", dtype=torch.float64)
    original.direct((2, 3))
    before = _draws(original, used)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = ReplicaNoise(seeds, width=4, block_steps=8, device="cpu", dtype=torch.float64)
    restored.load_state_dict(torch.load(buffer))
    ahead = _draws(original, 20)
    assert torch.equal(_draws(restored, 20), ahead)
    if used:
        assert not torch.equal(ahead[: min(used, 20)], before[: min(used, 20)])


def test_direct_only_before_the_first_block():
    noise = ReplicaNoise([1, 2], width=3, block_steps=4, device="cpu", dtype=torch.float64)
    noise.next()
    with pytest.raises(RuntimeError, match="only allowed before the first block"):
        noise.direct((2, 3))
