"""The steps from a source's splits to standard classification splits, shared by eager and streamed loading.

:meth:`hftl.data.ClassificationData.load` runs them in this order; the streamed train split applies the same
rules row by row (:mod:`hftl.data.streaming`):

1. :func:`select_splits`: source splits become ``train``/``validation``/``test``;
2. :func:`hftl.data.filters.filter_splits`: ``data.filters``;
3. :func:`resolve_columns` and :func:`standardize_columns`: the input column (named by modality) and
   ``label``, nothing else;
4. :func:`hftl.data.inputs.standardize_inputs`: texts checked, media paths resolved;
5. :func:`hftl.data.inputs.scan_media`: every audio/image file checked once;
6. :func:`hftl.data.label_space.encode_labels`: labels become class ids of one label space;
7. :func:`carve_splits`: ``validation``/``test`` carved from ``train`` when the source has none;
8. :func:`subsample`: ``data.max_samples``.

Example:
    >>> import datasets
    >>> raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"review": ["good", "bad"], "label": [1, 0]})})
    >>> selection = select_splits(raw, {}, splits={}, source="reviews")
    >>> columns = resolve_columns(selection.splits["train"], input_column=None, modality=None, source="reviews")
    >>> columns
    Columns(input='review', modality='text')
    >>> dd = standardize_columns(selection.splits, columns, label_column="label", unlabeled=(), source="reviews")
    >>> dd["train"].column_names
    ['text', 'label']
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping
from pathlib import Path

import datasets
import numpy as np

from hftl.data.audio import AUDIO_EXTENSIONS
from hftl.data.sources import IMAGE_EXTENSIONS
from hftl.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}  # fmt: skip
INPUT_COLUMNS = ("text", "sentence", "review", "reviews", "content", "audio", "image", "img", "file", "path")
AnySplit = datasets.Dataset | datasets.IterableDataset


def column_values(ds: datasets.Dataset, name: str) -> list:
    """The values of one column as Python objects (respects an indices mapping, fast)."""
    return ds.with_format("arrow")[name].to_pylist()


# --- 1. splits ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SplitSelection:
    """The source splits chosen as hftl splits.

    Attributes:
        splits: hftl split -> its dataset (in memory or streamed).
        folders: hftl split -> the folder its relative media paths resolve against.
        mapping: hftl split -> the source split it was read from.
    """

    splits: dict[str, AnySplit]
    folders: dict[str, Path]
    mapping: dict[str, str]


def select_splits(
    raw: Mapping[str, AnySplit], folders: Mapping[str, Path], *, splits: Mapping[str, str], source: str
) -> SplitSelection:
    """Maps source splits to ``train``/``validation``/``test``: ``splits`` first, then names such as ``dev``.

    Args:
        raw: source split -> dataset.
        folders: source split -> folder of its manifest.
        splits: ``data.splits`` (hftl split -> source split).
        source: the data path, for messages.

    Raises:
        DataError: a mapped split the source lacks, no usable split, or an empty in-memory split.
    """
    for target, name in splits.items():
        if name not in raw:
            raise DataError(
                f"`data.splits.{target}` is {name!r}, which {source} does not have; "
                f"available splits: {sorted(raw)}."
            )
    explicit = set(splits.values())
    mapping = {SPLIT_ALIASES[s]: s for s in raw if s in SPLIT_ALIASES and s not in explicit}
    mapping = {k: v for k, v in mapping.items() if k not in splits} | dict(splits)
    if not mapping:
        raise DataError(
            f"{source} has splits {sorted(raw)}, none of which is train/validation/test; map "
            "them with `data.splits`, e.g. {train: <name>}."
        )
    for name in mapping.values():
        if isinstance(raw[name], datasets.Dataset) and len(raw[name]) == 0:
            raise DataError(
                f"Split {name!r} of {source} is empty (0 rows); fix the data file or map "
                "another split with `data.splits`."
            )
    return SplitSelection(
        splits={target: raw[name] for target, name in mapping.items()},
        folders={t: folders[s] for t, s in mapping.items() if s in folders},
        mapping=dict(mapping),
    )


# --- 3. columns ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Columns:
    """Where the inputs are: the source's input column, and the modality that names it after loading."""

    input: str
    modality: str


def resolve_columns(
    first: datasets.Dataset, *, input_column: str | None, modality: str | None, source: str
) -> Columns:
    """The input column (``data.input_column``, else the first of :data:`INPUT_COLUMNS` present) and modality.

    Args:
        first: a split (its first row is read to tell a media path's modality).
        input_column: ``data.input_column``.
        modality: ``data.modality``; None infers it (:func:`infer_modality`).
        source: the data path, for messages.

    Raises:
        DataError: no input column given and none of the usual names present.
    """
    if input_column is None:
        found = [c for c in INPUT_COLUMNS if c in first.column_names]
        if not found:
            raise DataError(
                f"No input column found in {source}: columns are {first.column_names}, none of "
                f"{list(INPUT_COLUMNS)}. Set `data.input_column` to the column with the inputs."
            )
        input_column = found[0]
    return Columns(input=input_column, modality=modality or infer_modality(first, input_column))


def infer_modality(ds: datasets.Dataset, input_column: str) -> str:
    """``audio``/``image`` from the column's feature, name or file extension; else ``text``."""
    feature = ds.features[input_column]
    if isinstance(feature, datasets.Audio):
        return "audio"
    if isinstance(feature, datasets.Image):
        return "image"
    if input_column in ("audio", "image", "img"):
        return "image" if input_column == "img" else input_column
    if input_column in ("file", "path"):
        suffix = Path(str(ds[0][input_column])).suffix.lower()
        if suffix in AUDIO_EXTENSIONS:
            return "audio"
        if suffix in IMAGE_EXTENSIONS:
            return "image"
    return "text"


def standardize_columns(
    dd: datasets.DatasetDict,
    columns: Columns,
    *,
    label_column: str,
    unlabeled: Collection[str],
    drop_labels: Collection[str] = (),
    source: str,
) -> datasets.DatasetDict:
    """Keeps only the input column, renamed to the modality, and (where wanted) the label, renamed ``label``.

    Args:
        dd: in-memory splits.
        columns: the input column and modality.
        label_column: ``data.label_column``.
        unlabeled: ``data.unlabeled_splits`` (they need no label column).
        drop_labels: splits whose label column is dropped (unlabelled splits not carved from).
        source: the data path, for messages.

    Raises:
        DataError: a split without the input column, or a labelled split without the label column.
    """
    out = {}
    for split, ds in dd.items():
        if columns.input not in ds.column_names:
            raise DataError(
                f"Input column {columns.input!r} not in split {split!r} of {source}; columns: "
                f"{ds.column_names}. Set `data.input_column` to one of them."
            )
        has_label = label_column in ds.column_names and label_column != columns.input
        if not has_label and split not in unlabeled:
            raise DataError(
                f"Label column {label_column!r} not in split {split!r} of {source}; columns: "
                f"{ds.column_names}. Set `data.label_column`, or list the split in "
                "`data.unlabeled_splits` if it has no labels."
            )
        keep = [columns.input] + ([label_column] if has_label and split not in drop_labels else [])
        renames = {columns.input: columns.modality, label_column: "label"}
        ds = ds.select_columns(keep)
        out[split] = ds.rename_columns({k: v for k, v in renames.items() if k in keep and k != v})
    return datasets.DatasetDict(out)


# --- 7. carving ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CarvePlan:
    """The rows carved from ``train`` per split (0: none), test first; sizes are fractions or counts."""

    test: float | int = 0
    validation: float | int = 0

    @property
    def carves(self) -> bool:
        return bool(self.test or self.validation)


def plan_carving(
    splits: Collection[str],
    *,
    validation_size: float | int,
    test_size: float | int | None,
    unlabeled: Collection[str],
) -> CarvePlan:
    """Which of ``validation``/``test`` are carved from ``train`` (those the source lacks).

    Raises:
        DataError: ``unlabeled`` names a split the data will not have.
    """
    has_train = "train" in splits
    validation = validation_size if "validation" not in splits and has_train else 0
    test = (test_size or 0) if "test" not in splits and has_train else 0
    planned = set(splits) | {name for name, size in (("validation", validation), ("test", test)) if size}
    missing = sorted(set(unlabeled) - planned)
    if missing:
        raise DataError(
            f"`data.unlabeled_splits` names {missing}, which the data will not have; "
            f"splits: {sorted(planned)}. Remove them or add them via `data.splits`."
        )
    return CarvePlan(test=test, validation=validation)


def carve_splits(dd: datasets.DatasetDict, plan: CarvePlan, *, seed: int) -> datasets.DatasetDict:
    """Carves the planned splits off ``train``, stratified by label when possible, seeded.

    Raises:
        DataError: a size that leaves ``train`` or the carved split empty.
    """
    n = len(dd["train"]) if "train" in dd else 0
    for split, size in (
        ("test", plan.test),
        ("validation", plan.validation),
    ):  # counts from the original size
        if not size:
            continue
        count = round(size * n) if isinstance(size, float) else size
        if not 1 <= count < len(dd["train"]):
            raise DataError(
                f"`data.{split}_size` = {size} gives {count} rows of a train split with "
                f"{len(dd['train'])} rows; need 1..{len(dd['train']) - 1}."
            )
        dd["train"], dd[split] = _carve(dd["train"], count, seed=seed)
    return dd


def _carve(ds: datasets.Dataset, size: int, *, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Splits ``size`` rows off ``ds`` (stratified by label when possible); returns (rest, carved)."""
    stratify = "label" if isinstance(ds.features.get("label"), datasets.ClassLabel) else None
    try:
        parts = ds.train_test_split(test_size=size, stratify_by_column=stratify, seed=seed)
    except ValueError as err:
        if stratify is None:
            raise DataError(f"Cannot split {size} rows off the train split ({len(ds)} rows): {err}") from err
        logger.warning("Stratified split impossible (%s); splitting without stratification.", err)
        parts = ds.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


def settle_unlabeled(dd: datasets.DatasetDict, unlabeled: Collection[str]) -> datasets.DatasetDict:
    """Drops ``label`` from the unlabelled splits (kept on ``train`` only to stratify the carving).

    Raises:
        DataError: a split carved from an unlabelled ``train`` that should be labelled.
    """
    for split, ds in dd.items():
        if split in unlabeled and "label" in ds.column_names:
            dd[split] = ds.remove_columns("label")
        elif split not in unlabeled and "label" not in ds.column_names:
            raise DataError(
                f"Split {split!r} was carved from the unlabeled train split and has no labels; "
                f"give a labelled {split} split via `data.splits` or set `data.{split}_size: 0`."
            )
    return dd


# --- 8. subsampling -----------------------------------------------------------------------------------
def subsample(
    dd: datasets.DatasetDict, max_samples: int | dict[str, int] | None, *, seed: int
) -> datasets.DatasetDict:
    """Keeps a seeded random subset (in the original order) of at most ``max_samples`` rows per split."""
    for split, ds in dd.items() if max_samples is not None else []:
        n = max_samples.get(split) if isinstance(max_samples, dict) else max_samples
        if n is not None and n < len(ds):
            keep = np.random.default_rng(seed).choice(len(ds), size=n, replace=False)
            dd[split] = ds.select(np.sort(keep)).flatten_indices()
    return dd
