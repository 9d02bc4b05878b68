"""The label space: a data set's classes, and the one encoder of label cells into class ids.

A :class:`LabelSpace` holds the class names (label ``i`` is ``names[i]``), canonical as
:mod:`hftl.data.labels` defines. It encodes a whole column (in-memory splits,
:meth:`LabelSpace.encode_column`) or one row (the streamed train split, :meth:`LabelSpace.encode_row`)
through the same three steps, so a cell gets the same id either way:

1. a ``ClassLabel`` id becomes its class name (a source's ``ClassLabel`` may order its classes
   differently from ``label_names``);
2. the cell becomes its canonical label (:func:`~hftl.data.labels.canonical_label`: NFC string or
   integral id; NaN, ``1.5``, empty or missing cells stop with the row named);
3. the canonical label becomes its id: an integer is its own id, a string the index of its name.

A column is also checked as a whole, which a single row cannot be: number strings such as ``"nan"`` in a
column of numbers stop, and normalised spellings are reported once per split.

Example:
    >>> space = LabelSpace(["neg", "pos"])
    >>> space.encode_column(["pos", "neg", 1], split="train", source="a.csv", column="label")
    [1, 0, 1]
    >>> space.encode_row("pos", where="row 0 of the streamed train split of a.csv (column 'label')")
    1
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import datasets

from hftl.data.labels import (
    LabelValue,
    canonical_label,
    canonical_name,
    check_label_space,
    infer_names,
    label_names_problems,
    outside,
    read_labels,
    where_row,
)
from hftl.errors import DataError


class LabelSpace:
    """The classes of a data set, in id order, and the encoder of label cells into their ids.

    Args:
        names: class names (strings, or numbers from a YAML list); compared after
            :func:`~hftl.data.labels.canonical_name` (Unicode NFC, no surrounding spaces).

    Raises:
        DataError: fewer than two classes, an empty name, or one class named twice.
    """

    def __init__(self, names: Sequence[Any]):
        problems = label_names_problems(names, key="label names")
        if problems:
            raise DataError(problems[0])
        self._names = tuple(canonical_name(n) for n in names)
        self._ids = {name: i for i, name in enumerate(self._names)}

    @classmethod
    def infer(cls, labels: Mapping[str, Sequence[LabelValue]], *, source: str) -> LabelSpace:
        """The classes of canonical labels when ``label_names`` is not given (rules: :func:`infer_names`).

        Args:
            labels: split -> its canonical labels (:func:`read_column`).
            source: the data path, for messages.

        Raises:
            DataError: a single class, mixed or sparse ids, or (when ``train`` is among the splits) a label
                only an evaluation split has.
        """
        if "train" in labels:
            _check_seen_in_train(labels, source)
        names = infer_names([v for column in labels.values() for v in column], source)
        check_label_space(names, {split: len(column) for split, column in labels.items()}, source)
        return cls(names)

    @classmethod
    def from_feature(cls, feature: Any, *, source: str, column: str) -> LabelSpace | None:
        """The classes a ``ClassLabel`` feature declares (None for any other feature).

        Raises:
            DataError: the declared names are no valid label space (fewer than two, duplicates).
        """
        if not isinstance(feature, datasets.ClassLabel):
            return None
        problems = label_names_problems(feature.names, key=f"ClassLabel names of column {column!r}")
        if problems:
            raise DataError(f"{source}: {problems[0]} Set `data.label_names` to the classes, in id order.")
        return cls(feature.names)

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, canonical; label ``i`` is ``names[i]``."""
        return self._names

    @property
    def feature(self) -> datasets.ClassLabel:
        """The ``datasets.ClassLabel`` of encoded ``label`` columns."""
        return datasets.ClassLabel(names=list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSpace) and other.names == self.names

    def __hash__(self) -> int:
        return hash(self._names)

    def __repr__(self) -> str:
        return f"LabelSpace({list(self._names)!r})"

    def id_of(self, label: LabelValue, where: str, *, shown: Any = None) -> int:
        """The id of one canonical label.

        Args:
            label: a canonical label (:func:`~hftl.data.labels.canonical_label`).
            where: the row, for the error.
            shown: the cell as read, for the error (default: ``label``).

        Raises:
            DataError: an id outside ``0..len-1`` or a name that is no class, naming the row and the fix.
        """
        if isinstance(label, int) and 0 <= label < len(self._names):
            return label
        if isinstance(label, str) and label in self._ids:
            return self._ids[label]
        raise DataError(
            f"Label {label if shown is None else shown!r} at {where} {outside(label, self._names)}"
        )

    def ids(self, labels: Sequence[LabelValue], *, where: Callable[[int], str]) -> list[int]:
        """The ids of a split's canonical labels (``where(i)`` names row ``i`` in errors)."""
        return [self.id_of(v, where(i)) for i, v in enumerate(labels)]

    def encode_column(
        self, cells: Sequence[Any], *, split: str, source: str, column: str, feature: Any = None
    ) -> list[int]:
        """The ids of one split's label cells (every cell and the column as a whole checked).

        Args:
            cells: the split's label cells as read.
            split: the split's name, for errors.
            source: what the split was read from, for errors.
            column: the label column's name in the source, for errors.
            feature: the column's feature; a ``ClassLabel`` maps its ids through its own names.
        """
        labels = read_column(
            cells, feature=feature, split=split, source=source, column=column, names=self._names
        )
        return self.ids(labels, where=where_row(split, source, column))

    def encode_row(self, cell: Any, *, where: str, feature: Any = None) -> int:
        """The id of one row's label cell (a streamed row), by the same rules as :meth:`encode_column`.

        Args:
            cell: the label cell as read.
            where: the row, split, file and column, for errors.
            feature: the column's feature; a ``ClassLabel`` maps its ids through its own names.
        """
        if isinstance(feature, datasets.ClassLabel):
            cell = class_label_name(cell, feature, where)
        return self.id_of(canonical_label(cell, where), where, shown=cell)


def class_label_name(value: Any, feature: datasets.ClassLabel, where: str) -> str:
    """The name of a ``ClassLabel`` cell (its id in the source's own class order)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(feature.names):
        raise DataError(
            f"Label {value!r} at {where} is outside its classes 0..{len(feature.names) - 1}; list the "
            "split in `data.unlabeled_splits` if it has no labels."
        )
    return feature.names[value]


def read_column(
    cells: Sequence[Any],
    *,
    feature: Any,
    split: str,
    source: str,
    column: str,
    names: Sequence[str] | None = None,
) -> list[LabelValue]:
    """The canonical labels of one split's label cells (a ClassLabel column through its names).

    Args:
        cells: the cells as read.
        feature: the column's feature.
        split: the split's name, for errors.
        source: what the split was read from, for errors.
        column: the label column's name in the source, for errors.
        names: the configured class names: cells listed there are class names even when they spell
            numbers (``"1.5"``).

    Raises:
        DataError: naming the first bad row.
    """
    if isinstance(feature, datasets.ClassLabel):
        where = where_row(split, source, column)
        cells = [class_label_name(v, feature, where(i)) for i, v in enumerate(cells)]
    return read_labels(cells, split=split, source=source, column=column, names=names)


def encode_labels(
    dd: datasets.DatasetDict, *, labels: LabelSpace | None, column: str, sources: Mapping[str, str]
) -> tuple[datasets.DatasetDict, LabelSpace | None]:
    """Casts the ``label`` column of every labelled split to the label space's ``ClassLabel``.

    Args:
        dd: in-memory splits, each with or without a ``label`` column.
        labels: the configured classes; None infers them from every split's labels.
        column: the label column's name in the source, for messages.
        sources: what each split was read from, for messages; key ``""``: the whole data.

    Returns:
        The splits with ``label`` as class ids, and the label space (the configured one, or the inferred
        one; None when neither classes were configured nor any split has labels).

    Raises:
        DataError: for a bad label value (naming the row), a single class, mixed strings and numbers, or
            (with inferred classes) a label an evaluation split has and ``train`` lacks.
    """
    source = sources[""]
    names = None if labels is None else labels.names
    values = {
        split: read_column(
            ds.with_format("arrow")["label"].to_pylist(),
            feature=ds.features["label"],
            split=split,
            source=sources.get(split, source),
            column=column,
            names=names,
        )  # fmt: skip
        for split, ds in dd.items()
        if "label" in ds.column_names
    }
    if not values:
        return dd, labels
    if {type(v) for split_labels in values.values() for v in split_labels} == {int, str}:
        raise DataError(
            f"Column {column!r} of {source} mixes strings and numbers; use one type (class ids 0..k-1 or names)."
        )
    if labels is None:
        labels = LabelSpace.infer(values, source=source)
    for split, split_labels in values.items():
        ids = labels.ids(split_labels, where=where_row(split, sources.get(split, source), column))
        dd[split] = dd[split].remove_columns("label").add_column("label", ids, feature=labels.feature)
    return dd, labels


def _check_seen_in_train(values: Mapping[str, Sequence[LabelValue]], source: str) -> None:
    """With inferred classes, a label only an evaluation split has is a typo or a class nothing learns."""
    seen = set(values["train"])
    for split, labels in values.items():
        unseen = [(i, v) for i, v in enumerate(labels) if v not in seen]
        if unseen:
            i, v = unseen[0]
            raise DataError(
                f"Label {v!r} (row {i} of split {split!r}, {source}; {len(unseen)} rows in all) never occurs "
                "in the training split, so no model can learn it. Fix: correct the rows, add training "
                "examples of it, or list every class in `data.label_names`."
            )
