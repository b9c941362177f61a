"""Thread use on a shared machine: ``python -m benchmarks.threads [--mode md|stage|both]``.

Each measurement runs in a fresh process (the OpenMP wait policy is read once, when the runtime
starts), with and without a competing single-threaded process (a Python busy loop) started
beside it, so the ratio "with a competitor / alone" is measured side by side in one run.

* ``md``: the quick g-C3N4 job's MD (recipes/gc3n4/quick.yaml: the base NequIP model, the
  ``npt`` state point's 2 replicas of 112 atoms in one batch, batched sampler) for a fixed number
  of steps after a warm-up, at torch threads 1 and 2, with OpenMP's default wait policy and with
  ``OMP_WAIT_POLICY=PASSIVE``: MD steps per second. Also a small-tensor micro-benchmark (an
  element-wise op on 112×3 tensors, the size of one MD step's bookkeeping): operations per second.
* ``stage``: the quick job's first stage (the base model's structure comparison: both state
  points sampled, compared with the experiment) as ``difftre refine`` runs it, with the
  command's default thread settings (:mod:`difftre_torch.threads`), alone and beside one
  competitor; wall seconds and their ratio.

Results go to the ``## threads`` section of benchmarks/RESULTS.md.
"""
