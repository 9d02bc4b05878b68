"""Reading the plain-data files of a model directory: JSON files and the run's ``config.yaml`` record.

Nothing here builds an object, resolves an interpolation or follows a ``_component_``: JSON is parsed with
:mod:`json`, YAML with ``yaml.safe_load``, and a ``${...}`` anywhere in a node that hftl reads is refused
(it would be an instruction to resolve something, which a downloaded file must not give).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from hftl.errors import ModelLoadError

MAX_FILE_BYTES = 64 * 2**20  # a config or metadata file larger than this is not one hftl wrote
MAX_NODES = 100_000  # YAML aliases can make a small file a huge tree: stop walking it here
MAX_DEPTH = 32
# How a run records a path in the shared data folder (hftl.config.record_config; `\${` when saved escaped).
DATA_DIR = re.compile(r"\\?\$\{hftl\.data_dir:([\w./\-~+@%]*)\}")
DATA_COMPONENTS = ("hftl.data.ClassificationData", "hftl.data.loading.ClassificationData")


def _text(file: Path) -> str:
    if not file.is_file():
        raise ModelLoadError(
            f"{file} is missing; the model directory is incomplete. Re-download it or re-run training."
        )
    if file.stat().st_size > MAX_FILE_BYTES:
        raise ModelLoadError(
            f"{file} is larger than {MAX_FILE_BYTES >> 20} MiB; it is not a file hftl wrote."
        )
    return file.read_text(encoding="utf-8")


def read_json(file: Path) -> Any:
    """``file`` parsed as JSON, or a one-line ModelLoadError naming it."""
    try:
        return json.loads(_text(file))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or not UTF-8
        raise ModelLoadError(
            f"Cannot read {file} ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}). The model "
            "directory is damaged; re-download it or re-run training."
        ) from None


def read_record(file: Path) -> Any:
    """``file`` (a run's ``config.yaml``) parsed as plain YAML: no tags, no interpolation."""
    try:
        return yaml.safe_load(_text(file))
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as err:
        raise ModelLoadError(
            f"Cannot read {file} ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}). The model "
            "directory is damaged; re-download it or re-run training."
        ) from None


def recorded_node(
    file: Path, key: str, *, plain: bool = False, data_dir: bool = False, fix: str = "re-run training"
) -> dict[str, Any]:
    """The ``key`` mapping of ``config.yaml`` as data, with every string free of ``${``.

    Args:
        file: the ``config.yaml`` of a model directory.
        key: a top-level section (``encoder``, ``head``, ``data``).
        plain: also refuse nested ``_component_`` nodes, non-string keys and values that are not JSON
            scalars, lists or mappings (the node will be passed to a constructor as keywords).
        data_dir: a whole value ``${hftl.data_dir:REL}`` (how a run records a shared data path) becomes
            ``REL`` inside this machine's shared data folder; every other interpolation is still refused.
        fix: what the user should do instead, for the error message.

    Raises:
        ModelLoadError: no such mapping, an interpolation, or (``plain``) a nested component.
    """
    record = read_record(file)
    node = record.get(key) if isinstance(record, dict) else None
    if not isinstance(node, dict):
        raise ModelLoadError(f"{file} has no `{key}` mapping. Fix: {fix}.")
    budget = [MAX_NODES]

    def walk(value: Any, where: str, depth: int) -> Any:
        budget[0] -= 1
        problem = None
        if budget[0] < 0 or depth > MAX_DEPTH:
            problem = f"is nested deeper than {MAX_DEPTH} or holds more than {MAX_NODES} values"
        elif isinstance(value, str) and data_dir and DATA_DIR.fullmatch(value):
            return _shared_data(DATA_DIR.fullmatch(value).group(1), file, where, fix)
        elif isinstance(value, str) and "${" in value:
            problem = (
                "holds an interpolation (`${...}`); hftl never resolves interpolations from a model directory"
            )
        elif isinstance(value, dict):
            if plain and where != key and "_component_" in value:
                problem = "is a `_component_` node; only plain values are read from a model directory"
            elif plain and not all(isinstance(k, str) for k in value):
                problem = "has a key that is not a string"
            else:
                return {k: walk(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        elif isinstance(value, list):
            return [walk(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        elif plain and not isinstance(value, str | int | float | bool | type(None)):
            problem = f"is a {type(value).__name__}, not a plain value"
        if problem:
            raise ModelLoadError(f"{file}: `{where}` {problem}. Fix: {fix}.")
        return value

    return walk(node, key, 0)


def _shared_data(sub: str, file: Path, where: str, fix: str) -> str:
    from hftl.config.data_dir import shared_data_dir
    from hftl.errors import DataError

    try:
        return str(shared_data_dir() / sub)
    except DataError as err:
        raise ModelLoadError(
            f"{file}: `{where}` is in the shared data folder, but {err}. Fix: {fix}."
        ) from None


def recorded_data(model_dir: Path) -> dict[str, Any]:
    """Keyword arguments of :class:`hftl.data.ClassificationData` recorded in the run's ``config.yaml``.

    Only the one class is accepted; ``trust_remote_code`` must be off.

    Raises:
        ModelLoadError: no plain ``data`` node of that class.
    """
    file, fix = model_dir / "config.yaml", "pass the data to score with --data"
    node = dict(recorded_node(file, "data", plain=True, data_dir=True, fix=fix))
    component = node.pop("_component_", None)
    if component not in DATA_COMPONENTS:
        raise ModelLoadError(
            f"{file}: `data._component_` is {str(component)[:80]!r}; without --data only the recorded "
            f"{DATA_COMPONENTS[0]} is rebuilt. Pass the data to score with --data."
        )
    if node.get("trust_remote_code"):
        raise ModelLoadError(
            f"{file}: `data.trust_remote_code` is set; it is never taken from a file. Fix: {fix}."
        )
    return node
