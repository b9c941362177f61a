"""How many CPU threads torch uses for a job, chosen so that a shared machine does not collapse it.

Two settings matter on a CPU:

* **the OpenMP wait policy.** torch's intra-op pool is OpenMP (libgomp on Linux). By default a
  thread that finishes its share of a parallel region spins, waiting for its siblings. When
  another process holds one of the cores, a sibling is descheduled, and every small parallel
  region waits a whole scheduler time slice for it: small tensor operations then ran ~240×
  slower with 2 threads than with 1. ``OMP_WAIT_POLICY=PASSIVE``
  makes waiting threads sleep instead. It must be in the environment before the OpenMP runtime
  starts (before ``import torch``): :func:`prepare_openmp` sets it unless the user chose a policy.
* **the intra-op thread count.** One MD step's tensors (a few hundred atoms) are too small for a
  second thread to pay for its synchronisation, and a thread on a core another process holds is
  worse than none. :func:`choose_threads` takes one thread for small work, else one per core that
  is free (usable cores less the busy ones, measured over a short interval), and says why.

The command line (:mod:`difftre_torch.cli`) calls both at start and prints the choice;
``--threads N`` (or ``DIFFTRE_THREADS=N``) overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SMALL_WORK_ATOMS = 4096
"""Atoms evaluated per MD step (atoms × replicas in one batch) below which one thread is used.
At 224 atoms (the quick g-C3N4 job, NequIP) a second thread gained 14 % on idle cores and lost
several-fold beside a busy process; where the crossover lies for bigger batches is not measured,
so this bound is a conservative choice: ``--threads`` sets the count for a known-large job."""

THREADS_ENV = "DIFFTRE_THREADS"
"""Environment variable that fixes the thread count (as ``--threads`` does)."""


def prepare_openmp(environ: dict | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) unless it holds a
    policy already; returns the policy in force. Call before the first ``import torch`` (the
    OpenMP runtime reads it once, when it starts)."""
    environ = os.environ if environ is None else environ
    return environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and the facts it was chosen from.

    threads: torch intra-op threads; usable_cores: CPUs this process may run on; busy_cores:
    those other processes kept busy when measured (None: not measured); atoms_per_step: the work
    size; reason: why, in words."""

    threads: int
    usable_cores: int
    busy_cores: float | None
    atoms_per_step: int | None
    reason: str

    def describe(self) -> str:
        """One line for the start of a run's log."""
        policy = os.environ.get("OMP_WAIT_POLICY", "unset")
        return (f"[difftre] torch threads: {self.threads} ({self.reason}; OMP_WAIT_POLICY={policy}); "
                f"override with --threads N")


def choose_threads(atoms_per_step: int | None, requested: int | None = None, *,
                   usable: int | None = None, busy: float | None = None,
                   small_work_atoms: int = SMALL_WORK_ATOMS) -> ThreadChoice:
    """The intra-op thread count for a job evaluating ``atoms_per_step`` atoms per MD step.

    ``requested`` (``--threads``; else ``$DIFFTRE_THREADS``): used as given. Otherwise one thread
    when ``atoms_per_step < small_work_atoms`` (or unknown), else the free cores:
    max(1, usable − round(busy)), ``busy`` measured over 0.5 s when not given
    (:func:`~difftre_torch.environment.busy_cores`). ``usable`` defaults to this process's CPUs."""
    from difftre_torch.environment import busy_cores, usable_cores

    usable = usable_cores() if usable is None else int(usable)
    if requested is None and os.environ.get(THREADS_ENV, "").strip():
        text = os.environ[THREADS_ENV].strip()
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{THREADS_ENV}={text!r}: expected a positive integer")
        requested = int(text)
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"--threads {requested}: expected a positive integer")
        return ThreadChoice(int(requested), usable, None, atoms_per_step, "as requested")
    if atoms_per_step is None or atoms_per_step < small_work_atoms:
        size = "unknown work size" if atoms_per_step is None else f"{atoms_per_step} atoms per MD step"
        return ThreadChoice(1, usable, None, atoms_per_step,
                            f"{size}, below {small_work_atoms}: small tensors, one thread is fastest")
    busy = busy_cores(0.5) if busy is None else float(busy)
    free = max(1, usable - round(busy))
    return ThreadChoice(free, usable, busy, atoms_per_step,
                        f"{atoms_per_step} atoms per MD step; {usable} usable cores, {busy:.1f} busy")


def apply(choice: ThreadChoice) -> None:
    """``torch.set_num_threads(choice.threads)``."""
    import torch

    torch.set_num_threads(choice.threads)
