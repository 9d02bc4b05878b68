"""Where the shared data sets live: one search order for ``${hftl.data_dir:}`` in configs and for the
built-in data sets (:mod:`hftl.data.builtin`)."""

from __future__ import annotations

import os
from pathlib import Path

from hftl.errors import DataError


def shared_data_dir() -> Path:
    """The shared data folder: env ``HFTL_DATA_DIR``, else the first ``../shared/data`` or ``shared/data``
    found from the current directory, else ``../shared/data`` next to the repo.

    Raises:
        DataError: if none of them is a folder.
    """
    env = os.environ.get("HFTL_DATA_DIR")
    if env:
        if not Path(env).is_dir():
            raise DataError(
                f"`HFTL_DATA_DIR` = {env!r} is not a folder; point it at the folder holding the data sets."
            )
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    candidates = [
        Path.cwd() / ".." / "shared" / "data",
        Path.cwd() / "shared" / "data",
        repo / ".." / "shared" / "data",
    ]
    found = next((p.resolve() for p in candidates if p.is_dir()), None)
    if found is None:
        raise DataError(
            f"No shared data folder found (tried {', '.join(str(p) for p in candidates)}); set the environment "
            "variable `HFTL_DATA_DIR` to the folder holding the data sets (with mnist/ and usps/)."
        )
    return found
