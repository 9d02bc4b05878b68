"""What a checkpoint folder holds on disk, and whether it is intact (see :mod:`hftl.training.checkpoint`).

``hftl_state.json`` is the manifest: the recipe's state plus ``files``, the size and sha256 of every file
accelerate wrote; ``COMPLETE`` holds the sha256 of the manifest and is written last; ``.hftl_checkpoint``
marks a folder as hftl's, so that only such folders are ever removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

STATE_FILENAME = "hftl_state.json"
COMPLETE_FILENAME = "COMPLETE"
OWNER_FILENAME = ".hftl_checkpoint"
# 2: `files` records {"size", "sha256"} per file. 3: one Accelerator state per run (a checkpoint holds one
# run's model, optimizer, scheduler), weights files may hold a subset (`weights`: what was left out).
FORMAT_VERSION = 3
OLD_FORMAT = "was written by another hftl version"  # in the reason of a checkpoint of another format
STEP_DIR = re.compile(r"^step-(\d{8,})$")
_verified: dict[str, str] = {}  # checkpoint folder -> COMPLETE digest whose file hashes were checked


def json_default(value: Any) -> Any:
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):  # NumPy / torch scalars
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def owned(path: Path) -> bool:
    """A folder hftl's checkpointing created (it holds the owner file), not a symlink."""
    return path.is_dir() and not path.is_symlink() and (path / OWNER_FILENAME).is_file()


def read_state(path: Path) -> tuple[dict | None, str | None, str]:
    """``(state, None, digest)`` when ``COMPLETE`` matches ``hftl_state.json``, else ``(None, why, "")``."""
    if not path.is_dir():
        return None, "it is not a directory", ""
    marker = path / COMPLETE_FILENAME
    if not marker.is_file():
        return None, f"no {COMPLETE_FILENAME} marker (the save did not finish)", ""
    try:
        expected = marker.read_text(encoding="utf-8").strip()
        raw = (path / STATE_FILENAME).read_bytes()
    except OSError as err:
        return None, f"cannot read {COMPLETE_FILENAME} or {STATE_FILENAME} ({err})", ""
    if hashlib.sha256(raw).hexdigest() != expected:
        return (
            None,
            f"{STATE_FILENAME} does not match the sha256 in {COMPLETE_FILENAME} (changed or corrupt)",
            "",
        )
    try:
        state = json.loads(raw)
    except ValueError as err:
        return None, f"{STATE_FILENAME} is not valid JSON ({err})", ""
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        return None, f"it {OLD_FORMAT} (checkpoint format {found!r}; this hftl reads {FORMAT_VERSION})", ""
    match = STEP_DIR.match(path.name)
    if match and int(match.group(1)) != state.get("step"):
        return None, f"{STATE_FILENAME} says step {state.get('step')!r} but the folder is {path.name}", ""
    return state, None, expected


def check(path: Path, *, verify: bool = False) -> tuple[dict | None, str | None]:
    """``(state, None)`` for a complete checkpoint, else ``(None, why it is not)``.

    Sizes are always compared with the manifest; ``verify`` also compares each file's sha256 (once per
    checkpoint and process: a verified folder whose ``COMPLETE`` is unchanged is not hashed again).
    """
    state, reason, digest = read_state(path)
    if reason:
        return None, reason
    files = state.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
        return None, f"{STATE_FILENAME} has a malformed `files` list"
    try:  # a folder being pruned or replaced while it is read: its files vanish between two calls
        for name, record in files.items():
            file = path / name
            if not file.is_file() or file.is_symlink():
                return None, f"accelerate file {name} is missing"
            size = file.stat().st_size
            if size != record["size"]:
                return (
                    None,
                    f"accelerate file {name} has {size} bytes, expected {record['size']} (truncated?)",
                )
        if verify and _verified.get(str(path)) != digest:
            for name, record in files.items():
                if sha256_file(path / name) != record["sha256"]:
                    return (
                        None,
                        f"accelerate file {name} does not match its sha256 in {STATE_FILENAME} (corrupt)",
                    )
            _verified[str(path)] = digest
    except FileNotFoundError as err:
        return None, f"a file vanished while it was read ({err.filename})"
    return state, None


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_manifest(tmp: Path, payload: dict) -> None:
    """Hashes and fsyncs every file in ``tmp``, then writes ``hftl_state.json`` and, last, ``COMPLETE``."""
    files = {}
    for file in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != OWNER_FILENAME):
        files[file.relative_to(tmp).as_posix()] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
        fsync_path(file)
    raw = json.dumps({**payload, "files": files}, indent=2, default=json_default).encode("utf-8")
    write_synced(tmp / STATE_FILENAME, raw)
    write_synced(tmp / COMPLETE_FILENAME, (hashlib.sha256(raw).hexdigest() + "\n").encode("ascii"))
    for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        fsync_path(folder)
