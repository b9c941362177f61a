"""The g-C3N4 recipe: the user's three objectives, end to end, with a report.

``python -m recipes.gc3n4 [--quick]`` (config: ``recipes/gc3n4/config.yaml``):

1. the base MLIP's total G(r), g(r) and lattice parameters at 300 K against the experiment
   (:mod:`recipes.gc3n4.structure`, scored by :mod:`difftre_torch.compare`);
2. DiffTRe refinement against the experiment's total G(r) and lattice parameters in NPT, with
   force matching on the DFT-like data (:mod:`recipes.gc3n4.refine`);
3. base vs refined on held-out frames of the training cell and of larger cells, on the DFT test
   split, and their interlayer binding curves (:mod:`recipes.gc3n4.transfer`);
4. ``report/REPORT.md``, figures and ``summary.json`` (:mod:`recipes.gc3n4.report`).

Inputs are the stand-in world's shipped files (``data/world``); a user's own model, structure,
measured .gr file and DFT frames go in through the config's ``paths``.
"""
