"""An on-disk cache of frozen-encoder features, stored as ``datasets`` Arrow datasets.

Each entry is a folder ``<cache dir>/<key>/`` written by ``Dataset.save_to_disk`` plus
``hftl_cache.json`` (what the key was computed from). The key is a hash of everything the features
depend on, so a stale entry is never reused:

* the encoder: class, name or path, requested ``revision`` and the Hub commit it resolved to, a hash
  of the loaded backbone weights (so a local directory whose weights changed, or a model trained
  from a config, gets a new key), the processor (tokenizer vocabulary and settings / feature
  extractor config), pooling, layer, ``max_length`` / ``max_duration``;
* what is stored (pooled vectors or per-layer token states, and their dtype) and the autocast precision;
* the data: ``Dataset._fingerprint`` (datasets derives it from the source files, their modification
  times and every transform), the row count and the input column.

Entries are written atomically: into a temporary sibling folder that is renamed into place only when
complete, so a crash mid-write leaves no entry behind.

Example:
    >>> cache = FeatureCache(default_cache_dir())  # doctest: +SKIP
    >>> features, hit = cached_pooled(encoder, splits["train"], cache=cache)  # doctest: +SKIP
    >>> features.shape, hit  # second call: read from disk, no encoder pass  # doctest: +SKIP
    (torch.Size([60614, 384]), True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from torch import nn

from hftl.data.fingerprints import processor_fingerprint
from hftl.embeddings.features import (
    Autocast,
    encode_pooled,
    encode_states,
    pooled_from_dataset,
    pooled_to_dataset,
    states_from_dataset,
    states_to_dataset,
)
from hftl.encoders.base import Encoder, hidden_size_of
from hftl.version import __version__

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
META_FILE = "hftl_cache.json"
Level = Literal["pooled", "states"]


def default_cache_dir(configured: str | os.PathLike | None = None) -> Path:
    """``configured``, else ``$HFTL_CACHE``, else ``~/.cache/hftl/features``."""
    path = configured or os.environ.get("HFTL_CACHE") or Path.home() / ".cache" / "hftl" / "features"
    return Path(path).expanduser()


_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every tensor in ``module.state_dict()`` (names, dtypes, shapes and bytes).

    About 0.2 s per 100 MB of weights; it catches any change of the weights, whatever their source.
    The hash is remembered per module until a tensor is replaced or modified in place (torch's
    version counter), so the splits of one run hash the weights once.
    """
    state = sorted(module.state_dict().items())
    signature = tuple((name, t.data_ptr(), t._version, t.device.type) for name, t in state)
    known = _FINGERPRINTS.get(module)
    if known is not None and known[0] == signature:
        return known[1]
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state:
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tensor.numel()}".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    _FINGERPRINTS[module] = (signature, digest.hexdigest())
    return digest.hexdigest()


def encoder_description(encoder: Encoder, *, level: Level, revision: str | None = None) -> dict[str, Any]:
    """Everything about ``encoder`` that the cached features depend on (JSON-serialisable)."""
    config = encoder.base_model.config
    desc: dict[str, Any] = {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "model": encoder.name_or_path,
        "revision": revision,
        "commit": getattr(config, "_commit_hash", None),
        "weights": weights_fingerprint(encoder.base_model),
        "processor": processor_fingerprint(encoder.processor),
        "max_length": getattr(encoder, "max_length", None),
        "max_duration": getattr(encoder, "max_duration", None),
    }
    if level == "pooled":  # per-layer states do not depend on pooling or the layer choice
        desc |= {"pooling": encoder.pool.method, "layer": encoder.layer}
    return desc


def cache_key(
    encoder: Encoder,
    dataset: datasets.Dataset,
    *,
    level: Level,
    revision: str | None = None,
    precision: str = "no",
    dtype: str = "float32",
) -> tuple[str, dict[str, Any]]:
    """The cache key of ``encoder``'s features of ``dataset`` and the description it hashes.

    Args:
        encoder: the frozen encoder.
        dataset: the split being encoded (a standardized split of :class:`hftl.data.ClassificationData`).
        level: ``pooled`` (one vector per example) or ``states`` (every layer's token/frame states).
        revision: the Hub revision the encoder was loaded at (``encoder.revision`` in the config).
        precision: autocast precision of the encoder pass (``no``, ``fp16``, ``bf16``).
        dtype: storage dtype.

    Returns:
        ``(key, description)``: a hex digest naming the cache folder, and what it was computed from.
    """
    input_column = next((c for c in ("text", "audio", "image") if c in dataset.column_names), None)
    description = {
        "format": CACHE_FORMAT,
        "level": level,
        "dtype": dtype,
        "precision": precision,
        "encoder": encoder_description(encoder, level=level, revision=revision),
        "data": {"fingerprint": dataset._fingerprint, "rows": len(dataset), "input_column": input_column},
    }
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], description


class FeatureCache:
    """Cached feature datasets under ``root``, one folder per key, written atomically.

    Args:
        root: the cache folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> datasets.Dataset | None:
        """The cached dataset of ``key``, or ``None`` when absent or unreadable (then it is removed)."""
        path = self.path(key)
        if not (path / META_FILE).is_file():
            if path.exists():  # renamed into place complete, so damaged later (e.g. files deleted by hand)
                logger.warning("Feature cache entry %s has no %s; recomputing it.", path, META_FILE)
                shutil.rmtree(path, ignore_errors=True)
            return None
        try:
            meta = json.loads((path / META_FILE).read_text())
            if meta.get("key") != key:
                raise ValueError(f"{META_FILE} names key {meta.get('key')!r}")
            return datasets.load_from_disk(str(path))
        except (OSError, ValueError, FileNotFoundError) as err:
            logger.warning("Feature cache entry %s is damaged (%s); recomputing it.", path, err)
            shutil.rmtree(path, ignore_errors=True)
            return None

    def save(self, key: str, dataset: datasets.Dataset, description: dict[str, Any]) -> datasets.Dataset:
        """Writes ``dataset`` under ``key`` atomically and returns the stored (memory-mapped) copy.

        The dataset and ``hftl_cache.json`` go to a temporary sibling folder, renamed into place at the
        end; on any failure the temporary folder is removed, so no partial entry is ever visible. When
        another process stored the same key meanwhile, its entry is kept.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            dataset.save_to_disk(str(tmp))
            meta = {"key": key, "hftl_version": __version__, **description}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            try:
                tmp.rename(final)
            except OSError:
                if not (final / META_FILE).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run stored the same features first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return datasets.load_from_disk(str(final))


def cached_pooled(
    encoder: Encoder,
    dataset: datasets.Dataset,
    *,
    cache: FeatureCache | None,
    revision: str | None = None,
    precision: str = "no",
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    autocast: Autocast = contextlib.nullcontext,
    num_workers: int = 0,
) -> tuple[torch.Tensor, bool]:
    """Pooled features of ``dataset``: read from ``cache``, or encoded once and stored there.

    Args:
        encoder: a frozen encoder with a fixed pooling (``cls``, ``mean``, ``stats``).
        dataset: the split to encode.
        cache: where to look and store; ``None`` encodes without caching.
        revision: the Hub revision the encoder was loaded at (part of the key).
        precision: autocast precision of the pass (part of the key).
        device: where the encoder runs.
        batch_size: examples per forward pass.
        autocast: context manager factory for mixed precision (``accelerator.autocast``).
        num_workers: DataLoader workers.

    Returns:
        ``(features, hit)``: ``(N, D)`` float32 features in dataset order, and whether they came from the cache.
    """
    key, description = cache_key(encoder, dataset, level="pooled", revision=revision, precision=precision)
    stored = cache.load(key) if cache is not None else None
    if stored is not None:
        return pooled_from_dataset(stored), True
    features = encode_pooled(
        encoder, dataset, device=device, batch_size=batch_size, autocast=autocast, num_workers=num_workers
    )
    if cache is not None:
        cache.save(key, pooled_to_dataset(features), description)
    return features, False


def cached_states(
    encoder: Encoder,
    dataset: datasets.Dataset,
    *,
    cache: FeatureCache | None,
    dtype: Literal["float16", "float32"] = "float16",
    max_bytes: float = float("inf"),
    revision: str | None = None,
    precision: str = "no",
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    autocast: Autocast = contextlib.nullcontext,
    num_workers: int = 0,
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, bool]:
    """Every layer's token/frame states of ``dataset`` (context level), from ``cache`` or encoded once.

    Args:
        encoder: a context-level encoder (:class:`hftl.embeddings.ContextTextEncoder`, ...).
        dtype: storage dtype of the states.
        max_bytes: states larger than this are neither kept nor stored (see :func:`encode_states`).
        **others**: as for :func:`cached_pooled`.

    Returns:
        ``((values, lengths) | None, hit)``: flat ``(S, K, H)`` states and ``(N,)`` lengths, or ``None``
        when they exceed ``max_bytes``; and whether they came from the cache.
    """
    key, description = cache_key(
        encoder, dataset, level="states", revision=revision, precision=precision, dtype=dtype
    )
    stored = cache.load(key) if cache is not None else None
    if stored is not None:
        width = hidden_size_of(encoder.base_model.config)
        return states_from_dataset(stored, num_layers=encoder.num_states, width=width), True
    states = encode_states(
        encoder, dataset, device=device, batch_size=batch_size, autocast=autocast,
        dtype=getattr(torch, dtype), max_bytes=max_bytes, num_workers=num_workers,
    )  # fmt: skip
    if states is not None and cache is not None:
        cache.save(key, states_to_dataset(*states), description)
    return states, False
