"""What hftl writes, and how it knows a file or folder is its own.

Every writer of run outputs (checkpoints, models, metrics, plots, caches) uses these: :func:`writing` turns
a failed write into one :class:`~hftl.errors.OutputError`, :func:`record_output` adds the written entry to
the owner marker of the run folder it lies in (``.hftl_run.json``), and :func:`is_hftl_json` /
:func:`is_hftl_model_dir` tell hftl's files from anyone else's, so nothing hftl did not write is replaced.
Claiming a run folder before a run (fingerprints, ``--overwrite``) is :mod:`hftl.training.run_dir`.

This module sits at the bottom of the package, next to :mod:`hftl.errors`: storage
(:mod:`hftl.models.io`), evaluation and training all write through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hftl.errors import ConfigError, OutputError

__all__ = [
    "MARKER_FILE",
    "MODEL_META_FILE",
    "WRITTEN_BY",
    "WRITTEN_BY_KEY",
    "is_entry_name",
    "is_hftl_json",
    "is_hftl_model_dir",
    "is_marker_file",
    "read_marker",
    "record_output",
    "write_marker",
    "writing",
]

MARKER_FILE = ".hftl_run.json"
WRITTEN_BY_KEY = "written_by"  # also the key that marks a JSON results file (metrics.json) as hftl's
WRITTEN_BY = "hftl"
MODEL_META_FILE = "hftl_model.json"
_RECORD_DEPTH = 4  # record_output looks this many folders up for the run's marker (runs/<name>/checkpoints)


@contextlib.contextmanager
def writing(what: str, path: str | os.PathLike) -> Iterator[None]:
    """Turns an ``OSError`` while writing ``what`` to ``path`` into a one-line :class:`OutputError`."""
    try:
        yield
    except OSError as err:
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        raise OutputError(
            f"cannot write {what} to {path}: {err.strerror or err}{where}. Nothing half-written is used. "
            "Fix: make sure `output_dir` is a writable folder with free space, then run the same command "
            "again (training resumes from its last checkpoint)."
        ) from err


def is_hftl_json(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON object hftl wrote (it carries ``"written_by": "hftl"``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(WRITTEN_BY_KEY) == WRITTEN_BY


def is_hftl_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model directory hftl wrote (a real folder holding ``hftl_model.json``)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MODEL_META_FILE).is_file()


def read_marker(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of ``run_dir``; ``None`` when there is none; ConfigError when it is damaged."""
    marker = Path(run_dir) / MARKER_FILE
    if not marker.exists() and not marker.is_symlink():
        return None
    try:
        if marker.is_symlink():
            raise ValueError("it is a symlink")
        data = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get(WRITTEN_BY_KEY) != WRITTEN_BY:
            raise ValueError("it is not an hftl run marker")
        outputs = data.get("outputs", [])
        if not isinstance(outputs, list) or not all(is_entry_name(n) for n in outputs):
            raise ValueError("its `outputs` list is malformed")
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"`output_dir`: {marker} is damaged ({err}), so hftl cannot tell which files in {run_dir} it wrote; "
            "choose a new `output_dir`, or move the folder away yourself"
        ) from err
    return data


def is_entry_name(name: Any) -> bool:
    """A plain top-level name in a run folder (no path, not the marker): what ``outputs`` may list."""
    return isinstance(name, str) and name not in ("", ".", "..", MARKER_FILE) and Path(name).name == name


def is_marker_file(name: str) -> bool:
    """The marker, or a temporary copy a killed process left while replacing it."""
    return name == MARKER_FILE or (name.startswith(f".{MARKER_FILE}.") and name.endswith(".tmp"))


def write_marker(run_dir: Path, data: dict[str, Any]) -> None:
    """Replaces the marker of ``run_dir`` by ``data`` atomically (a temporary sibling renamed over it)."""
    tmp = run_dir / f".{MARKER_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, run_dir / MARKER_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def record_output(path: str | os.PathLike) -> None:
    """Adds the top-level entry of ``path`` to the ``outputs`` of the hftl run folder it lies in, if any.

    Called by every writer of run outputs (checkpoints, model, metrics, plots) on the main process, so
    ``--overwrite`` later removes exactly what hftl wrote. A path in no marked run folder is ignored.
    """
    path = Path(os.path.abspath(path))
    for parent in list(path.parents)[:_RECORD_DEPTH]:
        if (parent / MARKER_FILE).is_file():
            try:
                data = read_marker(parent)
            except ConfigError:
                return  # a damaged marker is reported by the next claim, not by a writer mid-run
            name = path.relative_to(parent).parts[0]
            if data is not None and name not in data.get("outputs", []):
                data["outputs"] = sorted({*data.get("outputs", []), name})
                with writing("the run marker", parent / MARKER_FILE):
                    write_marker(parent, data)
            return
