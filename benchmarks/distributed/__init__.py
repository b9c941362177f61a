"""Scaling of one DiffTRe update over ranks (torch.distributed): ``python -m benchmarks.distributed``.

Runs the quick g-C3N4 job's refinement (NequIP base + pair correction, G(r) + lattice +
spacing targets, force matching λ = 1000), shortened so that every update samples again, in
fresh processes side by side:

* ``1 process, R replicas``: today's path;
* ``2 ranks, R/2 replicas each`` (torchrun, gloo on CPU, NCCL on GPUs): the same replicas;
* ``1 process, R/2 replicas``: what one rank does alone, so that rank time and the ranks'
  overhead (waiting, all-reduces) can be told apart.

Per update it records the sampling and the gradient time (rank 0's wall clock), and, counted by
:class:`difftre_torch.distributed.Ranks`, the bytes and the number of all-reduces of one update.
From these it projects the update time at 8, 64 and 512 GPUs for weak scaling (each GPU keeps
R/2 replicas): t(P) = t_rank + n_reduce · α · 2·log2(P) + 2(P − 1)/P · bytes / B, with α and B
stated as assumptions (a tree all-reduce's latency, a ring all-reduce's bandwidth term).
Results go to the ``## distributed`` section of benchmarks/RESULTS.md (``## distributed on
CUDA`` on GPUs).
"""
