"""Errors of experiment files and targets: one line each, naming the file, the place in it and
what was expected.

Both are ``ValueError`` subclasses, so a caller that catches ``ValueError`` (the config layer)
keeps working; both pickle (errors cross process boundaries in the samplers).
"""

from __future__ import annotations

import os


class ExperimentFileError(ValueError):
    """A file that cannot be read as an experiment, or whose content does not fit what is asked
    of it. The message is ``"<file>[, line <n>][: <field>]: expected …, got …"`` (1-based line
    number of the file; no line where the problem is not on one line; ``field`` the column or
    header key, e.g. ``"column 3 (dG)"`` or ``"qmax"``)."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, expected: str,
                 field: str | None = None) -> None:
        self.path, self.line, self.expected, self.field = (None if path is None else str(path)), line, expected, field
        where = "<no file>" if self.path is None else self.path
        if line is not None:
            where = f"{where}, line {line}"
        super().__init__(f"{where}: {expected}" if field is None else f"{where}: {field}: {expected}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.expected, self.field))


class TargetCheckError(ValueError):
    """A target that does not fit the model it is compared with (the structure's composition,
    its species, the model's bins). The message is ``"<where>: <field>: expected …, got …"``;
    ``where`` names the target (config entry and file)."""

    def __init__(self, where: str, field: str, expected: str) -> None:
        self.where, self.field, self.expected = where, field, expected
        super().__init__(f"{where}: {field}: {expected}")

    def __reduce__(self):
        return (type(self), (self.where, self.field, self.expected))
