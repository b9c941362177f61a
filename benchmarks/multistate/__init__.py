"""MD steps to the same loss: today's trainer, the snapshot pool, Levenberg–Marquardt steps, and both.

``python -m benchmarks.multistate`` runs, for the LJ example (``difftre refine lj_argon``'s job)
and the g-C3N4 quick job, four refinements side by side in one run, each in its own process:

* ``today``: the job as shipped (Adam, single-trajectory DiffTRe);
* ``pool``: the same with ``trainer.pool_size`` trajectories reweighted together (MBAR);
* ``curvature``: ``trainer.optimizer = levenberg_marquardt``;
* ``both``: the pool and Levenberg–Marquardt;
* ``both_half``: both, with trajectories of half as many snapshots (the pool keeps the last K,
  so each estimate still rests on more snapshots than one full trajectory).

Every refinement but ``both_half`` has the same sampler settings; all have the same seeds and number of updates. After each update
its record is stored with the MD steps sampled so far (every replica of every refined state point:
equilibration in the first round, re-equilibration in later ones, plus snapshots × stride) and the
refinement's own wall time (sampling and updates). The table gives, per variant, the MD steps and
wall time until the target loss first falls to the loss ``today`` ends with, and the ratio to
``today``. Runs checkpoint and a rerun of the command resumes them (``--dir``).
"""
