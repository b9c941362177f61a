"""Cost of one DiffTRe update against N cached snapshots: time and peak memory.

For N snapshots of one system (64 atoms: rattled, breathing copies of a crystal; content does
not matter for timing) this measures

(a) ``t_update``: one :func:`difftre_torch.gradient.difftre_gradient` call, i.e. a graph-free
    forward pass over all N (chunked), the reweighted RDF loss and its N cotangents, and a
    chunked forward + backward pass into θ; the observable (partial RDFs) is θ-independent and
    cached in the :class:`~difftre_torch.sampling.store.SnapshotStore`;
(b) ``t_fwd_bwd``: the baseline, one plain forward + backward pass of the same model over the
    same N snapshots in the same chunks (energies summed, ``autograd.grad`` into θ);
(c) the peak memory of (a): on CPU the growth of the peak RSS over the RSS just before the call
    (``resource.getrusage(...).ru_maxrss``, as in tests/test_gradient.py, with the high-water
    mark reset through ``/proc/self/clear_refs`` where the kernel allows it), on CUDA
    ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the call.

Each N runs in fresh subprocesses. Both build the store and warm up on two chunks. The timing
process measures the memory of one update with the default allocator, then ``--repeats``
interleaved runs of (a) and (b) (medians; ``time.perf_counter``, ``torch.cuda.synchronize`` on
CUDA). On CPU with glibc a second process, started with a fixed mmap threshold
(:data:`~benchmarks.update.memory.FIXED_MMAP_ENV`), measures the memory of one update again:
glibc's default dynamic threshold keeps freed chunk graphs cached in the heap, which adds tens of
MB of allocator slack to the RSS that has nothing to do with N. The fixed-threshold number is the
headline, the default one is reported next to it. The phases of (a) are timed by wrapping the
``chunk_fn`` it calls and the potential module's ``neighbor_pairs`` (the package's files are not
edited).

Targets: t_update / t_fwd_bwd ≤ 2 (two forward passes and one backward pass against one and
one), peak memory flat within 10 % from N = 100 to N = 10 000.

Models: ``lj`` (LennardJones, fcc argon, 64 atoms, r_c 8.5 Å) or ``nequip`` (a tiny NequIP
model trained here with ``nequip-train`` for one epoch on EMT-labelled C4N4 cells, then
evaluated on 64-atom rock-salt C/N supercells). Default: nequip if it trains, else lj.

    python -m benchmarks.update [--sizes 100 1000 10000] [--device cpu|cuda]
                                [--model lj|nequip] [--out benchmarks/RESULTS.md]

Modules: :mod:`.systems` (crystals, snapshots, models, the store), :mod:`.kernels` (the two
measured operations and their phase clocks), :mod:`.memory` (peak memory of one call),
:mod:`.workers` (one N in fresh processes), :mod:`.report` (the RESULTS.md section),
:mod:`.__main__` (command line).
"""
