"""Exceptions raised for user-facing problems.

Every message names the field or file, what was found, what is allowed and how to fix it.
The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HftlError(Exception):
    """Base class of every error hftl reports to a user (bad config, data, model dir, ...)."""


class ConfigError(HftlError):
    """One or more problems in a recipe config.

    Args:
        problems: one line per problem, each naming the dotted key (``optimizer.lr``).
        source: the config file the problems were found in, if any.
    """

    def __init__(self, problems: list[str] | str, *, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            msg = f"Config error{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            msg = f"{len(self.problems)} config errors{where}:\n{lines}"
        super().__init__(msg)


class DataError(HftlError):
    """A problem with a data file, column, split or label."""


class ModelLoadError(HftlError):
    """A model directory or Hub id that cannot be loaded."""


class TrainingError(HftlError):
    """Training cannot go on (the loss diverged to NaN/inf); nothing from the bad steps is saved."""


class OutputError(HftlError):
    """Writing a run's outputs failed (disk full, folder removed or replaced); nothing half-written is kept."""
