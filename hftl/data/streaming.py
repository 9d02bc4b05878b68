"""Streaming a training split that is read lazily, never loaded whole (``data.streaming: true``).

The train split (labelled source data, or the unlabelled target split of domain adaptation) becomes a
``datasets.IterableDataset`` read from the files (or the Hub) as training consumes it, shuffled through a
seeded buffer that is reseeded every epoch (``set_epoch``). Evaluation splits are small and are read into
memory, then checked exactly like non-streamed data. Validation/test rows carved from the stream are its
first ``validation_size``/``test_size`` rows (a row count: a fraction needs the stream's length).

Resume is exact: the engine sets the epoch and skips the batches already trained on
(``accelerate.skip_first_batches``), which re-reads the skipped part of that epoch's stream (no model
compute). Because a stream's length is unknown up front, streamed runs are sized with ``train.max_steps``;
an epoch ends when the stream is exhausted.

Rows are checked as they stream, by the rules in-memory splits are checked with (:mod:`hftl.data.inputs`,
:class:`hftl.data.filters.RowFilter`, :class:`hftl.data.label_space.LabelSpace`): an empty text, a label
outside ``data.label_names`` (NFC strings, integral ids; NaN, ``1.5`` or empty stop), an image the image
check refuses (:mod:`hftl.data.image_checks`: decompression bombs, corrupt files) or a missing media path
stops training with an error naming the row (its position in the unshuffled stream). ``label_names`` (at
least two classes) is required; that the stream really holds more than one of them cannot be checked
before training reads it, unlike in-memory data.

Example (YAML)::

    data:
      _component_: hftl.data.ClassificationData
      path: csv
      data_files: {train: reviews_*.csv, test: test.csv}
      label_names: [negative, positive]
      streaming: true
      shuffle_buffer: 10000
      validation_size: 1000       # the stream's first 1,000 rows
    train:
      max_steps: 20000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from torch.utils.data import IterableDataset

from hftl.data.filters import RowFilter, filter_splits
from hftl.data.image_checks import open_image
from hftl.data.inputs import check_text, resolve_media_path, scan_media, standardize_inputs
from hftl.data.label_space import LabelSpace, encode_labels
from hftl.data.sources import read_source
from hftl.data.spec import ClassificationSplits, DataSpec
from hftl.data.steps import (
    Columns,
    SplitSelection,
    resolve_columns,
    select_splits,
    standardize_columns,
    subsample,
)
from hftl.errors import ConfigError, DataError

CARVED = ("test", "validation")  # carved in this order, as from an in-memory train split


def is_stream(dataset: Any) -> bool:
    """Whether ``dataset`` is read lazily (has no length)."""
    return isinstance(dataset, IterableDataset)  # datasets.IterableDataset is one


def length_or_none(obj: Any) -> int | None:
    """``len(obj)``, or None for a stream or a loader over one (its length is unknown)."""
    try:
        return len(obj)
    except TypeError:
        return None


def load_streamed(spec: DataSpec) -> ClassificationSplits:
    """The splits of ``spec`` with ``train`` streamed (see the module docstring).

    Returns:
        ``train`` as a ``datasets.IterableDataset`` of rows ``{text|audio|image, label}`` (no ``label``
        when it is an unlabelled split), the other splits as in-memory ``datasets.Dataset``.

    Raises:
        ConfigError: for a fractional ``validation_size``/``test_size`` or missing ``label_names``.
        DataError: for a source without a train split, or bad evaluation rows.
    """
    raw, folders = read_source(
        spec.path, data_files=spec.data_files, name=spec.name, revision=spec.revision, seed=spec.seed,
        delimiter=spec.delimiter, trust_remote_code=spec.trust_remote_code, streaming=True,
    )  # fmt: skip
    selection = select_splits(raw, folders, splits=spec.splits, source=spec.path)
    if "train" not in selection.splits:
        raise DataError(
            f"`data.streaming` is true but {spec.path} has no train split to stream (splits: "
            f"{sorted(selection.splits)}); map one with `data.splits`, e.g. {{train: <name>}}."
        )
    stream, evaluation, folders = _carve_stream(spec, selection)
    labelled = "train" not in spec.unlabeled_splits
    labels = _stream_labels(spec, stream) if labelled else spec.label_space()
    evaluation, columns, labels = _evaluation_splits(spec, evaluation, folders, selection.mapping, labels)
    if columns is None:  # no evaluation split told them: the stream's first row does (and is checked)
        head = _materialize(stream.take(1), "train", spec.path)
        columns = resolve_columns(
            head, input_column=spec.input_column, modality=spec.modality, source=spec.path
        )
        standardize_columns(
            datasets.DatasetDict({"train": head}), columns, label_column=spec.label_column,
            unlabeled=spec.unlabeled_splits, source=spec.path,
        )  # fmt: skip
    source = spec.source_of("train", selection.mapping)
    train = _train_stream(
        spec, stream, columns, labels if labelled else None, folders.get("train", Path(".")), source
    )
    return ClassificationSplits({"train": train, **evaluation}, labels=labels, modality=columns.modality)


def _carve_stream(
    spec: DataSpec, selection: SplitSelection
) -> tuple[datasets.IterableDataset, dict[str, datasets.IterableDataset], dict[str, Path]]:
    """The filtered train stream, the evaluation splits (the source's own, or the stream's first rows), and
    the folders their relative media paths resolve against."""
    evaluation = {split: ds for split, ds in selection.splits.items() if split != "train"}
    folders = dict(selection.folders)
    stream = selection.splits["train"]
    if spec.filters:  # before carving, as for in-memory data
        stream = stream.filter(RowFilter(spec.filters).predicate(stream.features))
    for split in CARVED:
        size = spec.validation_size if split == "validation" else spec.test_size
        if split in evaluation or not size:
            continue
        if isinstance(size, float):
            raise ConfigError(
                f"`data.{split}_size` is {size}, a fraction, but a stream's length is unknown; give a row "
                f"count (the stream's first rows become {split}), or a {split} file via `data.data_files`."
            )
        evaluation[split], stream = stream.take(size), stream.skip(size)
        if "train" in folders:  # relative media paths of carved rows resolve like the train split's
            folders[split] = folders["train"]
    return stream, evaluation, folders


def _stream_labels(spec: DataSpec, stream: datasets.IterableDataset) -> LabelSpace:
    """The configured classes, else those of the stream's ``ClassLabel`` feature; one of them is required."""
    labels = spec.label_space()
    if labels is None:
        feature = (stream.features or {}).get(spec.label_column)
        labels = LabelSpace.from_feature(feature, source=spec.path, column=spec.label_column)
    if labels is None:
        raise ConfigError(
            "`data.label_names` is required with `data.streaming: true`: the classes cannot be read from a "
            "stream before training. Fix: list them in label order, e.g. `data.label_names: [negative, "
            "positive]` (for integer labels, label i is the i-th name)."
        )
    return labels


def _evaluation_splits(
    spec: DataSpec,
    evaluation: dict[str, datasets.IterableDataset],
    folders: dict[str, Path],
    mapping: dict[str, str],
    labels: LabelSpace | None,
) -> tuple[dict[str, datasets.Dataset], Columns | None, LabelSpace | None]:
    """Reads the evaluation splits into memory and runs the in-memory steps on them (all but carving).

    Returns:
        The splits, their columns (None without evaluation splits), and the label space (``labels``, or
        the one their labels give when ``labels`` is None: an unlabelled stream without ``label_names``).
    """
    if not evaluation:
        return {}, None, labels
    dd = datasets.DatasetDict({split: _materialize(ds, split, spec.path) for split, ds in evaluation.items()})
    dd = filter_splits(dd, spec.filters, source=spec.path)
    columns = resolve_columns(
        next(iter(dd.values())), input_column=spec.input_column, modality=spec.modality, source=spec.path
    )
    dd = standardize_columns(
        dd, columns, label_column=spec.label_column, unlabeled=spec.unlabeled_splits,
        drop_labels=spec.unlabeled_splits, source=spec.path,
    )  # fmt: skip
    dd = standardize_inputs(dd, columns, folders, source=spec.path)
    dd = scan_media(dd, columns.modality, spec)  # every evaluation file checked before training
    sources = spec.sources(dd, mapping)
    dd, labels = encode_labels(dd, labels=labels, column=spec.label_column, sources=sources)
    return dict(subsample(dd, spec.max_samples, seed=spec.seed)), columns, labels


def _materialize(stream: datasets.IterableDataset, split: str, source: str) -> datasets.Dataset:
    rows = list(stream)
    if not rows:
        raise DataError(
            f"Split {split!r} of {source} is empty (0 rows); fix the data file or map another split with "
            "`data.splits`."
        )
    features = stream.features
    return (
        datasets.Dataset.from_list(rows, features=features) if features else datasets.Dataset.from_list(rows)
    )


def _train_stream(
    spec: DataSpec,
    stream: datasets.IterableDataset,
    columns: Columns,
    labels: LabelSpace | None,
    folder: Path,
    source: str,
) -> datasets.IterableDataset:
    """The standardized, checked, shuffled train stream (rows ``{modality: input, label: id}``)."""
    features = stream.features or {}
    if isinstance(features.get(columns.input), datasets.Image):  # checked, then opened, per row
        stream = stream.cast_column(columns.input, datasets.Image(decode=False))
    standardize = RowStandardizer(
        columns, labels, label_column=spec.label_column, label_feature=features.get(spec.label_column),
        folder=folder, max_image_pixels=spec.max_image_pixels, source=source,
    )  # fmt: skip
    stream = stream.map(standardize, with_indices=True)
    stream = stream.select_columns([columns.modality] + (["label"] if labels is not None else []))
    if isinstance((stream.features or {}).get(columns.input), datasets.Audio):
        stream = stream.cast_column(columns.modality, datasets.Audio(decode=False))
    n = spec.max_samples_for("train")
    if n is not None:
        stream = stream.take(n)
    return stream.shuffle(seed=spec.seed, buffer_size=spec.shuffle_buffer)


class RowStandardizer:
    """Maps a raw streamed row to ``{modality: input, label: class id}``, raising DataError on a bad row.

    The per-row form of :func:`hftl.data.inputs.standardize_inputs` and
    :meth:`hftl.data.label_space.LabelSpace.encode_column`.

    Args:
        columns: the source's input column and the modality.
        labels: the label space; None for an unlabelled stream.
        label_column: the source's label column.
        label_feature: its feature (a ``ClassLabel`` maps ids through its own names), if known.
        folder: the folder relative media paths resolve against.
        max_image_pixels: the image check's pixel limit.
        source: what the stream is read from, for messages.
    """

    def __init__(
        self,
        columns: Columns,
        labels: LabelSpace | None,
        *,
        label_column: str,
        label_feature: Any,
        folder: Path,
        max_image_pixels: int,
        source: str,
    ):
        self.columns, self.labels = columns, labels
        self.label_column, self.label_feature = label_column, label_feature
        self.folder, self.max_image_pixels, self.source = folder, max_image_pixels, source

    def __call__(self, row: dict, index: int) -> dict:
        where = f"row {index} of the streamed train split of {self.source}"
        column, modality = self.columns.input, self.columns.modality
        if column not in row:
            raise DataError(
                f"Input column {column!r} missing at {where}; columns: {sorted(row)}. Set `data.input_column`."
            )
        out = {modality: self._input(row[column], where)}
        if self.labels is not None:
            out["label"] = self.labels.encode_row(
                row.get(self.label_column),
                where=f"{where} (column {self.label_column!r})",
                feature=self.label_feature,
            )
        return out

    def _input(self, value: Any, where: str) -> Any:
        column = self.columns.input
        if self.columns.modality == "text":
            return check_text(value, f"{where} (column {column!r})")
        if isinstance(value, str):  # a media path, relative to the manifest
            value = str(resolve_media_path(value, self.folder))
        if self.columns.modality == "image" and isinstance(value, str | dict):
            try:  # the image check first: never decode a file the scan of in-memory splits would refuse
                return open_image(value, max_pixels=self.max_image_pixels)
            except DataError as err:
                raise DataError(f"{err} ({where}, column {column!r})") from None
        return value
