"""What a classification data set is read from and how (:class:`DataSpec`), and what loading it gives
(:class:`ClassificationSplits`).

The spec is a frozen config: building it checks every field and reports all problems at once; loading
(:meth:`hftl.data.ClassificationData.load`) reads from it and returns its result, never writing back.

Example:
    >>> spec = DataSpec(path="reviews.csv", label_names=["negative", "positive"], max_samples={"train": 2000})
    >>> spec.max_samples_for("train"), spec.max_samples_for("test")
    (2000, None)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import datasets

from hftl.data.audio_checks import OnBadAudio, option_problems
from hftl.data.image_checks import DEFAULT_MAX_IMAGE_PIXELS
from hftl.data.label_space import LabelSpace
from hftl.data.labels import label_names_problems
from hftl.data.sources import PACKAGED_BUILDERS, flat_files
from hftl.errors import ConfigError

Modality = Literal["text", "audio", "image"]
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSpec:
    """A labelled classification data set: where it is read from and how.

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

    path: str
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    name: str | None = None
    revision: str | None = None
    input_column: str | None = None
    label_column: str = "label"
    modality: Modality | None = None
    label_names: list[str] | None = None
    splits: dict[str, str] | None = None
    validation_size: float | int = 0.1
    test_size: float | int | None = None
    unlabeled_splits: list[str] = dataclasses.field(default_factory=list)
    filters: dict[str, list] | None = None
    max_samples: int | dict[str, int] | None = None
    seed: int = 42
    delimiter: str | None = None
    trust_remote_code: bool = False
    missing_hint: str | None = None
    on_bad_audio: OnBadAudio = "stop"
    max_duration: float | None = None
    bad_audio_report: str | None = None
    streaming: bool = False
    shuffle_buffer: int = 10_000
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    check_train_classes: bool = True

    def __post_init__(self) -> None:
        # The only normalisation: a pathlib.Path or None where a str / dict / list is documented.
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "splits", dict(self.splits or {}))
        object.__setattr__(self, "unlabeled_splits", list(self.unlabeled_splits or []))
        problems = self._split_problems() + self._row_problems() + self._media_problems()
        if problems:
            raise ConfigError(problems)

    def _split_problems(self) -> list[str]:
        problems = []
        if not self.path:
            problems.append("`data.path` is empty; give a file, folder, builder name or Hub dataset id.")
        if self.modality not in (None, "text", "audio", "image"):
            problems.append(f"`data.modality` is {self.modality!r}; allowed: text, audio, image or null.")
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
        return problems

    def _row_problems(self) -> list[str]:
        problems = []
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
        return problems + label_names_problems(self.label_names)

    def _media_problems(self) -> list[str]:
        problems = []
        if not _positive_int(self.max_image_pixels):
            problems.append(
                f"`data.max_image_pixels` is {self.max_image_pixels!r}; allowed: a positive pixel count "
                f"(default {DEFAULT_MAX_IMAGE_PIXELS:,})."
            )
        problems += option_problems(self.on_bad_audio, self.max_duration)
        if not _positive_int(self.shuffle_buffer):
            problems.append(
                f"`data.shuffle_buffer` is {self.shuffle_buffer!r}; allowed: a positive row count."
            )
        return problems

    def label_space(self) -> LabelSpace | None:
        """The configured classes (``label_names``, canonical), or None when they are read from the data."""
        return None if self.label_names is None else LabelSpace(self.label_names)

    def max_samples_for(self, split: str) -> int | None:
        """The ``max_samples`` limit of one split (None: keep every row)."""
        if isinstance(self.max_samples, dict):
            return self.max_samples.get(split)
        return self.max_samples

    def source_of(self, split: str | None = None, mapping: Mapping[str, str] | None = None) -> str:
        """What the data (or one split) is read from, for messages: the file(s) when ``path`` is a builder.

        Args:
            split: an hftl split; None describes the whole data.
            mapping: hftl split -> the source split it was read from (:class:`hftl.data.steps.SplitSelection`).
        """
        files = self.data_files
        if self.path not in PACKAGED_BUILDERS or not files:
            return self.path
        if split is not None and isinstance(files, dict):
            files = files.get((mapping or {}).get(split, split)) or files
        return ", ".join(flat_files(files))

    def sources(self, splits: Iterable[str], mapping: Mapping[str, str]) -> dict[str, str]:
        """:meth:`source_of` the whole data (key ``""``) and of each split, for messages."""
        return {"": self.source_of()} | {split: self.source_of(split, mapping) for split in splits}


class ClassificationSplits(datasets.DatasetDict):
    """What :meth:`hftl.data.ClassificationData.load` returns: the splits, and the classes and modality
    they were read as.

    A :class:`datasets.DatasetDict` (``splits["train"]``, ``.map``, ...) among ``train``/``validation``/
    ``test``, each with the input column named by modality (``text``, ``audio`` or ``image``) and ``label``
    (class ids of :attr:`labels`), except unlabelled splits. A streamed ``train`` is a
    :class:`datasets.IterableDataset`. Transforms (``.map``, ``.filter``) return plain DatasetDicts, as in
    ``datasets``; read the classes from the loaded object.

    Args:
        splits: split name -> dataset.
        labels: the label space; None only when no split has labels and no ``label_names`` were given.
        modality: ``text``, ``audio`` or ``image``.
    """

    def __init__(
        self,
        splits: Mapping[str, datasets.Dataset | datasets.IterableDataset],
        *,
        labels: LabelSpace | None,
        modality: str,
    ):
        super().__init__(splits)
        self.labels, self.modality = labels, modality

    @property
    def label_names(self) -> list[str]:
        """Class names: label i is ``label_names[i]`` (empty when the data has no labels at all)."""
        return [] if self.labels is None else list(self.labels.names)


def _size_ok(size: Any, *, allow_none: bool) -> bool:
    if size is None:
        return allow_none
    if isinstance(size, bool) or not isinstance(size, int | float):
        return False
    return size == 0 or (isinstance(size, float) and 0 < size < 1) or (isinstance(size, int) and size > 0)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
