"""Per-replica Gaussian noise for batched Langevin dynamics: one ``torch.Generator`` per
replica, seeded from (seed, state point, replica), so that a replica's trajectory does not depend
on which other replicas share its batch, and a replica can restart with new noise without
touching the others. Numbers are drawn in blocks of steps (fewer kernel launches); the state
(generator states before the current block, position in it) restores the streams exactly on
the same device type.
"""

from __future__ import annotations

import numpy as np
import torch


def replica_seed(seed: int, point: int, replica: int) -> int:
    """The seed of one replica's generator: from NumPy's SeedSequence([seed, point, replica])."""
    return int(np.random.SeedSequence([seed, point, replica]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class ReplicaNoise:
    """Independent streams of standard normal numbers, one ``torch.Generator`` per replica.

    ``next()`` gives [R, width] (one step); numbers are drawn ``block_steps`` steps at a time,
    [block_steps, width] per replica. The state (generator states before the current block, and
    the position in it) restores the streams exactly.
    """

    def __init__(self, seeds: list[int], width: int, block_steps: int, device, dtype) -> None:
        self.width, self.block_steps = int(width), int(block_steps)
        self.device, self.dtype = torch.device(device), dtype
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        self.block_states = [g.get_state() for g in self.generators]
        self.buffer: torch.Tensor | None = None
        self.position = self.block_steps  # empty: the next call draws a block

    def direct(self, shape: tuple[int, ...]) -> torch.Tensor:
        """[R, *shape] drawn straight from each stream (initial momenta); only between blocks."""
        if self.position != self.block_steps:
            raise RuntimeError("ReplicaNoise.direct: only allowed before the first block is drawn")
        out = torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=self.dtype)
                           for g in self.generators])
        self.block_states = [g.get_state() for g in self.generators]
        return out

    def _draw_block(self) -> None:
        self.block_states = [g.get_state() for g in self.generators]
        self.buffer = torch.stack([
            torch.randn(self.block_steps, self.width, generator=g, device=self.device, dtype=self.dtype)
            for g in self.generators], dim=1)  # [block_steps, R, width]
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.position >= self.block_steps:
            self._draw_block()
        out = self.buffer[self.position]
        self.position += 1
        return out

    def state_dict(self) -> dict:
        """Generator states before the current block while part of it is left (a restore draws
        the block again), else the generators' present states (block used up, or none drawn)."""
        exhausted = self.position >= self.block_steps
        states = [g.get_state() for g in self.generators] if exhausted else self.block_states
        return {"block_states": [s.clone() for s in states], "position": self.position,
                "device_type": self.device.type}

    def load_state_dict(self, state: dict) -> None:
        if state["device_type"] != self.device.type:
            raise ValueError(f"ReplicaNoise: the saved generators are {state['device_type']} generators; "
                             f"this sampler runs on {self.device.type} (restore on the same device type)")
        for g, s in zip(self.generators, state["block_states"], strict=True):
            g.set_state(s)
        if state["position"] < self.block_steps:
            self._draw_block()  # the same numbers again, generators advanced past them
        else:
            self.buffer = None
        self.position = int(state["position"])
