"""Experiments: targets for the loss and readers for the files experimenters have."""

from difftre_torch.experiment.readers import (
    FUNCTIONS,
    ExperimentalData,
    ExperimentFileError,
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
    "parse_composition",
    "read_columns",
    "read_experiment",
    "read_gr",
    "write_gr",
]
