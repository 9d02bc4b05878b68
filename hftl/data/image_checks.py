"""Every image file checked once before training: a broken one stops the run with its name.

``PIL.Image.open`` reads the header (format, size) and ``verify()`` walks the file's chunks without
decoding pixels (PNG: every CRC, so a truncated file fails), which is fast enough to run over a whole
data set up front. Images a data set holds as arrays (built-ins such as MNIST) have nothing to check.
"""

from __future__ import annotations

import io

import datasets

from hftl.errors import DataError

SHOWN = 5  # bad files listed in the error


def _problem(item: dict) -> str | None:
    from PIL import Image, UnidentifiedImageError

    source = item.get("path") if item.get("bytes") is None else io.BytesIO(item["bytes"])
    try:
        with Image.open(source) as image:
            width, height = image.size
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # PIL raises all of these
        return f"cannot be read as an image ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if width == 0 or height == 0:
        return f"has size {width}×{height}"
    return None


def scan_images(dd: datasets.DatasetDict, *, source: str) -> datasets.DatasetDict:
    """Raises one :class:`DataError` naming the unreadable or empty images of ``dd``; else returns ``dd``.

    Args:
        dd: splits with an ``image`` column (``datasets.Image`` feature).
        source: the data path, named in the error.

    Raises:
        DataError: listing the first bad files, why each is bad, and the fix.
    """
    bad: list[str] = []
    for split, ds in dd.items():
        if not isinstance(ds.features.get("image"), datasets.Image):
            continue
        raw = ds.cast_column("image", datasets.Image(decode=False))
        for row, item in enumerate(raw["image"]):
            if item is None or (item.get("path") is None and item.get("bytes") is None):
                bad.append(f"row {row} of split {split!r}: no image")
                continue
            problem = _problem(item)
            if problem:
                bad.append(f"{item.get('path') or f'row {row}'} (split {split!r}, row {row}) {problem}")
    if bad:
        shown = "\n  - ".join(bad[:SHOWN]) + (
            f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        )
        raise DataError(
            f"{len(bad)} image(s) of {source} cannot be used (checked before training):\n  - {shown}\n"
            "Fix: re-export or remove these files (PIL must be able to open them)."
        )
    return dd
