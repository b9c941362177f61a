"""Several processes (ranks) working on one refinement with ``torch.distributed``.

A refinement is launched on N ranks with ``torchrun --nproc-per-node N -m difftre_torch refine
CONFIG`` (on a SLURM cluster, ``srun`` starts one ``torchrun`` per node; README, "Several GPUs or
nodes"). :func:`start` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), joins the process group (NCCL when CUDA is available, gloo
otherwise, or when ranks share a GPU) and puts the rank on its device (``cuda:<LOCAL_RANK>``, else the CPU). Without a
launcher it returns :data:`SINGLE`, one process, and every function here is the identity, so
the one-process path is today's.

What is split and what is global:

* each rank samples its share of every state point's replicas (:func:`replica_share`, a block of
  consecutive replica indices; a replica's random stream is seeded by its global index, so a
  replica's trajectory does not depend on the rank that owns it) and keeps those snapshots;
* the weights are a softmax over *all* ranks' snapshots. With a_i = −β[U_θ(S_i) − U_θ̃(S_i)],
  m = max_all a_i (all-reduce MAX, a constant shift) and Z = Σ_all exp(a_i − m) (all-reduce SUM),
  a rank holds w_i = exp(a_i − m)/Z for its own snapshots, which sum to its share of 1;
* an average ⟨O⟩ = Σ_all w_i O_i is the all-reduced sum of the ranks' partial sums
  (:meth:`Ranks.global_sum`), so the loss, a nonlinear function of the averages, is computed from
  the same numbers, identically, on every rank;
* :meth:`Ranks.global_sum` passes the gradient through unchanged (∂(Σ_r x_r)/∂x_own = 1), so
  ``torch.autograd.grad`` of the loss gives each rank ∂L/∂U_i and ∂L/∂O_i for its own snapshots;
  the chunked backward runs locally and the parameter gradient is all-reduced (SUM). Every rank
  then takes the same optimiser step; N_eff = exp(−Σ_all w ln w) and the resampling decision are
  global.

Every collective of a rank that lost contact with another fails after ``timeout_s`` at the latest
(the process group's timeout) with :class:`RankFailure`; torchrun stops the other ranks at once
when one dies (SIGTERM, turned into :class:`RankFailure` by :func:`start`). The bytes each rank
all-reduces are counted (:attr:`Ranks.bytes_reduced`) for the scaling record in ``benchmarks/``.
"""

from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a collective waits for the other ranks before the run stops with :class:`RankFailure`
(``difftre refine --rank-timeout``). It bounds how long ranks may legitimately wait for each other
too (one rank's sampling taking longer, rank 0 writing a checkpoint)."""


class RankFailure(RuntimeError):
    """Another rank stopped, lost contact or did not answer within the timeout; the message names
    this rank and what it was doing. The run continues from its last checkpoint when launched
    again with the same number of ranks."""


@dataclass
class Ranks:
    """This process's place among the ranks of one run, and the collectives the refinement uses.

    rank: 0 … world_size − 1 (rank 0 writes the shared files); local_rank: the rank on its node
    (its CUDA device); device: where this rank computes; backend: "gloo", "nccl", or None for one
    process; timeout_s: the collectives' timeout. bytes_reduced: bytes this rank has all-reduced so
    far (sent in as the payload; the algorithm's traffic is a small multiple of it); reductions:
    how many all-reduces (each pays the network's latency once)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    bytes_reduced: int = 0
    reductions: int = 0

    @property
    def active(self) -> bool:
        """True when several ranks share the work (a process group is set up)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes the shared files and the logs."""
        return self.rank == 0

    def describe(self) -> str:
        return (f"rank {self.rank} of {self.world_size} ({self.backend}, {self.device}, "
                f"timeout {self.timeout_s:g} s)")

    # ---------------------------------------------------------------- collectives
    def _reduce(self, tensor: torch.Tensor, op: str, what: str) -> torch.Tensor:
        """All-reduce a copy of ``tensor`` (the result is identical on every rank)."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().clone().contiguous()
        moved = out.to(self.comm_device)
        self.bytes_reduced += moved.numel() * moved.element_size()
        self.reductions += 1
        try:
            dist.all_reduce(moved, op=getattr(dist.ReduceOp, op))
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses
            raise self.failure(what, exc) from None
        return moved.to(tensor.device)

    @property
    def comm_device(self) -> torch.device:
        """Where collectives run: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def sum(self, tensor: torch.Tensor, what: str = "a sum") -> torch.Tensor:
        """Σ over ranks (no gradient); the identity for one process."""
        return self._reduce(tensor, "SUM", what)

    def max(self, tensor: torch.Tensor, what: str = "a maximum") -> torch.Tensor:
        """max over ranks (no gradient); the identity for one process."""
        return self._reduce(tensor, "MAX", what)

    def global_sum(self, tensor: torch.Tensor, what: str = "a weighted average") -> torch.Tensor:
        """Σ over ranks whose gradient flows back to this rank's own term unchanged
        (d(Σ_r x_r)/dx_own = 1); every rank gets the same value."""
        if not self.active:
            return tensor
        return _GlobalSum.apply(tensor, self, what)

    def sum_list(self, tensors: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
        """Σ over ranks of several tensors in one all-reduce (flattened to float64 on the way)."""
        if not self.active or not tensors:
            return list(tensors)
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64).cpu() for t in tensors])
        flat = self.sum(flat, what)
        out, k = [], 0
        for t in tensors:
            out.append(flat[k:k + t.numel()].reshape(t.shape).to(t))
            k += t.numel()
        return out

    def barrier(self, what: str) -> None:
        """Wait for every rank (an all-reduce of one number, so it honours the timeout)."""
        self.sum(torch.zeros(1), what)

    def broadcast(self, value: Any, what: str) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        try:
            dist.broadcast_object_list(box, src=0, device=self.comm_device)
        except Exception as exc:  # noqa: BLE001
            raise self.failure(what, exc) from None
        return box[0]

    def gather(self, value: Any, what: str) -> list:
        """Every rank's ``value`` (picklable), in rank order; ``[value]`` for one process."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        box: list = [None] * self.world_size
        try:
            dist.all_gather_object(box, value)
        except Exception as exc:  # noqa: BLE001
            raise self.failure(what, exc) from None
        return box

    def failure(self, what: str, exc: BaseException) -> RankFailure:
        text = " ".join(str(exc).split())[:300]
        return RankFailure(f"rank {self.rank} of {self.world_size} stopped while exchanging {what}: another rank stopped, "
                           f"lost contact or did not answer within {self.timeout_s:g} s ({type(exc).__name__}: "
                           f"{text}); launch the same command with the same number of ranks to continue "
                           "from the last checkpoint")


SINGLE = Ranks()
"""One process: no process group, every collective the identity."""


class _GlobalSum(torch.autograd.Function):
    """y = Σ_r x_r (all-reduce), ∂y/∂x_own = identity."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, ranks: Ranks, what: str) -> torch.Tensor:
        return ranks._reduce(tensor, "SUM", what)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def replica_share(replicas: Sequence[int], rank: int, world_size: int,
                  names: Sequence[str] | None = None) -> list[list[int]]:
    """The replica indices of each state point that ``rank`` samples: a block of consecutive
    indices, the first ``R mod world_size`` ranks one more. replicas: R per state point.
    Raises ValueError when a state point has fewer replicas than there are ranks (every rank
    keeps snapshots of every state point)."""
    out = []
    for k, count in enumerate(replicas):
        if count < world_size:
            name = names[k] if names is not None else str(k)
            raise ValueError(f"state point {name!r} has {count} replica(s) for {world_size} ranks: every rank "
                             f"samples at least one replica of every state point; set its replicas to "
                             f"{world_size} or more (state_points[{k}].replicas), or launch fewer ranks")
        base, extra = divmod(count, world_size)
        start = rank * base + min(rank, extra)
        out.append(list(range(start, start + base + (1 if rank < extra else 0))))
    return out


def launched() -> bool:
    """True when a launcher (torchrun, or srun + torchrun) started several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> Ranks:
    """Join the launcher's process group, or :data:`SINGLE` without a launcher.

    backend: "nccl" when every rank on the node has a GPU of its own, else "gloo" (default; gloo
    all-reduces on the CPU, so ranks sharing one GPU work too); the rank's device is
    ``cuda:<LOCAL_RANK>`` (made the current CUDA device, so a model on "cuda" lands there) or the
    CPU. SIGTERM (what torchrun sends the other ranks when one fails) raises :class:`RankFailure`."""
    if not launched():
        return Ranks(timeout_s=timeout_s)
    if not timeout_s > 0:
        raise ValueError(f"--rank-timeout: expected seconds > 0, got {timeout_s!r}")
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    # NCCL needs a GPU of its own per rank; ranks sharing a GPU exchange through gloo (on the CPU)
    backend = backend or ("nccl" if cuda and torch.cuda.device_count() >= per_node else "gloo")
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    ranks = Ranks(rank, world, local, device, backend, float(timeout_s))
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                    **({"device_id": device} if backend == "nccl" else {}))
        except Exception as exc:  # noqa: BLE001
            raise ranks.failure("joining the process group", exc) from None
    _stop_on_sigterm(ranks)
    return ranks


def stop(ranks: Ranks) -> None:
    """Leave the process group (after the last collective); nothing for one process."""
    if ranks.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _stop_on_sigterm(ranks: Ranks) -> None:
    def handler(signum, frame):  # noqa: ARG001
        raise RankFailure(f"rank {ranks.rank} of {ranks.world_size}: stopped by the launcher (SIGTERM), "
                          "usually because another rank failed; launch the same command with the same "
                          "number of ranks to continue from the last checkpoint")

    signal.signal(signal.SIGTERM, handler)
