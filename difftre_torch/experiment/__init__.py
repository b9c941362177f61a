"""Experiments: targets for the loss, readers for the files experimenters have, and the checks
between a file, the job that names it and the structure it is compared with."""

from difftre_torch.experiment.checks import check_target_against_system, fit_sigma
from difftre_torch.experiment.errors import ExperimentFileError, TargetCheckError
from difftre_torch.experiment.readers import (
    FUNCTIONS,
    ExperimentalData,
    load_target,
    parse_composition,
    read_columns,
    read_experiment,
    read_gr,
    write_gr,
)
from difftre_torch.experiment.target import Target

__all__ = [
    "FUNCTIONS",
    "ExperimentFileError",
    "ExperimentalData",
    "Target",
    "TargetCheckError",
    "check_target_against_system",
    "fit_sigma",
    "load_target",
    "parse_composition",
    "read_columns",
    "read_experiment",
    "read_gr",
    "write_gr",
]
