"""The g-C3N4 recipe: the user's three objectives on the shipped stand-in world, as config files.

``full.yaml`` (a GPU, or hours on CPU) and ``quick.yaml`` (CPU) run through the library's one
code path, ``difftre refine`` (:mod:`difftre_torch.workflow.pipeline`):

1. the base MLIP's total G(r), g(r) and lattice parameters at 300 K against the experiment, in
   NPT and in NVT at the experiment's cell;
2. DiffTRe refinement of a pair correction on the frozen base against the total G(r), a and the
   interlayer spacing in NPT, with force matching on the DFT-like frames (λ; full: a λ scan);
3. base vs refined on held-out frames of the training cell and of larger cells, on the DFT test
   split, the interlayer binding curves and the pair-correction ceiling;
4. ``report/REPORT.md``, figures and ``summary.json`` with the acceptance checks.

``python -m recipes.gc3n4 [--quick] [difftre refine options]`` is a thin wrapper over
``difftre refine recipes/gc3n4/{full,quick}.yaml``. A user's own model, structure, measured .gr
file and DFT frames go in by editing a copy of the config (docs/config.md).
"""
