"""Reader for the Multi-Domain Sentiment Dataset of Blitzer et al. (2007).

Each domain folder (``books``, ``dvd``, ``electronics``, ``kitchen``) holds ``positive.review`` and
``negative.review`` (and in the full release ``unlabeled.review``) in a pseudo-XML format that is not
valid XML (unescaped ``&``, stray bytes that are not UTF-8), so it is parsed with regular expressions
over ``<review>...</review>`` blocks, as the reference implementations do.

Example:
    >>> ds = read_blitzer_domain("../shared/data/amazon_mds_raw_bertaad/books")
    >>> ds.features["label"].names
    ['negative', 'positive']
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import datasets

from hftl.errors import ConfigError, DataError

LABEL_NAMES = ["negative", "positive"]
_REVIEW = re.compile(rb"<review>(.*?)</review>", re.DOTALL)
_TITLE = re.compile(rb"<title>(.*?)</title>", re.DOTALL)
_TEXT = re.compile(rb"<review_text>(.*?)</review_text>", re.DOTALL)
_SPACE = re.compile(r"\s+")


def _clean(raw: bytes) -> str:
    """Decodes bytes (bad bytes replaced), unescapes HTML entities and normalizes whitespace."""
    return _SPACE.sub(" ", html.unescape(raw.decode("utf-8", errors="replace"))).strip()


def parse_reviews(path: str | Path) -> list[str]:
    """Returns one text per ``<review>`` block of a Blitzer ``.review`` file.

    The text is ``title + ". " + review_text`` (just the review text when the title is empty),
    whitespace-normalized, with HTML entities such as ``&quot;`` unescaped.

    Args:
        path: a ``positive.review``, ``negative.review`` or ``unlabeled.review`` file.

    Returns:
        The review texts in file order; blocks without text are skipped.

    Raises:
        DataError: if the file does not exist or holds no ``<review>`` block.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"Blitzer review file not found: {path}. Point `data.data_files` at a domain folder "
            "holding positive.review and negative.review."
        )
    texts = []
    for block in _REVIEW.findall(path.read_bytes()):
        title = _TITLE.search(block)
        body = _TEXT.search(block)
        title_text = _clean(title.group(1)) if title else ""
        body_text = _clean(body.group(1)) if body else ""
        text = f"{title_text}. {body_text}" if title_text and body_text else title_text or body_text
        if text:
            texts.append(text)
    if not texts:
        raise DataError(
            f"No <review>...</review> block with a title or review_text found in {path}; "
            "expected Blitzer's pseudo-XML format (sorted_data_acl)."
        )
    return texts


def is_blitzer_domain(directory: str | Path) -> bool:
    """Whether ``directory`` holds Blitzer's ``positive.review`` and ``negative.review``."""
    directory = Path(directory)
    return (directory / "positive.review").is_file() and (directory / "negative.review").is_file()


def read_blitzer_domain(directory: str | Path, *, unlabeled: bool = False) -> datasets.Dataset:
    """Reads one domain of the Multi-Domain Sentiment Dataset.

    Args:
        directory: the domain folder, e.g. ``.../amazon_mds_raw_bertaad/books``.
        unlabeled: read ``unlabeled.review`` instead of the labelled files; the result then has
            only a ``text`` column.

    Returns:
        A dataset with ``text`` (str) and ``label`` (ClassLabel ``["negative", "positive"]``);
        negative reviews first, then positive ones, each in file order.

    Raises:
        DataError: if the folder or one of its review files is missing or empty.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"Blitzer domain folder not found: {directory}. Set `data.data_files` to a folder "
            "holding positive.review and negative.review."
        )
    if unlabeled:
        return datasets.Dataset.from_dict({"text": parse_reviews(directory / "unlabeled.review")})
    texts, labels = [], []
    for label, name in enumerate(LABEL_NAMES):
        reviews = parse_reviews(directory / f"{name}.review")
        texts += reviews
        labels += [label] * len(reviews)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABEL_NAMES)}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def read_blitzer_splits(data_files: str | list[str] | dict[str, str] | None) -> datasets.DatasetDict:
    """Reads Blitzer domain folders as splits (``path: blitzer`` or a domain folder as ``path``).

    Args:
        data_files: one domain folder (the ``train`` split), a one-element list, or ``{split: folder}``.

    Returns:
        The labelled splits; a folder with ``unlabeled.review`` also gives an ``unlabeled`` split (use
        it as ``splits: {train: unlabeled}`` with ``unlabeled_splits: [train]``).

    Raises:
        ConfigError: if ``data_files`` is not a folder, a one-element list or ``{split: folder}``.
    """
    files = data_files[0] if isinstance(data_files, list) and len(data_files) == 1 else data_files
    files = {"train": files} if isinstance(files, str) else files
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ConfigError(
            f"`data.data_files` is {data_files!r} for `data.path: blitzer`; give one domain folder "
            "(e.g. .../books) or {split: folder}."
        )
    splits = {split: read_blitzer_domain(folder) for split, folder in files.items()}
    if len(files) == 1 and (Path(files[next(iter(files))]) / "unlabeled.review").is_file():
        splits["unlabeled"] = read_blitzer_domain(next(iter(files.values())), unlabeled=True)
    return datasets.DatasetDict(splits)
