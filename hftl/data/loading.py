"""Labelled classification data in one standard shape, whatever the source.

:class:`ClassificationData` reads a local csv/tsv/json(l)/parquet file, an audio or image folder, a
Blitzer sentiment domain, a built-in set (``hftl:sklearn_digits``) or a Hub dataset id with
``datasets``, and returns :class:`~hftl.data.spec.ClassificationSplits`: a :class:`datasets.DatasetDict`
whose splits (among ``train``, ``validation``, ``test``) hold one input column named by modality
(``text``, ``audio`` or ``image``) and ``label`` (a :class:`datasets.ClassLabel`), plus the label space
and modality they were read as. Splits listed in ``unlabeled_splits`` have no ``label`` column.

In-memory loading (:func:`load_in_memory`) and streamed loading (:func:`hftl.data.streaming.load_streamed`)
run the same steps (:mod:`hftl.data.steps`, :mod:`hftl.data.filters`, :mod:`hftl.data.inputs`,
:mod:`hftl.data.label_space`).

Example (YAML)::

    data:
      _component_: hftl.data.ClassificationData
      path: ../shared/data/sst2_agnews_alps/SST-2/train.tsv
      max_samples: {train: 2000}

Example (Python)::

    >>> splits = ClassificationData(path="hftl:sklearn_digits", max_samples=100).load()
    >>> splits.label_names[:3], splits.modality, len(splits["train"])
    (['0', '1', '2'], 'image', 100)
"""

from __future__ import annotations

from pathlib import Path

import datasets

from hftl.data.filters import filter_splits
from hftl.data.inputs import scan_media, standardize_inputs
from hftl.data.label_space import encode_labels
from hftl.data.labels import check_train_classes
from hftl.data.sources import read_source
from hftl.data.spec import SPLITS, ClassificationSplits, DataSpec
from hftl.data.steps import (
    carve_splits,
    column_values,
    plan_carving,
    resolve_columns,
    select_splits,
    settle_unlabeled,
    standardize_columns,
    subsample,
)
from hftl.data.streaming import load_streamed
from hftl.errors import DataError


class ClassificationData(DataSpec):
    """A labelled classification data set, built from config: a frozen :class:`~hftl.data.spec.DataSpec`
    (every argument is documented there) that :meth:`load` reads.

    Raises:
        ConfigError: for argument values outside the allowed ones (all problems at once).
    """

    def load(self) -> ClassificationSplits:
        """Reads, checks and standardizes the data (streamed when ``streaming`` is true).

        Returns:
            Splits among ``train``/``validation``/``test`` with columns ``text``|``audio``|``image``
            and ``label`` (ClassLabel), except ``unlabeled_splits`` which have no ``label``; with the
            label space (``.labels``, ``.label_names``) and ``.modality``.

        Raises:
            DataError: for missing files, splits or columns, empty texts or splits, bad label values.
        """
        return load_streamed(self) if self.streaming else load_in_memory(self)


def load_in_memory(spec: DataSpec) -> ClassificationSplits:
    """Reads every split of ``spec`` into memory and runs the loading steps on it (see the module docstring).

    Raises:
        DataError: for missing files, splits or columns, empty texts or splits, bad label values.
    """
    raw, folders = _read(spec)
    selection = select_splits(raw, folders, splits=spec.splits, source=spec.path)
    dd = filter_splits(datasets.DatasetDict(selection.splits), spec.filters, source=spec.path)
    plan = plan_carving(
        list(dd),
        validation_size=spec.validation_size,
        test_size=spec.test_size,
        unlabeled=spec.unlabeled_splits,
    )
    columns = resolve_columns(
        next(iter(dd.values())), input_column=spec.input_column, modality=spec.modality, source=spec.path
    )
    dd = standardize_columns(
        dd, columns, label_column=spec.label_column, unlabeled=spec.unlabeled_splits, source=spec.path,
        drop_labels=set(spec.unlabeled_splits) - ({"train"} if plan.carves else set()),  # train: to stratify
    )  # fmt: skip
    dd = standardize_inputs(dd, columns, selection.folders, source=spec.path)
    dd = scan_media(dd, columns.modality, spec)
    sources = spec.sources(dd, selection.mapping)
    dd, labels = encode_labels(dd, labels=spec.label_space(), column=spec.label_column, sources=sources)
    dd = carve_splits(dd, plan, seed=spec.seed)
    dd = settle_unlabeled(dd, spec.unlabeled_splits)
    dd = subsample(dd, spec.max_samples, seed=spec.seed)
    if spec.check_train_classes and "train" in dd and "label" in dd["train"].column_names:
        check_train_classes(
            column_values(dd["train"], "label"),
            labels.names,
            split="train",
            source=sources["train"],
        )
    return ClassificationSplits(
        {s: dd[s] for s in SPLITS if s in dd}, labels=labels, modality=columns.modality
    )


def _read(spec: DataSpec) -> tuple[dict, dict[str, Path]]:
    """The source's splits and manifest folders; a missing path's error ends with ``missing_hint``."""
    try:
        return read_source(
            spec.path, data_files=spec.data_files, name=spec.name, revision=spec.revision, seed=spec.seed,
            delimiter=spec.delimiter, trust_remote_code=spec.trust_remote_code,
        )  # fmt: skip
    except DataError as err:
        if spec.missing_hint and not Path(spec.path).expanduser().exists():
            raise DataError(f"{err} {spec.missing_hint}") from err
        raise
