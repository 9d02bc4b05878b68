"""Classification metrics through ``evaluate``, offline, plus a JSON metrics file.

``evaluate.load("accuracy")`` fetches the metric script from the Hub. hftl ships the ``accuracy`` and ``f1``
scripts in ``hftl/evaluation/modules/<name>/<name>.py`` and loads them by path, so evaluation works without a
network. Per-class precision / recall / F1 and the confusion matrix come straight from scikit-learn.

Example:
    >>> report = classification_report([0, 1, 1, 0], [0, 1, 0, 0], label_names=["neg", "pos"])
    >>> report["accuracy"], report["confusion_matrix"]
    (0.75, [[2, 1], [0, 1]])
    >>> print(format_report(report, title="validation"))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from hftl.errors import DataError, HftlError
from hftl.outputs import WRITTEN_BY, WRITTEN_BY_KEY, record_output, writing

if TYPE_CHECKING:
    import evaluate

MODULES_DIR = Path(__file__).resolve().parent / "modules"
METRIC_NAMES = ("accuracy", "f1")


@functools.cache
def load_metric(name: Literal["accuracy", "f1"]) -> evaluate.EvaluationModule:
    """Load one of the metric scripts shipped with hftl, without touching the Hub.

    The result is cached per process. ``evaluate`` copies the script into its modules cache
    (``HF_MODULES_CACHE``) on first use.

    Args:
        name: ``"accuracy"`` or ``"f1"``.

    Returns:
        The ``evaluate`` metric; call ``.compute(predictions=..., references=...)``.

    Raises:
        HftlError: if ``name`` is not a shipped metric.
    """
    if name not in METRIC_NAMES:
        raise HftlError(
            f"Unknown metric {name!r}: hftl ships {', '.join(METRIC_NAMES)} for offline use. "
            "Use one of those, or call `evaluate.load(...)` yourself for other metrics."
        )
    import evaluate  # deferred: importing evaluate takes seconds

    return evaluate.load(str(MODULES_DIR / name))


def _as_labels(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(
            f"`{what}` must be a 1-D sequence of class ids, found shape {array.shape}. "
            "If these are logits, take `argmax(-1)` first."
        )
    integral = array.dtype.kind in "biu" or (array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0))
    if array.size and not integral:
        raise DataError(
            f"`{what}` must hold integer class ids, found dtype {array.dtype} (e.g. {array[:3].tolist()})."
        )
    return array.astype(np.int64)


def classification_report(
    predictions: Sequence[int] | np.ndarray,
    references: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
) -> dict:
    """Accuracy, macro-F1, per-class scores and the confusion matrix of a single-label classifier.

    Accuracy and macro-F1 come from the shipped ``evaluate`` modules. Macro-F1 averages over the classes that
    appear in ``references`` or ``predictions`` (scikit-learn's default): a class absent from both, common in
    tiny evaluation splits, is listed in ``per_class`` with support 0 but does not drag the average down.
    Undefined precision / recall / F1 (division by zero) count as 0.

    Args:
        predictions: predicted class ids, shape ``(N,)``, each in ``[0, len(label_names))``.
        references: true class ids, shape ``(N,)``, same range.
        label_names: the name of each class id, in id order.

    Returns:
        ``{"accuracy": float, "macro_f1": float, "num_samples": int,
        "per_class": {name: {"precision", "recall", "f1", "support"}},
        "confusion_matrix": list[list[int]]}``; the matrix is ``k x k`` with rows the true class and columns
        the predicted class.

    Raises:
        DataError: if the inputs are empty, of different lengths, not 1-D, or hold ids outside the label range
            (for example the ``-1`` labels of an unlabelled test split).
    """
    preds = _as_labels(predictions, "predictions")
    refs = _as_labels(references, "references")
    names = list(label_names)
    k = len(names)
    if k == 0:
        raise DataError("`label_names` is empty: pass the name of every class, in class-id order.")
    if refs.size == 0:
        raise DataError(
            "Cannot compute metrics on 0 examples: the evaluation split is empty. "
            "Check the split name and any filtering or `max_samples` setting."
        )
    if preds.shape != refs.shape:
        raise DataError(
            f"`predictions` has {preds.size} items but `references` has {refs.size}: "
            "they must be aligned one-to-one."
        )
    for what, array in (("references", refs), ("predictions", preds)):
        bad = np.unique(array[(array < 0) | (array >= k)])
        if bad.size:
            raise DataError(
                f"`{what}` holds class ids {bad[:10].tolist()} outside [0, {k}) for labels {names}. "
                "Evaluate on a labelled split (unlabelled test splits often use -1) or fix `label_names`."
            )

    accuracy = load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"]
    macro_f1 = load_metric("f1").compute(
        predictions=preds, references=refs, average="macro", zero_division=0
    )["f1"]

    label_ids = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        refs, preds, labels=label_ids, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    matrix = confusion_matrix(refs, preds, labels=label_ids)
    return {
        "accuracy": float(accuracy),
        "macro_f1": float(macro_f1),
        "num_samples": int(refs.size),
        "per_class": per_class,
        "confusion_matrix": matrix.astype(int).tolist(),
    }


def format_report(report: dict, *, title: str | None = None) -> str:
    """Render a :func:`classification_report` result as a short plain-text table.

    Args:
        report: the dict returned by :func:`classification_report`.
        title: optional first line, e.g. the split name.

    Returns:
        Lines with accuracy, macro-F1 and one row per class (precision, recall, F1, support).
    """
    per_class = report.get("per_class", {})
    width = max([len("class"), *(len(str(name)) for name in per_class)])
    lines = [title] if title else []
    lines.append(f"accuracy  {report['accuracy']:.4f}   (n={report.get('num_samples', '?')})")
    lines.append(f"macro-F1  {report['macro_f1']:.4f}")
    if per_class:
        lines.append(f"{'class':<{width}}  precision  recall      f1  support")
        for name, row in per_class.items():
            lines.append(
                f"{name!s:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['f1']:>6.4f}"
                f"  {row['support']:>7d}"
            )
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_metrics(path: str | os.PathLike, metrics: dict) -> None:
    """Write ``metrics`` as JSON (indent 2), merged into the file's existing top-level keys, atomically.

    The new content goes to a temporary file in the same directory, is fsynced, then ``os.replace``d over
    ``path``: a reader or a crash never sees a half-written file. Keys in ``metrics`` overwrite existing keys of
    the same name; other keys are kept. NumPy scalars and arrays are converted. The file carries
    ``"written_by": "hftl"``; an existing file without it was not written by hftl and is never merged into or
    replaced. In an hftl run folder the file is recorded in the run's marker (``--overwrite`` removes it).

    Args:
        path: the JSON file to create or update; parent directories are created.
        metrics: a JSON-serialisable mapping.

    Raises:
        HftlError: if the existing file is not hftl's JSON object (it is left untouched).
        OutputError: if the file cannot be written (nothing half-written is left).
        TypeError: if a value cannot be serialised.
    """
    path = Path(path)
    merged = read_existing_metrics(path)
    merged.update(metrics)
    merged[WRITTEN_BY_KEY] = WRITTEN_BY
    text = json.dumps(merged, indent=2, default=_json_default) + "\n"

    with writing("metrics", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600; keep the existing file's mode, or the usual 0644 for a new one.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        record_output(path)


def read_existing_metrics(path: str | os.PathLike) -> dict:
    """The metrics hftl wrote to ``path`` before (``{}`` when there is no file).

    Raises:
        HftlError: ``path`` is a folder, a symlink, or a file hftl did not write (no ``"written_by": "hftl"``),
            which hftl must not merge into or replace.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return {}
    fix = "Move the file away or write the metrics to another path."
    if path.is_symlink() or not path.is_file():
        raise HftlError(
            f"Cannot write metrics to {path}: it is a {'symlink' if path.is_symlink() else 'folder'}. {fix}"
        )
    try:
        merged = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HftlError(f"Cannot merge metrics into {path}: it is not readable JSON ({err}). {fix}") from err
    if not isinstance(merged, dict):
        raise HftlError(
            f"Cannot merge metrics into {path}: it holds a JSON {type(merged).__name__}, not an object. {fix}"
        )
    if merged.get(WRITTEN_BY_KEY) != WRITTEN_BY:
        raise HftlError(
            f'Cannot write metrics to {path}: the file was not written by hftl (no "{WRITTEN_BY_KEY}": '
            f'"{WRITTEN_BY}" in it), and hftl never merges into or replaces such a file. {fix}'
        )
    return merged
