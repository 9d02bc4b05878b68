"""``data.filters``: keep only the rows whose column holds one of the listed values.

One rule for in-memory splits (:meth:`RowFilter.mask`, a whole column at once) and for the streamed train
split (:meth:`RowFilter.predicate`, one row at a time): a cell and a listed value match when their
:func:`~hftl.data.labels.filter_key` is equal (text in Unicode NFC without surrounding spaces, ``1.0``
written ``1``), and in a ``ClassLabel`` column a listed value matches the class id or the class name.
Filters apply to every split right after the source is read, before any carving.

Example:
    >>> keep = RowFilter({"speaker": ["ann", "cy"]}).predicate(None)
    >>> [keep(row) for row in ({"speaker": "ann"}, {"speaker": "bob"}, {"speaker": " cy"})]
    [True, False, True]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from hftl.data.labels import canonical_name, filter_key
from hftl.errors import DataError


class RowFilter:
    """The rows ``data.filters`` keeps.

    Args:
        filters: column -> the values to keep (checked by :class:`hftl.data.spec.DataSpec`).
    """

    def __init__(self, filters: Mapping[str, Sequence[Any]]):
        self.filters = dict(filters)
        self._keys = {
            column: frozenset(filter_key(v) for v in values) for column, values in self.filters.items()
        }

    def allowed(self, column: str, feature: Any = None) -> frozenset[str]:
        """The filter keys a cell of ``column`` may have (for a ``ClassLabel``: the names and their ids)."""
        allowed = self._keys[column]
        if isinstance(feature, datasets.ClassLabel):
            ids = {canonical_name(name): str(i) for i, name in enumerate(feature.names)}
            allowed = allowed | {ids[v] for v in allowed if v in ids}
        return allowed

    def mask(self, ds: datasets.Dataset, *, split: str, source: str) -> np.ndarray:
        """Which rows of an in-memory split to keep.

        Raises:
            DataError: a filtered column the split lacks, or a filter that keeps no row of it.
        """
        keep = np.ones(len(ds), dtype=bool)
        for column, values in self.filters.items():
            if column not in ds.column_names:
                raise DataError(_missing(column, f"split {split!r} of {source}", ds.column_names))
            found = [filter_key(v) for v in ds.with_format("arrow")[column].to_pylist()]
            allowed = self.allowed(column, ds.features[column])
            keep &= np.array([v in allowed for v in found], dtype=bool)
            if not keep.any():
                shown = sorted(set(found))
                raise DataError(
                    f"`data.filters.{column}` = {values} leaves split {split!r} of {source} empty; "
                    f"values found in column {column!r}: {shown[:20]}{' ...' if len(shown) > 20 else ''}."
                )
        return keep

    def predicate(self, features: datasets.Features | None) -> Callable[[dict], bool]:
        """Whether to keep one row of a stream with these ``features`` (None: not known up front).

        The predicate raises DataError for a row without a filtered column.
        """
        features = features or {}
        allowed = {column: self.allowed(column, features.get(column)) for column in self.filters}

        def keep(row: dict) -> bool:
            for column, keys in allowed.items():
                if column not in row:
                    raise DataError(_missing(column, "the streamed train split", sorted(row)))
                if filter_key(row[column]) not in keys:
                    return False
            return True

        return keep


def filter_splits(
    dd: datasets.DatasetDict, filters: Mapping[str, Sequence[Any]] | None, *, source: str
) -> datasets.DatasetDict:
    """Keeps the rows of every in-memory split that ``filters`` keeps (see :class:`RowFilter`).

    Raises:
        DataError: a filtered column a split lacks, or a filter that empties a split.
    """
    if not filters:
        return dd
    row_filter = RowFilter(filters)
    for split, ds in dd.items():
        keep = row_filter.mask(ds, split=split, source=source)
        if not keep.all():
            dd[split] = ds.select(np.flatnonzero(keep)).flatten_indices()
    return dd


def _missing(column: str, where: str, columns: list[str]) -> str:
    return (
        f"`data.filters` names column {column!r}, which {where} does not have; available columns: {columns}. "
        "Fix or remove the filter."
    )
