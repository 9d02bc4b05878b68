"""Fingerprints that tell whether two runs are the same run: one of the resolved config, one of the data.

A run's ``output_dir`` records both in its owner marker (:mod:`hftl.training.run_dir`); resuming, or
re-running into the folder, is allowed only when both match, so a run never continues (or re-saves the
weights of) another run under a new config.

* **Config fingerprint**: sha256 over the recipe name and every leaf of the resolved config, except the
  keys in :data:`EXCLUDED_KEYS` and :data:`EXCLUDED_NAMES`, which only say where results, reports and caches
  go or what is logged (``output_dir``, ``train.resume``, ``push_to_hub``, ``train.report_to``,
  ``train.log_every_steps``, ``cache.dir``, ``*.bad_audio_report``). Each leaf also gets
  its own short hash, so a mismatch names the keys that changed without writing any value (values may
  come from ``${oc.env:...}``) into the marker.
* **Data fingerprint**: cheap, from file metadata only: every string in the config that names an existing
  local file or folder (data files, audio/image folders, a local encoder or teacher model) contributes
  the relative path, size and modification time of each file under it (a saved hftl model contributes
  only its weights and ``hftl_model.json``, so ``hftl card`` or ``hftl eval`` on it changes nothing). Data
  read from the Hub is identified by its id in the config fingerprint. Copying a data file without
  keeping its modification time (``cp`` without ``-p``) therefore counts as new data.

Example:
    >>> fp = config_fingerprint(cfg, recipe="finetune")  # doctest: +SKIP
    >>> fp.digest, fp.changed(old_parts)  # doctest: +SKIP
    ('4f1c9a0e2b7d6c35', ['optimizer.lr'])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

EXCLUDED_KEYS = frozenset(
    {"output_dir", "train.resume", "push_to_hub", "train.report_to", "train.log_every_steps", "cache.dir"}
)
EXCLUDED_NAMES = frozenset({"bad_audio_report"})  # at any depth: where a data node writes its report
RECIPE_KEY = "<recipe>"  # the part for the recipe's name (not a config key)
DIGEST_CHARS = 16  # 64 bits: plenty to tell runs apart, short enough to read in an error message
MAX_FILES = 100_000  # files stat'ed per run; a larger tree is fingerprinted by its first MAX_FILES (sorted)
_MODEL_META = "hftl_model.json"
_RUN_MARKER = ".hftl_run.json"


@dataclass(frozen=True)
class Fingerprint:
    """A digest and the per-key hashes it was computed from.

    Args:
        digest: hex digest of the whole (``DIGEST_CHARS`` characters).
        parts: dotted config key -> short hash of that key's value (config) or of the files it names (data).
    """

    digest: str
    parts: dict[str, str]

    def changed(self, old_parts: dict[str, str], *, ignore_new: bool = False) -> list[str]:
        """Keys whose hash differs from ``old_parts``, were removed, or (unless ``ignore_new``) were added."""
        keys = set(old_parts) if ignore_new else set(self.parts) | set(old_parts)
        return sorted(k for k in keys if self.parts.get(k) != old_parts.get(k))


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:DIGEST_CHARS]


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a plain container; lists index as ``key[0]``."""
    if isinstance(node, dict):
        if not node and prefix:
            yield prefix, {}
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        if not node and prefix:
            yield prefix, []
        for i, value in enumerate(node):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _included(key: str) -> bool:
    if key.rsplit(".", 1)[-1] in EXCLUDED_NAMES:
        return False
    return not any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in EXCLUDED_KEYS)


def _resolved_leaves(cfg: DictConfig) -> list[tuple[str, Any]]:
    container = OmegaConf.to_container(cfg, resolve=True)
    return [(key, value) for key, value in _leaves(container) if _included(key)]


def config_fingerprint(cfg: DictConfig, *, recipe: str) -> Fingerprint:
    """The fingerprint of ``cfg`` resolved, without :data:`EXCLUDED_KEYS`, for the recipe ``recipe``.

    Args:
        cfg: the validated run config.
        recipe: the recipe's name (``finetune``, ``adapt``, ...); a different recipe is a different run.

    Returns:
        The digest and one short hash per config leaf (values are never stored).
    """
    parts = {key: _digest(value) for key, value in _resolved_leaves(cfg)}
    parts[RECIPE_KEY] = _digest(recipe)
    return Fingerprint(_digest(parts), parts)


def _local_path(value: Any) -> Path | None:
    """``value`` as an existing local path, or None (URLs, Hub ids, plain words, the filesystem's roots)."""
    if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value or "://" in value:
        return None
    try:
        path = Path(value)
        if not path.exists():
            return None
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        return None  # "." or ".." as a config value: not a data folder worth walking
    return resolved


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.rglob("*") if p.name == _MODEL_META or p.suffix == ".safetensors")


def _tree(path: Path, skip: Path | None, budget: list[int]) -> Iterator[Path]:
    """Files under ``path`` in sorted order, without ``skip``'s subtree, at most ``budget[0]`` in all."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if budget[0] <= 0:
            return
        child = Path(entry.path)
        if skip is not None and child == skip:
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _tree(child, skip, budget)
        elif entry.is_file():
            budget[0] -= 1
            yield child


def _files_of(path: Path, skip: Path | None, budget: list[int]) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / _RUN_MARKER).is_file() or (path / "model" / _MODEL_META).is_file():
        path = path / "model"  # an hftl run folder given as a model: only its model counts
    if (path / _MODEL_META).is_file():
        return _model_files(path)
    return list(_tree(path, skip, budget))


def _stat_record(path: Path, root: Path) -> list[Any]:
    name = path.relative_to(root).as_posix() if path != root else path.name
    try:
        st = path.stat()
    except OSError:
        return [name, None, None]
    return [name, st.st_size, st.st_mtime_ns]


def local_inputs(cfg: DictConfig) -> dict[str, Path]:
    """Config keys whose value names an existing local file or folder, with that path resolved."""
    found = {}
    for key, value in _resolved_leaves(cfg):
        if not key.endswith("_component_"):
            path = _local_path(value)
            if path is not None:
                found[key] = path
    return found


def data_fingerprint(cfg: DictConfig, *, output_dir: str | Path | None = None) -> Fingerprint:
    """The fingerprint of the local files ``cfg`` names (size and modification time of each).

    Args:
        cfg: the validated run config.
        output_dir: the run's own folder, never counted (a data folder may contain it).

    Returns:
        The digest and one short hash per config key that names an existing local path. Keys naming
        paths that do not exist (yet) are left out, so a teacher model trained by the run itself does not
        change the fingerprint of a resumed run.
    """
    skip = Path(output_dir).resolve() if output_dir is not None else None
    budget, parts = [MAX_FILES], {}
    for key, path in local_inputs(cfg).items():
        if skip is not None and (path == skip or skip in path.parents):
            continue
        parts[key] = _digest([_stat_record(f, path) for f in _files_of(path, skip, budget)])
    return Fingerprint(_digest(parts), parts)
