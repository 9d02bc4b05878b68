"""Input checks shared by eager and streamed loading: texts, media paths, and the media scan.

In-memory splits are checked whole (:func:`standardize_inputs`, then :func:`scan_media` opens every audio
and image file once before training); the streamed train split checks each row as it is read with the same
rules (:func:`check_text`, :func:`resolve_media_path`, :func:`hftl.data.image_checks.open_image`).

Example:
    >>> resolve_media_path("clips/0.wav", Path("/data/fsdd"))
    PosixPath('/data/fsdd/clips/0.wav')
    >>> check_text("  ", "row 3 of split 'train' (column 'text') in a.csv")
    Traceback (most recent call last):
    ...
    hftl.errors.DataError: Empty or missing text at row 3 of split 'train' (column 'text') in a.csv; remove or fill that row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from hftl.data.audio_checks import scan_audio
from hftl.data.builtin import PREFIX as BUILTIN_PREFIX
from hftl.data.image_checks import scan_images
from hftl.data.spec import DataSpec
from hftl.data.steps import Columns, column_values
from hftl.errors import DataError


def check_text(value: Any, where: str) -> str:
    """The text of one input cell.

    Raises:
        DataError: for a missing or blank text, naming ``where`` (row, split, column and file).
    """
    if value is None or not str(value).strip():
        raise DataError(f"Empty or missing text at {where}; remove or fill that row.")
    return str(value)


def resolve_media_path(value: Any, folder: Path) -> Path:
    """A media path from a manifest: ``~`` expanded, relative paths against the manifest's ``folder``."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else folder / path


def standardize_inputs(
    dd: datasets.DatasetDict, columns: Columns, folders: dict[str, Path], *, source: str
) -> datasets.DatasetDict:
    """Checks texts; resolves media paths and sets undecoded ``Audio`` / decoded ``Image`` features.

    Args:
        dd: splits after :func:`hftl.data.steps.standardize_columns` (input column named by modality).
        columns: the source's input column and the modality.
        folders: split -> the folder relative media paths resolve against (default: the working folder).
        source: the data path, for messages.

    Raises:
        DataError: an empty text, a text column of another type, a missing path, or a missing image file.
    """
    col = columns.modality
    for split, ds in dd.items():
        feature = ds.features[col]
        if col == "text":
            if not isinstance(feature, datasets.Value):
                raise DataError(
                    f"`data.modality` is text but column {columns.input!r} holds {feature}; "
                    "set `data.modality`/`data.input_column` to match the data."
                )
            for i, text in enumerate(column_values(ds, col)):
                check_text(text, f"row {i} of split {split!r} (column {columns.input!r}) in {source}")
            if feature.dtype not in ("string", "large_string"):
                ds = ds.cast_column(col, datasets.Value("string"))
        elif isinstance(feature, datasets.Audio):
            ds = ds.cast_column(col, datasets.Audio(decode=False))
        elif not isinstance(feature, datasets.Image):
            ds = _resolve_paths(ds, split, folders.get(split, Path(".")), columns, source)
        dd[split] = ds
    return dd


def _resolve_paths(
    ds: datasets.Dataset, split: str, folder: Path, columns: Columns, source: str
) -> datasets.Dataset:
    col = columns.modality
    paths = []
    for i, value in enumerate(column_values(ds, col)):
        if not value:
            raise DataError(f"Missing {col} path at row {i} of split {split!r} in {source}.")
        path = resolve_media_path(value, folder)
        if not path.is_file() and col != "audio":  # missing audio: reported with the others by scan_audio
            raise DataError(
                f"{col} file not found: {path} (row {i} of split {split!r}, column "
                f"{columns.input!r} of {source}); relative paths are resolved against "
                f"the manifest's folder {folder}."
            )
        paths.append(str(path))
    feature = datasets.Audio(decode=False) if col == "audio" else datasets.Image()
    ds = ds.remove_columns(col).add_column(col, paths).cast_column(col, feature)
    return ds.select_columns([c for c in (col, "label") if c in ds.column_names])


def scan_media(dd: datasets.DatasetDict, modality: str, spec: DataSpec) -> datasets.DatasetDict:
    """Checks every audio/image file once, before any training (bad ones: an error, or dropped).

    Args:
        dd: standardized in-memory splits.
        modality: their modality (text needs no scan).
        spec: what the checks read: ``path`` (``hftl:`` built-ins hold their images as arrays: nothing to
            check), ``on_bad_audio``, ``max_duration`` and ``bad_audio_report``
            (:mod:`hftl.data.audio_checks`), ``max_image_pixels`` (:mod:`hftl.data.image_checks`).

    Raises:
        DataError: bad files (all named in one error), unless ``on_bad_audio`` is ``skip``.
    """
    if modality == "audio":
        return scan_audio(dd, source=spec.path, on_bad_audio=spec.on_bad_audio,
                          max_duration=spec.max_duration, report_path=spec.bad_audio_report)  # fmt: skip
    if modality == "image" and not spec.path.startswith(BUILTIN_PREFIX):  # built-ins: hftl's own arrays
        return scan_images(dd, source=spec.path, max_pixels=spec.max_image_pixels)
    return dd
