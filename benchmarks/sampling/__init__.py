"""MD throughput: ASE Langevin (AseSampler) against the batched sampler and the model-bound limit.

For a ~100-atom and a ~500-atom periodic cell this measures, in NVT at one state point:

(a) ``AseSampler`` with one replica: ASE's ``Langevin`` driving the potential through
    ``PotentialCalculator`` (one snapshot per call, its own neighbour search every step);
(b) ``BatchedSampler`` with R = 1, 8, 32 replicas (and 128 on CUDA) as one batch: BAOAB,
    Verlet list with a 1 Å skin, blow-up checks every 10 steps, as the trainer runs it;
(c) the model-bound limit for the same R: the same model's forward + force pass alone
    (:func:`difftre_torch.sampling.integrators.forces_and_stress`) on the same R snapshots with a
    precomputed exact neighbour list (no skin), i.e. what one MD step cannot undercut.

Each sampler runs two rounds (``sample`` calls): the first warms up (lazy initialisation, the
TorchScript profiling runs of e3nn/nequip modules) and calibrates the number of steps so that
the timed second round takes about ``--seconds``; the second round's wall time (from the
``sample`` call to its return, snapshots included) gives MD steps/s. Replica-steps/s = R ×
steps/s; atom-steps/s = N × replica-steps/s. Headline: batched/ASE (replica-steps/s ratio) and
batched/limit (time of one limit evaluation over time of one batched step). On CPU the share of
the batched step spent in the model call and in neighbour-list upkeep is measured in the same run
(module functions wrapped with timers; on CUDA in a separate, synchronised pass).

With ``--compiled`` (nequip only) each R also gets a row ``batched, compiled``: the same
BatchedSampler driving the model compiled by ``nequip-compile --mode aotinductor --target batch``
(:func:`difftre_torch.potentials.compiled.compile_nequip`, checked against the eager model with
:func:`~difftre_torch.potentials.compiled.check_same_energies` before timing), as
``CompiledSampling`` gives it to the trainer while θ is unchanged; "vs eager" = its
replica-steps/s over the eager batched row's.

With ``--compile-step`` each R also gets a row ``batched, compiled step, deferred checks``: the
eager model with the integrator's drift and kick under ``torch.compile``
(``SamplerConfig.compile_step``; the first round compiles and is the warm-up) and the per-step
flags read on the host only at the blow-up checks (``deferred_checks``); its limit is the eager
model's. With ``--compiled`` as well, the compiled model's rows use both too.

Models: ``nequip`` (a small NequIP model trained here with ``nequip-train`` for three epochs on
EMT-labelled rattled fcc Cu, config below: float32, l_max 1, 16 features, 2 layers, r_max 4 Å;
fcc Cu cells of 108 and 500 atoms at 300 K, Δt 2 fs) or ``lj`` (LennardJones,
σ 3.405 Å, ε 0.0104 eV, r_c 8.5 Å, float64; fcc argon cells of 108 and 500 atoms at 80 K,
Δt 5 fs). Default: both, one table each (nequip first; skipped with a note if it does not
train here). ``deepmd``: the stand-in world's shipped DeePMD-kit model (se_e2_a, float64,
r_c 6 Å, its own forces and virial) on g-C3N4 cells of 112 and 252 atoms at 300 K, Δt 1 fs;
``--model deepmd`` alone writes its own section (``## sampling, DeePMD-kit``).

    python -m benchmarks.sampling [--device cpu|cuda] [--model lj|nequip|deepmd ...]
                                  [--replicas 1 8 32] [--seconds 5] [--threads N] [--compiled]
                                  [--compile-step]
                                  [--out benchmarks/RESULTS.md]

Targets (issue 6): on GPU, batched ≥ 20× ASE and ≥ 90 % of the model-bound limit at the best R;
on CPU, batched ≥ 2× ASE at R ≥ 8.

Modules: :mod:`.models` (cells, models, the compiled model), :mod:`.timing` (timed sampler
rounds, the model-bound limit, one system's rows), :mod:`.report` (the RESULTS.md section),
:mod:`.__main__` (command line).
"""
