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

Rows are checked as they stream: an empty text, a label outside ``data.label_names`` (labels are read as
in :mod:`hftl.data.labels`: NFC strings, integral ids; NaN, ``1.5`` or empty stop), an image the image check
refuses (:mod:`hftl.data.image_checks`: decompression bombs, corrupt files) or a missing media path
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

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from torch.utils.data import IterableDataset

from hftl.data.image_checks import open_image
from hftl.data.labels import canonical_label, canonical_name, filter_key, label_names_problems, outside
from hftl.data.sources import read_source
from hftl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from hftl.data.loading import ClassificationData

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


def load_streaming(data: ClassificationData) -> datasets.DatasetDict:
    """The splits of ``data`` with ``train`` streamed (see the module docstring).

    Returns:
        ``train`` as a ``datasets.IterableDataset`` of rows ``{text|audio|image, label}`` (no ``label``
        when it is an unlabelled split), the other splits as in-memory ``datasets.Dataset``.

    Raises:
        ConfigError: for a fractional ``validation_size``/``test_size`` or missing ``label_names``.
        DataError: for a source without a train split, or bad evaluation rows.
    """
    raw, folders = read_source(
        data.path, data_files=data.data_files, name=data.name, revision=data.revision, seed=data.seed,
        delimiter=data.delimiter, trust_remote_code=data.trust_remote_code, streaming=True,
    )  # fmt: skip
    dd, folders = data._select_splits(raw, folders)
    if "train" not in dd:
        raise DataError(
            f"`data.streaming` is true but {data.path} has no train split to stream (splits: {sorted(dd)}); "
            "map one with `data.splits`, e.g. {train: <name>}."
        )
    stream = dd.pop("train")
    if data.filters:  # before carving, as for in-memory data
        stream = stream.filter(_row_filter(data.filters))
    for split in CARVED:
        size = data.validation_size if split == "validation" else data.test_size
        if split in dd or not size:
            continue
        if isinstance(size, float):
            raise ConfigError(
                f"`data.{split}_size` is {size}, a fraction, but a stream's length is unknown; give a row "
                f"count (the stream's first rows become {split}), or a {split} file via `data.data_files`."
            )
        dd[split], stream = stream.take(size), stream.skip(size)
        if "train" in folders:  # relative media paths of carved rows resolve like the train split's
            folders[split] = folders["train"]
    label_column = _label_names_from_stream(data, stream)
    evaluation = _evaluation_splits(data, dd, folders)
    if data.input_column is None:  # no evaluation split told it: look at the stream's first row
        data._standardize_columns(datasets.DatasetDict({"train": _head(stream, data.path)}), set())
    elif data._modality is None:
        data._modality = data.requested_modality or data._infer_modality(_head(stream, data.path))
    if data._label_names is None:
        data._label_names = list(data.requested_label_names or [])
    train = _train_stream(data, stream, label_column, folders.get("train", Path(".")))
    return datasets.DatasetDict({"train": train, **evaluation})


def _label_names_from_stream(data: ClassificationData, stream: datasets.IterableDataset) -> str | None:
    """The stream's label column (None when unlabelled); fills ``label_names`` from a ClassLabel feature."""
    if "train" in data.unlabeled_splits:
        return None
    feature = (stream.features or {}).get(data.label_column)
    if data.requested_label_names is None and isinstance(feature, datasets.ClassLabel):
        problems = label_names_problems(
            feature.names, key=f"ClassLabel names of column {data.label_column!r}"
        )
        if problems:
            raise DataError(f"{data.path}: {problems[0]} Set `data.label_names` to the classes, in id order.")
        data.requested_label_names = [canonical_name(n) for n in feature.names]
    if data.requested_label_names is None:
        raise ConfigError(
            "`data.label_names` is required with `data.streaming: true`: the classes cannot be read from a "
            "stream before training. Fix: list them in label order, e.g. `data.label_names: [negative, "
            "positive]` (for integer labels, label i is the i-th name)."
        )
    return data.label_column


def _evaluation_splits(
    data: ClassificationData, dd: dict[str, datasets.IterableDataset], folders: dict[str, Path]
) -> dict[str, datasets.Dataset]:
    """Reads the evaluation splits into memory and checks them like non-streamed data."""
    if not dd:
        return {}
    eager = datasets.DatasetDict(
        {split: _materialize(stream, split, data.path) for split, stream in dd.items()}
    )
    eager = data._filter(eager)
    eager = data._standardize_columns(eager, set(data.unlabeled_splits))
    eager = data._standardize_inputs(eager, folders)
    eager = data._scan_media(eager)  # every evaluation file checked before training
    eager = data._encode_labels(eager)
    return dict(data._subsample(eager))


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


def _head(stream: datasets.IterableDataset, source: str) -> datasets.Dataset:
    """The stream's first row as a one-row Dataset (to read its columns)."""
    return _materialize(stream.take(1), "train", source)


def _train_stream(
    data: ClassificationData, stream: datasets.IterableDataset, label_column: str | None, folder: Path
) -> datasets.IterableDataset:
    """The standardized, checked, shuffled train stream."""
    modality, column = data.modality, data.input_column
    if isinstance((stream.features or {}).get(column), datasets.Image):  # checked, then opened, per row
        stream = stream.cast_column(column, datasets.Image(decode=False))
    stream = stream.map(_row_standardizer(data, label_column, folder), with_indices=True)
    stream = stream.select_columns([modality] + (["label"] if label_column else []))
    if isinstance((stream.features or {}).get(column), datasets.Audio):
        stream = stream.cast_column(modality, datasets.Audio(decode=False))
    n = data.max_samples.get("train") if isinstance(data.max_samples, dict) else data.max_samples
    if n is not None:
        stream = stream.take(n)
    return stream.shuffle(seed=data.seed, buffer_size=data.shuffle_buffer)


def _row_filter(filters: dict[str, list]) -> Callable[[dict], bool]:
    allowed = {column: {filter_key(v) for v in values} for column, values in filters.items()}

    def keep(row: dict) -> bool:
        for column, values in allowed.items():
            if column not in row:
                raise DataError(
                    f"`data.filters` names column {column!r}, which the streamed train split does not have; "
                    f"columns: {sorted(row)}. Fix or remove the filter."
                )
            if filter_key(row[column]) not in values:
                return False
        return True

    return keep


def _row_standardizer(
    data: ClassificationData, label_column: str | None, folder: Path
) -> Callable[[dict, int], dict]:
    """Maps a raw row to ``{modality: input, label: class id}``, raising DataError on a bad row."""
    modality, column, source = data.modality, data.input_column, data.source_of("train")
    names = [str(n) for n in data.label_names]
    ids = {n: i for i, n in enumerate(names)}

    def standardize(row: dict, index: int) -> dict:
        where = f"row {index} of the streamed train split of {source}"
        if column not in row:
            raise DataError(
                f"Input column {column!r} missing at {where}; columns: {sorted(row)}. Set `data.input_column`."
            )
        value = row[column]
        if modality == "text" and (value is None or not str(value).strip()):
            raise DataError(f"Empty or missing text at {where} (column {column!r}); remove or fill that row.")
        if modality != "text" and isinstance(value, str):  # a media path, relative to the manifest
            path = Path(value).expanduser()
            value = str(path if path.is_absolute() else folder / path)
        if modality == "image" and isinstance(value, str | dict):  # never decode a file the scan would refuse
            try:
                value = open_image(value, max_pixels=data.max_image_pixels)
            except DataError as err:
                raise DataError(f"{err} ({where}, column {column!r})") from None
        out = {modality: str(value) if modality == "text" else value}
        if label_column is not None:
            out["label"] = _label_id(row.get(label_column), names, ids, where, label_column)
        return out

    return standardize


def _label_id(value: Any, names: list[str], ids: dict[str, int], where: str, column: str) -> int:
    label = canonical_label(value, f"{where} (column {column!r})")
    if isinstance(label, int) and 0 <= label < len(names):
        return label
    if isinstance(label, str) and label in ids:
        return ids[label]
    raise DataError(f"Label {value!r} at {where} (column {column!r}) {outside(label, names)}")
