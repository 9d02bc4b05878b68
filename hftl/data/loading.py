"""Labelled classification data in one standard shape, whatever the source.

:class:`ClassificationData` reads a local csv/tsv/json(l)/parquet file, an audio or image folder, a
Blitzer sentiment domain, a built-in set (``hftl:sklearn_digits``) or a Hub dataset id with
``datasets``, and returns a :class:`datasets.DatasetDict` whose splits (among ``train``, ``validation``,
``test``) hold one input column named by modality (``text``, ``audio`` or ``image``) and ``label``
(a :class:`datasets.ClassLabel`). Splits listed in ``unlabeled_splits`` have no ``label`` column.

Example (YAML)::

    data:
      _component_: hftl.data.ClassificationData
      path: ../shared/data/sst2_agnews_alps/SST-2/train.tsv
      max_samples: {train: 2000}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

from hftl.data.audio import AUDIO_EXTENSIONS
from hftl.data.audio_checks import OnBadAudio, option_problems, scan_audio
from hftl.data.builtin import PREFIX as BUILTIN_PREFIX
from hftl.data.image_checks import DEFAULT_MAX_IMAGE_PIXELS, scan_images
from hftl.data.labels import (
    canonical_name,
    check_train_classes,
    encode_labels,
    filter_key,
    label_names_problems,
)
from hftl.data.sources import IMAGE_EXTENSIONS, PACKAGED_BUILDERS, flat_files, read_source
from hftl.errors import ConfigError, DataError, HftlError

logger = logging.getLogger(__name__)

Modality = Literal["text", "audio", "image"]
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}  # fmt: skip
INPUT_COLUMNS = ("text", "sentence", "review", "reviews", "content", "audio", "image", "img", "file", "path")


def _size_ok(size: float | int | None, *, allow_none: bool) -> bool:
    if size is None:
        return allow_none
    if isinstance(size, bool) or not isinstance(size, int | float):
        return False
    return size == 0 or (isinstance(size, float) and 0 < size < 1) or (isinstance(size, int) and size > 0)


def _column(ds: datasets.Dataset, name: str) -> list:
    """The values of one column as Python objects (respects an indices mapping, fast)."""
    return ds.with_format("arrow")[name].to_pylist()


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


# --- reading the source splits (``read_source``) -----------------------------------------------------


class ClassificationData:
    """A labelled classification data set, built from config.

    Args:
        path: a packaged builder (``csv``, ``json``, ``parquet``, ``audiofolder``, ``imagefolder``) used
            with ``data_files``; a local .csv/.tsv/.json/.jsonl/.parquet file (the train split); a local
            folder (audio/image folder by file extension, a Blitzer domain with ``positive.review``/
            ``negative.review``, or tabular files named by split); ``blitzer`` with ``data_files`` = a
            domain folder; ``hftl:sklearn_digits``; or a Hugging Face Hub dataset id.
        data_files: files or folders for a builder, a list, or a dict ``{source split: files}``.
        name: Hub dataset configuration name.
        revision: Hub dataset revision.
        input_column: column holding the input; None takes the first present of
            ``text, sentence, review, reviews, content, audio, image, img, file, path``.
        label_column: column holding the label.
        modality: ``text``, ``audio`` or ``image``; None infers it from the column's feature or name.
        label_names: names for integer labels (label i is ``label_names[i]``), or the allowed set and
            order for string labels. None: sorted unique strings, or ``"0".."k-1"`` for integers. Names
            and string labels are compared in Unicode NFC without surrounding spaces, and float, NaN or
            empty labels are errors (see :mod:`hftl.data.labels`); at least two classes are needed.
        splits: hftl split -> source split, e.g. ``{"test": "dev"}``. Source splits named train,
            validation/valid/val/dev and test are used without it.
        validation_size: fraction (0..1) or number of train rows carved (stratified, seeded) into
            ``validation`` when the source has none; 0 disables.
        test_size: same for ``test``; None disables.
        unlabeled_splits: splits whose label column is dropped (target-domain training data).
        filters: keep only the rows whose column value is listed, e.g. ``{speaker: [george, jackson]}``;
            applied to every split right after reading the source (and mapping ``splits``), before
            carving. Values are compared as strings (NFC, stripped; ``1.0`` matches ``1``); a ClassLabel
            column matches class ids or names.
        max_samples: keep a seeded random subset of at most this many rows per split (an int for
            every split or ``{split: n}``).
        seed: seed of the carved splits and of ``max_samples``.
        delimiter: csv field delimiter; None means tab for .tsv files and comma otherwise.
        trust_remote_code: passed to ``datasets.load_dataset`` when it still accepts it (datasets < 4).
        missing_hint: appended to the error when ``path`` does not exist, e.g. the command making the data.
        on_bad_audio: audio files are checked before training (:mod:`hftl.data.audio_checks`); ``stop``
            reports the bad ones in one error, ``skip`` drops them with one warning.
        max_duration: the encoder's ``max_duration`` (``${encoder.max_duration}``), only to warn once
            about clips far longer than the crop it keeps.
        bad_audio_report: csv file listing every bad audio file, e.g. ``${output_dir}/bad_audio.csv``.
        streaming: read the train split lazily as a ``datasets.IterableDataset`` (data larger than memory
            or disk cache); needs ``label_names`` and ``train.max_steps``. See :mod:`hftl.data.streaming`.
        shuffle_buffer: rows in the streaming shuffle buffer (larger: closer to a full shuffle, more memory).
        max_image_pixels: largest width × height an image file may declare (default: PIL's own
            decompression-bomb threshold, about 89.5 million pixels); larger files are reported by the image
            check before training instead of being decoded. See :mod:`hftl.data.image_checks`.
        check_train_classes: the ``train`` split is trained on, so it must hold at least two classes
            (after filters, carving and ``max_samples``), and classes it lacks are warned about. Set false
            only when ``train`` is data to score, not to train on (``hftl eval --data`` does).

    Raises:
        ConfigError: for argument values outside the allowed ones (all problems at once).
    """

    def __init__(
        self,
        *,
        path: str,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        name: str | None = None,
        revision: str | None = None,
        input_column: str | None = None,
        label_column: str = "label",
        modality: Modality | None = None,
        label_names: list[str] | None = None,
        splits: dict[str, str] | None = None,
        validation_size: float | int = 0.1,
        test_size: float | int | None = None,
        unlabeled_splits: list[str] = [],  # noqa: B006 (never mutated; the documented config default)
        filters: dict[str, list] | None = None,
        max_samples: int | dict[str, int] | None = None,
        seed: int = 42,
        delimiter: str | None = None,
        trust_remote_code: bool = False,
        missing_hint: str | None = None,
        on_bad_audio: OnBadAudio = "stop",
        max_duration: float | None = None,
        bad_audio_report: str | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        check_train_classes: bool = True,
    ):
        self.path = str(path)
        self.data_files = data_files
        self.name, self.revision = name, revision
        self.input_column, self.label_column = input_column, label_column
        self.requested_modality = modality
        self.requested_label_names = label_names  # canonical names once checked, below
        self.splits = dict(splits or {})
        self.validation_size, self.test_size = validation_size, test_size
        self.unlabeled_splits = list(unlabeled_splits or [])
        self.filters = filters
        self.max_samples = max_samples
        self.seed, self.delimiter, self.trust_remote_code = seed, delimiter, trust_remote_code
        self.missing_hint, self.on_bad_audio, self.max_duration = missing_hint, on_bad_audio, max_duration
        self.bad_audio_report = bad_audio_report
        self.streaming, self.shuffle_buffer = streaming, shuffle_buffer
        self.max_image_pixels, self.check_train_classes = max_image_pixels, check_train_classes
        self._check_args()
        if label_names is not None:
            self.requested_label_names = [canonical_name(n) for n in label_names]
        self._label_names: list[str] | None = None
        self._modality: str | None = None
        self._source_splits: dict[str, str] = {}  # hftl split -> the source split it was read from

    def _check_args(self) -> None:
        problems = []
        if not self.path:
            problems.append("`data.path` is empty; give a file, folder, builder name or Hub dataset id.")
        if self.requested_modality not in (None, "text", "audio", "image"):
            problems.append(
                f"`data.modality` is {self.requested_modality!r}; allowed: text, audio, image or null."
            )
        if not _size_ok(self.validation_size, allow_none=False):
            problems.append(
                f"`data.validation_size` is {self.validation_size!r}; allowed: a fraction in "
                "(0, 1), a positive row count, or 0 for none."
            )
        if not _size_ok(self.test_size, allow_none=True):
            problems.append(
                f"`data.test_size` is {self.test_size!r}; allowed: a fraction in (0, 1), a "
                "positive row count, or null for none."
            )
        for key in self.splits:
            if key not in SPLITS:
                problems.append(f"`data.splits` has key {key!r}; allowed keys: {', '.join(SPLITS)}.")
        for split in self.unlabeled_splits:
            if split not in SPLITS:
                problems.append(f"`data.unlabeled_splits` has {split!r}; allowed: {', '.join(SPLITS)}.")
        if self.filters is not None and not isinstance(self.filters, dict):
            problems.append(f"`data.filters` is {self.filters!r}; allowed: {{column: [values]}} or null.")
        for column, values in self.filters.items() if isinstance(self.filters, dict) else []:
            if isinstance(values, str | bytes) or not hasattr(values, "__len__") or not len(values):
                problems.append(
                    f"`data.filters.{column}` is {values!r}; allowed: a non-empty list of the values to "
                    f"keep, e.g. `{column}: [a, b]`."
                )
        ms = self.max_samples
        items = ms.items() if isinstance(ms, dict) else [] if ms is None else [("*", ms)]
        for key, n in items:
            if key != "*" and key not in SPLITS:
                problems.append(f"`data.max_samples` has key {key!r}; allowed keys: {', '.join(SPLITS)}.")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                problems.append(f"`data.max_samples` is {n!r} for {key!r}; allowed: a positive integer.")
        problems += label_names_problems(self.requested_label_names)
        if (
            isinstance(self.max_image_pixels, bool)
            or not isinstance(self.max_image_pixels, int)
            or self.max_image_pixels < 1
        ):
            problems.append(
                f"`data.max_image_pixels` is {self.max_image_pixels!r}; allowed: a positive pixel count "
                f"(default {DEFAULT_MAX_IMAGE_PIXELS:,})."
            )
        problems += option_problems(self.on_bad_audio, self.max_duration)
        if (
            isinstance(self.shuffle_buffer, bool)
            or not isinstance(self.shuffle_buffer, int)
            or self.shuffle_buffer < 1
        ):
            problems.append(
                f"`data.shuffle_buffer` is {self.shuffle_buffer!r}; allowed: a positive row count."
            )
        if problems:
            raise ConfigError(problems)

    @property
    def label_names(self) -> list[str]:
        """Class names, label i is ``label_names[i]`` (available after :meth:`load`)."""
        if self._label_names is None:
            raise HftlError("ClassificationData.label_names is known only after load(); call load() first.")
        return self._label_names

    @property
    def modality(self) -> str:
        """``text``, ``audio`` or ``image`` (available after :meth:`load`)."""
        if self._modality is None:
            raise HftlError("ClassificationData.modality is known only after load(); call load() first.")
        return self._modality

    def source_of(self, split: str | None = None) -> str:
        """What the data (or one split) is read from, for messages: the file(s) when ``path`` is a builder."""
        files = self.data_files
        if self.path not in PACKAGED_BUILDERS or not files:
            return self.path
        if split is not None and isinstance(files, dict):
            files = files.get(self._source_splits.get(split, split)) or files
        return ", ".join(flat_files(files))

    # ----------------------------------------------------------------------------------------------
    def load(self) -> datasets.DatasetDict:
        """Reads, checks and standardizes the data.

        Returns:
            Splits among ``train``/``validation``/``test`` with columns ``text``|``audio``|``image``
            and ``label`` (ClassLabel), except ``unlabeled_splits`` which have no ``label``.

        Raises:
            DataError: for missing files, splits or columns, empty texts or splits, bad label values.
        """
        if self.streaming:
            from hftl.data.streaming import load_streaming

            return load_streaming(self)
        try:
            raw, folders = read_source(
                self.path, data_files=self.data_files, name=self.name, revision=self.revision,
                seed=self.seed, delimiter=self.delimiter, trust_remote_code=self.trust_remote_code,
            )  # fmt: skip
        except DataError as err:
            if self.missing_hint and not Path(self.path).expanduser().exists():
                raise DataError(f"{err} {self.missing_hint}") from err
            raise
        dd, folders = self._select_splits(raw, folders)
        dd = self._filter(dd)
        carve_val = "validation" not in dd and "train" in dd and self.validation_size != 0
        carve_test = "test" not in dd and "train" in dd and self.test_size not in (None, 0)
        planned = set(dd) | ({"validation"} if carve_val else set()) | ({"test"} if carve_test else set())
        missing = sorted(set(self.unlabeled_splits) - planned)
        if missing:
            raise DataError(
                f"`data.unlabeled_splits` names {missing}, which the data will not have; "
                f"splits: {sorted(planned)}. Remove them or add them via `data.splits`."
            )
        drop_labels = set(self.unlabeled_splits) - ({"train"} if carve_val or carve_test else set())
        dd = self._standardize_columns(dd, drop_labels)
        dd = self._standardize_inputs(dd, folders)
        dd = self._scan_media(dd)
        dd = self._encode_labels(dd)
        dd = self._carve(dd, carve_val=carve_val, carve_test=carve_test)
        for split, ds in dd.items():
            if split in self.unlabeled_splits and "label" in ds.column_names:
                dd[split] = ds.remove_columns("label")
            elif split not in self.unlabeled_splits and "label" not in ds.column_names:
                raise DataError(
                    f"Split {split!r} was carved from the unlabeled train split and has no labels; "
                    f"give a labelled {split} split via `data.splits` or set `data.{split}_size: 0`."
                )
        dd = self._subsample(dd)
        if self.check_train_classes and "train" in dd and "label" in dd["train"].column_names:
            labels = _column(dd["train"], "label")
            check_train_classes(labels, self._label_names, split="train", source=self.source_of("train"))
        return datasets.DatasetDict({s: dd[s] for s in SPLITS if s in dd})

    # ----------------------------------------------------------------------------------------------
    def _scan_media(self, dd: datasets.DatasetDict) -> datasets.DatasetDict:
        """Checks every audio/image file once, before any training (bad ones: error, or dropped)."""
        if self._modality == "audio":
            return scan_audio(dd, source=self.path, on_bad_audio=self.on_bad_audio,
                              max_duration=self.max_duration, report_path=self.bad_audio_report)  # fmt: skip
        if self._modality == "image" and not self.path.startswith(BUILTIN_PREFIX):  # built-ins: hftl's arrays
            return scan_images(dd, source=self.path, max_pixels=self.max_image_pixels)
        return dd

    def _select_splits(self, raw, folders) -> tuple[datasets.DatasetDict, dict[str, Path]]:
        for target, source in self.splits.items():
            if source not in raw:
                raise DataError(
                    f"`data.splits.{target}` is {source!r}, which {self.path} does not have; "
                    f"available splits: {sorted(raw)}."
                )
        explicit = set(self.splits.values())
        mapping = {SPLIT_ALIASES[s]: s for s in raw if s in SPLIT_ALIASES and s not in explicit}
        mapping = {k: v for k, v in mapping.items() if k not in self.splits} | self.splits
        if not mapping:
            raise DataError(
                f"{self.path} has splits {sorted(raw)}, none of which is train/validation/test; map "
                "them with `data.splits`, e.g. {train: <name>}."
            )
        for source in mapping.values():
            if isinstance(raw[source], datasets.Dataset) and len(raw[source]) == 0:
                raise DataError(
                    f"Split {source!r} of {self.path} is empty (0 rows); fix the data file or map "
                    "another split with `data.splits`."
                )
        self._source_splits = dict(mapping)
        dd = datasets.DatasetDict({target: raw[source] for target, source in mapping.items()})
        return dd, {t: folders[s] for t, s in mapping.items() if s in folders}

    def _filter(self, dd: datasets.DatasetDict) -> datasets.DatasetDict:
        """Keeps the rows whose ``filters`` columns hold one of the listed values, in every split."""
        for split, ds in dd.items() if self.filters else []:
            keep = np.ones(len(ds), dtype=bool)
            for column, values in self.filters.items():
                if column not in ds.column_names:
                    raise DataError(
                        f"`data.filters` names column {column!r}, which split {split!r} of {self.path} does "
                        f"not have; available columns: {ds.column_names}. Fix or remove the filter."
                    )
                feature, found = ds.features[column], [filter_key(v) for v in _column(ds, column)]
                allowed = {filter_key(v) for v in values}
                if isinstance(feature, datasets.ClassLabel):  # a class id or its name
                    ids = {canonical_name(n): str(i) for i, n in enumerate(feature.names)}
                    allowed |= {ids[v] for v in allowed if v in ids}
                keep &= np.array([v in allowed for v in found], dtype=bool)
                if not keep.any():
                    shown = sorted(set(found))
                    raise DataError(
                        f"`data.filters.{column}` = {values} leaves split {split!r} of {self.path} empty; "
                        f"values found in column {column!r}: {shown[:20]}{' ...' if len(shown) > 20 else ''}."
                    )
            if not keep.all():
                dd[split] = ds.select(np.flatnonzero(keep)).flatten_indices()
        return dd

    def _standardize_columns(self, dd: datasets.DatasetDict, drop_labels: set[str]) -> datasets.DatasetDict:
        """Keeps only the input column and (where wanted) the label column, renamed ``label``."""
        first = next(iter(dd.values()))
        if self.input_column is None:
            found = [c for c in INPUT_COLUMNS if c in first.column_names]
            if not found:
                raise DataError(
                    f"No input column found in {self.path}: columns are {first.column_names}, none of "
                    f"{list(INPUT_COLUMNS)}. Set `data.input_column` to the column with the inputs."
                )
            self.input_column = found[0]
        self._modality = self.requested_modality or self._infer_modality(first)
        out = {}
        for split, ds in dd.items():
            if self.input_column not in ds.column_names:
                raise DataError(
                    f"Input column {self.input_column!r} not in split {split!r} of {self.path}; columns: "
                    f"{ds.column_names}. Set `data.input_column` to one of them."
                )
            has_label = self.label_column in ds.column_names and self.label_column != self.input_column
            if not has_label and split not in self.unlabeled_splits:
                raise DataError(
                    f"Label column {self.label_column!r} not in split {split!r} of {self.path}; columns: "
                    f"{ds.column_names}. Set `data.label_column`, or list the split in "
                    "`data.unlabeled_splits` if it has no labels."
                )
            keep = [self.input_column] + (
                [self.label_column] if has_label and split not in drop_labels else []
            )
            ds = ds.select_columns(keep)
            renames = {self.input_column: self._modality, self.label_column: "label"}
            out[split] = ds.rename_columns({k: v for k, v in renames.items() if k in keep and k != v})
        return datasets.DatasetDict(out)

    def _infer_modality(self, ds: datasets.Dataset) -> str:
        feature = ds.features[self.input_column]
        if isinstance(feature, datasets.Audio):
            return "audio"
        if isinstance(feature, datasets.Image):
            return "image"
        if self.input_column in ("audio", "image", "img"):
            return "image" if self.input_column == "img" else self.input_column
        if self.input_column in ("file", "path"):
            suffix = Path(str(ds[0][self.input_column])).suffix.lower()
            if suffix in AUDIO_EXTENSIONS:
                return "audio"
            if suffix in IMAGE_EXTENSIONS:
                return "image"
        return "text"

    def _standardize_inputs(self, dd: datasets.DatasetDict, folders: dict[str, Path]) -> datasets.DatasetDict:
        """Checks texts; resolves media paths and sets undecoded Audio / decoded Image features."""
        col = self._modality
        for split, ds in dd.items():
            feature = ds.features[col]
            if col == "text":
                if not isinstance(feature, datasets.Value):
                    raise DataError(
                        f"`data.modality` is text but column {self.input_column!r} holds {feature}; "
                        "set `data.modality`/`data.input_column` to match the data."
                    )
                for i, text in enumerate(_column(ds, col)):
                    if text is None or not str(text).strip():
                        raise DataError(
                            f"Empty or missing text at row {i} of split {split!r} (column "
                            f"{self.input_column!r}) in {self.path}; remove or fill that row."
                        )
                if feature.dtype not in ("string", "large_string"):
                    ds = ds.cast_column(col, datasets.Value("string"))
            elif isinstance(feature, datasets.Audio):
                ds = ds.cast_column(col, datasets.Audio(decode=False))
            elif not isinstance(feature, datasets.Image):
                ds = self._resolve_paths(ds, split, folders.get(split, Path(".")))
            dd[split] = ds
        return dd

    def _resolve_paths(self, ds: datasets.Dataset, split: str, folder: Path) -> datasets.Dataset:
        col = self._modality
        paths = []
        for i, value in enumerate(_column(ds, col)):
            if not value:
                raise DataError(f"Missing {col} path at row {i} of split {split!r} in {self.path}.")
            p = Path(str(value)).expanduser()
            p = p if p.is_absolute() else folder / p
            if not p.is_file() and col != "audio":  # missing audio: reported with the others by scan_audio
                raise DataError(
                    f"{col} file not found: {p} (row {i} of split {split!r}, column "
                    f"{self.input_column!r} of {self.path}); relative paths are resolved against "
                    f"the manifest's folder {folder}."
                )
            paths.append(str(p))
        feature = datasets.Audio(decode=False) if col == "audio" else datasets.Image()
        ds = ds.remove_columns(col).add_column(col, paths).cast_column(col, feature)
        return ds.select_columns([c for c in (col, "label") if c in ds.column_names])

    def _encode_labels(self, dd: datasets.DatasetDict) -> datasets.DatasetDict:
        """Casts every present label column to one shared ClassLabel (rules: :mod:`hftl.data.labels`)."""
        dd, names = encode_labels(
            dd,
            names=self.requested_label_names,
            column=self.label_column,
            sources={"": self.source_of()} | {split: self.source_of(split) for split in dd},
        )
        self._label_names = names
        return dd

    def _carve(self, dd: datasets.DatasetDict, *, carve_val: bool, carve_test: bool) -> datasets.DatasetDict:
        n = len(dd["train"]) if "train" in dd else 0
        sizes = {
            "test": self.test_size if carve_test else 0,
            "validation": self.validation_size if carve_val else 0,
        }
        for split, size in sizes.items():  # counts from the original train size, test first
            if not size:
                continue
            count = round(size * n) if isinstance(size, float) else size
            if not 1 <= count < len(dd["train"]):
                raise DataError(
                    f"`data.{split}_size` = {size} gives {count} rows of a train split with "
                    f"{len(dd['train'])} rows; need 1..{len(dd['train']) - 1}."
                )
            dd["train"], dd[split] = _carve(dd["train"], count, seed=self.seed)
        return dd

    def _subsample(self, dd: datasets.DatasetDict) -> datasets.DatasetDict:
        if self.max_samples is None:
            return dd
        for split, ds in dd.items():
            n = self.max_samples.get(split) if isinstance(self.max_samples, dict) else self.max_samples
            if n is not None and n < len(ds):
                keep = np.random.default_rng(self.seed).choice(len(ds), size=n, replace=False)
                dd[split] = ds.select(np.sort(keep)).flatten_indices()
        return dd
