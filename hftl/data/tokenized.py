"""Tokenize text splits once, up front, with ``datasets.Dataset.map``, and reuse the result across runs.

:class:`~hftl.data.TextCollator` then only pads the stored token ids of each batch (``tokenizer.pad``)
instead of tokenizing raw text at every step of every epoch: on long texts (Amazon reviews) that was a
quarter of a tiny model's CPU step time (see ``benchmarks/results/throughput.md``).

Caching is datasets' own: the tokenized split is an Arrow file written by ``map`` and loaded back by
``map`` in any later run (``load_from_cache_file``). Its name comes from an explicit fingerprint,
identical in every process and invalidated by anything the token ids depend on:

* the data: ``Dataset._fingerprint``, which datasets derives from the source files (path and
  modification time), their contents for in-memory tables, and every transform applied since;
* the tokenizer: :func:`hftl.data.fingerprints.processor_fingerprint` (vocabulary, normalizer,
  pre-tokenizer, post-processor with its special tokens, truncation side), not the Python object, whose
  pickle hash varies between processes;
* ``max_length``, the input column and the cache format version below.

The file lies next to the data's own Arrow cache (the ``datasets`` cache folder of a csv/json/parquet/Hub
source), or in ``<HF_DATASETS_CACHE>/hftl_tokenized`` for in-memory data (e.g. Blitzer domains).
A :class:`datasets.IterableDataset` (streaming) is tokenized lazily while it is read: nothing is cached.

Example:
    >>> splits = pretokenize_splits(data.load(), encoder.processor, max_length=128)  # doctest: +SKIP
    >>> splits["train"].column_names  # doctest: +SKIP
    ['label', 'input_ids', 'token_type_ids', 'attention_mask']
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from hftl.data.fingerprints import processor_fingerprint
from hftl.errors import DataError

logger = logging.getLogger(__name__)

TOKENIZED_FORMAT = 1  # bump when the stored columns change: old cache files are then never read
TokenizableData = datasets.Dataset | datasets.IterableDataset


class _Tokenize:
    """The ``map`` function: one batch of texts → token ids, truncated, unpadded."""

    def __init__(self, tokenizer: Any, *, max_length: int | None, column: str):
        self.tokenizer, self.max_length, self.column = tokenizer, max_length, column

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return dict(self.tokenizer(batch[self.column], truncation=True, max_length=self.max_length))


def default_tokenized_cache_dir() -> Path:
    """``<HF_DATASETS_CACHE>/hftl_tokenized``: where splits without an Arrow cache of their own go."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "hftl_tokenized"


def tokenization_fingerprint(
    dataset: datasets.Dataset, tokenizer: Any, *, max_length: int | None, input_column: str = "text"
) -> str:
    """The datasets fingerprint of ``dataset`` tokenized by ``tokenizer``: the same in every process.

    Args:
        dataset: the raw split (its ``_fingerprint`` stands for its rows).
        tokenizer: a transformers tokenizer.
        max_length: the truncation length.
        input_column: the column holding the texts.

    Returns:
        32 hex characters.
    """
    parts = {
        "format": TOKENIZED_FORMAT,
        "data": dataset._fingerprint,
        "tokenizer": processor_fingerprint(tokenizer),
        "max_length": max_length,
        "input_column": input_column,
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def tokenized_cache_file(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    max_length: int | None,
    input_column: str = "text",
    cache_dir: str | Path | None = None,
) -> Path:
    """Where :func:`pretokenize` keeps the tokenized ``dataset`` (the file may not exist yet).

    Args:
        dataset: the raw split.
        tokenizer: a transformers tokenizer.
        max_length: the truncation length.
        input_column: the column holding the texts.
        cache_dir: folder of the file; None: the folder of the split's own Arrow cache file, or
            :func:`default_tokenized_cache_dir` for in-memory splits.

    Returns:
        ``<folder>/hftl-tokenized-<fingerprint>.arrow``.
    """
    if cache_dir is None:
        files = dataset.cache_files
        cache_dir = Path(files[0]["filename"]).parent if files else default_tokenized_cache_dir()
    fingerprint = tokenization_fingerprint(
        dataset, tokenizer, max_length=max_length, input_column=input_column
    )
    return Path(cache_dir).expanduser() / f"hftl-tokenized-{fingerprint}.arrow"


def pretokenize(
    dataset: TokenizableData,
    tokenizer: Any,
    *,
    max_length: int | None,
    input_column: str = "text",
    cache_dir: str | Path | None = None,
) -> TokenizableData:
    """Tokenizes ``input_column`` of every row (truncated at ``max_length``, not padded).

    Args:
        dataset: a ``datasets.Dataset`` (tokenized once and cached, see the module docstring) or a
            ``datasets.IterableDataset`` (tokenized lazily while streaming, not cached).
        tokenizer: a transformers tokenizer (the encoder's ``processor``).
        max_length: sequences are truncated to this many tokens (special tokens included), as
            :class:`~hftl.data.TextCollator` does; None: the tokenizer's ``model_max_length``.
        input_column: the column holding the texts; it is replaced by the tokenizer's outputs.
        cache_dir: see :func:`tokenized_cache_file`.

    Returns:
        The same kind of dataset with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
        tokenizer gives them) instead of ``input_column``; every other column (``label``, ...) is kept.

    Raises:
        DataError: the dataset has no ``input_column``.
    """
    columns = dataset.column_names
    if columns is not None and input_column not in columns:
        raise DataError(
            f"Cannot tokenize: the data has no {input_column!r} column (columns: {columns}). "
            "Pre-tokenizing needs the raw texts; set `encoder.pretokenize=false` for other data."
        )
    fn = _Tokenize(tokenizer, max_length=max_length, column=input_column)
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(fn, batched=True, remove_columns=[input_column])
    path = tokenized_cache_file(
        dataset, tokenizer, max_length=max_length, input_column=input_column, cache_dir=cache_dir
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    reused, start = path.exists(), time.perf_counter()
    out = dataset.map(
        fn,
        batched=True,
        remove_columns=[input_column],
        cache_file_name=str(path),
        new_fingerprint=path.stem.removeprefix("hftl-tokenized-"),
        desc="Tokenizing",
    )
    verb = "Loaded tokenized" if reused else f"Tokenized in {time.perf_counter() - start:.1f} s:"
    logger.info("%s %d rows (max_length %s) from %s", verb, len(out), max_length, path)
    return out


def pretokenize_splits(
    splits: Mapping[str, TokenizableData],
    tokenizer: Any,
    *,
    max_length: int | None,
    input_column: str = "text",
    cache_dir: str | Path | None = None,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """:func:`pretokenize` applied to every split (a ``DatasetDict`` as ``ClassificationData.load`` gives).

    Args:
        splits: split name → dataset.
        tokenizer: a transformers tokenizer.
        max_length: the truncation length.
        input_column: the column holding the texts.
        cache_dir: see :func:`tokenized_cache_file`.

    Returns:
        The tokenized splits, in the same kind of dict as ``splits`` when it is a datasets dict.
    """
    out = {
        name: pretokenize(
            ds, tokenizer, max_length=max_length, input_column=input_column, cache_dir=cache_dir
        )
        for name, ds in splits.items()
    }
    streaming = isinstance(splits, datasets.IterableDatasetDict) or any(
        isinstance(ds, datasets.IterableDataset) for ds in out.values()
    )
    return datasets.IterableDatasetDict(out) if streaming else datasets.DatasetDict(out)


def is_pretokenized(dataset: Any) -> bool:
    """Whether ``dataset`` (a datasets split) holds token ids rather than raw text."""
    return "input_ids" in (getattr(dataset, "column_names", None) or ())
