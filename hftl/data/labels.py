"""Class labels: one canonical form for every label hftl reads, and the checks that keep classes honest.

Every label goes through :func:`canonical_label` — rows of eager and streamed data, the class names of a
source's ``ClassLabel`` — and every configured name through :func:`canonical_name`:

* **Strings** are normalised to Unicode NFC and stripped of surrounding whitespace, so ``"café"`` typed
  as one code point or as ``e`` + combining accent is one class, and ``"pos\\r"`` (a Windows line end) is
  ``"pos"``. Letter case is kept (``Pos`` and ``pos`` stay two classes, with a warning). An empty string
  is a missing label.
* **Integers** are class ids (label ``i`` is ``label_names[i]``). **Booleans** are the ids 0 (False) and
  1 (True), as in Python and NumPy (give ``label_names`` to name them, e.g. ``[ham, spam]``).
* **Floats** are accepted only when integral (``1.0`` is id 1: CSV and parquet readers turn an integer
  column holding one empty cell into floats). NaN, ±inf and ``1.5`` stop with an error naming the row, and
  so do strings spelling them in a column of number strings (``"0", "1", "nan"``).
* ``None`` (an empty cell) is a missing label: an error, whose fix is to fill the row, drop such rows with
  ``data.filters``, or list an unlabelled split in ``data.unlabeled_splits``.

The label space built from these values must hold at least two classes, and integer ids must be dense
enough to be class ids (``0, 1, 7_000_000`` are codes, not 7 million classes). The label space itself,
which encodes a column or a row with these rules, is :class:`hftl.data.label_space.LabelSpace`.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from hftl.errors import DataError

logger = logging.getLogger(__name__)

LabelValue = int | str
MAX_ID_GAP = 10  # inferred integer ids may span at most this many times the distinct ids seen ...
MIN_ID_SPAN_CHECKED = 100  # ... once they reach this many classes (1-based ids such as 1..5 only warn)
MISSING_WORDS = frozenset({"nan", "none", "null", "n/a", "na", "-", "?"})  # class names worth a warning
FIX_VALUE = (
    "use integer class ids 0..k-1 or class-name strings, fill the row, or drop such rows with "
    "`data.filters` (e.g. `data.filters: {label: [0, 1]}`)"
)


def canonical_name(name: Any) -> str:
    """The canonical text of a class name or filter value: ``str``, Unicode NFC, outer whitespace stripped."""
    text = name if isinstance(name, str) else str(name)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text.strip()


def filter_key(value: Any) -> str:
    """How ``data.filters`` compares a cell with a listed value: canonical text, ``1.0`` written ``1``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return canonical_name(value)


def label_names_problems(names: Sequence[Any] | None, *, key: str = "data.label_names") -> list[str]:
    """Problems with configured class names (compared after :func:`canonical_name`), one line each."""
    if names is None:
        return []
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        return [
            f"`{key}` is {names!r}; give a list of class names, one per class, e.g. [negative, positive]."
        ]
    bad = [n for n in names if not isinstance(n, str | int | float) or not canonical_name(n)]
    if bad:
        return [f"`{key}` holds {bad!r}; every class name must be a non-empty string (or a number)."]
    if len(names) < 2:
        return [f"`{key}` is {list(names)!r}; a classifier needs at least two classes."]
    seen: dict[str, Any] = {}
    clashes = []
    for name in names:
        canon = canonical_name(name)
        if canon in seen:
            clashes.append(f"{seen[canon]!r} and {name!r}")
        seen.setdefault(canon, name)
    if clashes:
        return [
            f"`{key}` names the same class twice once Unicode (NFC) and surrounding spaces are normalised: "
            f"{'; '.join(clashes)}. Fix: list each class once."
        ]
    return []


def canonical_label(value: Any, where: str) -> LabelValue:
    """The canonical class of one label cell (see the module docstring).

    Args:
        value: the cell as read (str, int, bool, float or None).
        where: the row, split, file and column, for the error, e.g. ``"row 3 of split 'train' (a.csv,
            column 'label')"``.

    Raises:
        DataError: for a missing, empty, non-finite or non-integral label, or one of another type.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = canonical_name(value)
        if text:
            return text
        raise DataError(f"Empty label {value!r} at {where}; {FIX_VALUE}.")
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise DataError(f"Label {value!r} at {where} is {_not_an_id(value)}, so it is no class; {FIX_VALUE}.")
    if value is None:
        raise DataError(
            f"Missing label at {where}; {FIX_VALUE}, or list the split in `data.unlabeled_splits` if it "
            "has no labels."
        )
    raise DataError(f"Label {value!r} ({type(value).__name__}) at {where} is not a class; {FIX_VALUE}.")


def where_row(split: str, source: str, column: str) -> Callable[[int], str]:
    """The location of row ``i`` of a split, for messages: ``row 3 of split 'train' (a.csv, column 'label')``."""
    return lambda i: f"row {i} of split {split!r} ({source}, column {column!r})"


def read_labels(
    raw: Sequence[Any], *, split: str, source: str, column: str, names: Sequence[str] | None = None
) -> list[LabelValue]:
    """Canonical labels of one split's cells (each checked; normalised spellings reported once).

    Args:
        raw: the split's label cells.
        split: the split's name.
        source: the data path.
        column: the label column's name in the source.
        names: the configured ``label_names``: cells listed there are class names even when they spell
            numbers (``"1.5"``).

    Raises:
        DataError: naming the first bad row.
    """
    where = where_row(split, source, column)
    cache: dict[tuple[type, Any], LabelValue] = {}
    out, changed = [], {}
    for i, value in enumerate(raw):
        if not isinstance(value, str | int | float):  # None, lists, dicts: raises
            canonical_label(value, where(i))
        key = (type(value), value)
        if key not in cache:  # NaN never equals itself, so it is never cached: it raises here
            cache[key] = canonical_label(value, where(i))
            if isinstance(value, str) and cache[key] != value:
                changed.setdefault(value, cache[key])
        out.append(cache[key])
    if changed:
        shown = ", ".join(f"{k!r} -> {v!r}" for k, v in list(changed.items())[:3])
        logger.warning(
            "%d label spelling(s) of split %r of %s were normalised (Unicode NFC, surrounding spaces): %s.",
            len(changed), split, source, shown,
        )  # fmt: skip
    if all(isinstance(v, str) for v in raw):
        _check_number_strings(out, where, set(names or ()))
    return out


def _check_number_strings(labels: Sequence[LabelValue], where: Callable[[int], str], names: set[str]) -> None:
    """Rejects ``"nan"``/``"inf"``/``"1.5"`` in a column of number strings (a numeric column read as text)."""
    if not labels or not all(isinstance(v, str) and _as_float(v) is not None for v in labels):
        return
    for i, v in enumerate(labels):
        if v not in names and not _as_float(v).is_integer():
            raise DataError(
                f"Label {v!r} at {where(i)} is {_not_an_id(_as_float(v))}, in a column of numbers; {FIX_VALUE}."
            )


def _not_an_id(number: float) -> str:
    return (
        "not a number" if math.isnan(number) else "infinite" if math.isinf(number) else "not a whole number"
    )


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def infer_names(values: Sequence[LabelValue], source: str) -> list[str]:
    """Class names when ``label_names`` is not given: sorted strings, or ``"0".."max"`` for integer ids.

    Raises:
        DataError: for a mix of strings and numbers, negative ids, or ids too sparse to be class ids.
    """
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        by_case: dict[str, list[str]] = {}
        for name in names:
            by_case.setdefault(name.casefold(), []).append(name)
        clashes = [group for group in by_case.values() if len(group) > 1]
        missing = [n for n in names if n.casefold() in MISSING_WORDS]
        if missing:
            logger.warning(
                "Classes %s of %s look like missing values, not classes; if they are, drop those rows with "
                "`data.filters` or fill them.", missing, source,
            )  # fmt: skip
        if clashes:
            logger.warning(
                "Classes of %s differ only in letter case: %s; they stay separate classes. If they are one "
                "class, fix the data.", source, "; ".join(" / ".join(map(repr, g)) for g in clashes[:3]),
            )  # fmt: skip
        return names
    if not all(isinstance(v, int) for v in values):
        raise DataError(f"The labels of {source} mix strings and numbers; use one type (class ids or names).")
    low, high, distinct = min(values), max(values), len(set(values))
    if low < 0:
        raise DataError(
            f"The labels of {source} include the id {low}; class ids are 0..k-1. -1 usually marks an unlabelled "
            "row: list such splits in `data.unlabeled_splits`, or drop the rows with `data.filters`."
        )
    if high + 1 >= MIN_ID_SPAN_CHECKED and high + 1 > MAX_ID_GAP * distinct:
        raise DataError(
            f"The integer labels of {source} reach {high} but only {distinct} distinct ids occur: they look like "
            f"codes, not class ids (they would make {high + 1:,} classes). Fix: renumber them 0..{distinct - 1} "
            "(and name them in `data.label_names`), or write the labels as strings."
        )
    return [str(i) for i in range(high + 1)]


def check_label_space(names: Sequence[str], counts: dict[str, int], source: str) -> None:
    """A classifier needs two classes: raises when the label space of labelled data has fewer.

    Args:
        names: the class names.
        counts: labelled rows per split.
        source: the data path, for the message.
    """
    if len(names) >= 2:
        return
    rows = ", ".join(f"{n} in {split!r}" for split, n in counts.items())
    raise DataError(
        f"Every label of {source} is {names[0]!r} ({rows}): a single class, so any model scores 100 % by "
        "predicting it. Fix: check `data.label_column` (is it the label?), widen `data.filters`, add rows "
        "of the other classes, or list all classes in `data.label_names`."
    )


def check_train_classes(labels: Sequence[int], names: Sequence[str], *, split: str, source: str) -> None:
    """The training split must hold two classes or more; classes it lacks are warned about.

    Args:
        labels: the split's class ids (after filters, carving and ``max_samples``).
        names: the class names.
        split: the split's name.
        source: the data path.

    Raises:
        DataError: when the split holds a single class.
    """
    present = sorted(set(labels))
    if len(present) == 1:
        raise DataError(
            f"Split {split!r} of {source} holds a single class, {names[present[0]]!r} ({len(labels)} rows after "
            "`data.filters`, carving and `data.max_samples`): a model trained on it predicts that class for "
            f"every input. Fix: add rows of the other classes {[n for n in names if n != names[present[0]]]}, "
            "or widen `data.filters` / `data.max_samples`."
        )
    missing = [names[i] for i in range(len(names)) if i not in set(present)]
    if missing:
        logger.warning(
            "%d class(es) of %s have no rows in split %r: %s%s. The model cannot learn to predict them; add "
            "training rows or remove them from `data.label_names`.",
            len(missing), source, split, missing[:10], " ..." if len(missing) > 10 else "",
        )  # fmt: skip


def outside(value: LabelValue, names: Sequence[str]) -> str:
    """The end of the message for a label that is no class of ``names`` (what is allowed, and the fix)."""
    shown = list(names[:20]) + (["..."] if len(names) > 20 else [])
    if isinstance(value, int):
        hint = (
            " (-1 usually marks an unlabelled row: list the split in `data.unlabeled_splits`)"
            if value < 0
            else ""
        )
        return f"is outside the class ids 0..{len(names) - 1}{hint}; fix the row or `data.label_names`."
    return f"is not one of the classes {shown}; fix the row or `data.label_names`."
