"""difftre_torch: differentiable trajectory reweighting (DiffTRe) for machine-learned potentials."""

__version__ = "0.2.0"  # the one place the version lives; setup.cfg reads it (attr:)
