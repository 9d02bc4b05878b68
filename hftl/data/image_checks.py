"""Every image file checked once before training: a broken or hostile one stops the run with its name.

``PIL.Image.open`` reads only the header (format, size); a size over ``max_pixels`` (width × height) is
reported without decoding anything, so a decompression bomb — a few-KB PNG declaring 50,000 × 50,000
pixels — never allocates its gigabytes. ``verify()`` then walks the file's chunks (PNG: every CRC, so a
truncated PNG fails), and files of other formats, whose ``verify()`` checks little, are decoded at reduced
scale (JPEG ``draft``), which fails on truncated or corrupt data. Images a data set holds as arrays
(built-ins such as MNIST) have nothing to check.

The pixel limit lives here, in :data:`DEFAULT_MAX_IMAGE_PIXELS`: PIL's own warning threshold (about 89.5
megapixels, 9,459 × 9,459), made an error. ``data.max_image_pixels`` overrides it; a value above PIL's
process-wide ``Image.MAX_IMAGE_PIXELS`` raises that too, so the checked files can then be decoded in
training.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets

from hftl.errors import DataError

SHOWN = 5  # bad files listed in the error
# PIL.Image.MAX_IMAGE_PIXELS as shipped (1024 * 1024 * 1024 // 4 // 3, about 9,459 × 9,459); hftl's default
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_VERIFIED_FORMATS = frozenset({"PNG"})  # formats whose verify() checks all of the data (CRCs)
_WORKERS = 8  # PIL decodes without the GIL; file reads wait on the disk


def _allow_in_pil(max_pixels: int) -> None:
    """Raises PIL's process-wide decompression-bomb limit to ``max_pixels`` if it is lower."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _open_checked(source: Any, max_pixels: int):
    """``Image.open`` with the pixel limit enforced before any decoding (:class:`_Rejected` says why)."""
    from PIL import Image

    image = Image.open(source)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _Rejected(
            f"declares {width:,}×{height:,} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(`data.max_image_pixels`; a decompression bomb, or a scan to downscale first)"
        )
    if width == 0 or height == 0:
        image.close()
        raise _Rejected(f"has size {width}×{height}")
    return image


@contextlib.contextmanager
def _quiet_pil():
    """Silences PIL's DecompressionBombWarning while checking: a file over the limit is reported as an error.

    Entered once around a whole scan (the filter is process-wide; threads share it).
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


class _Rejected(Exception):
    """An image rejected for the size its header declares (the message says what it declares)."""


def problem(source: Any, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """What is wrong with one image (a path or a file object), or None if training can decode it."""
    from PIL import Image

    try:
        with _open_checked(source, max_pixels) as image:
            image_format = image.format
            image.verify()
        if image_format not in _VERIFIED_FORMATS:
            if hasattr(source, "seek"):
                source.seek(0)
            with Image.open(source) as image:
                image.draft(image.mode, (64, 64))  # JPEG decodes at 1/8 scale; others in full
                image.load()
    except _Rejected as err:
        return str(err)
    except Image.DecompressionBombError as err:  # over twice PIL's limit: raised inside Image.open
        limit = f"the limit is {max_pixels:,} pixels (`data.max_image_pixels`)"
        return f"is a likely decompression bomb ({err}); {limit}"
    # PIL's plugins raise OSError, SyntaxError, ValueError, struct.error, EOFError, ... on hostile files
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        return f"cannot be read as an image ({type(err).__name__}: {first})"
    return None


def _item_problem(item: dict | None, max_pixels: int) -> str | None:
    """:func:`problem` of a ``datasets.Image(decode=False)`` item (``{"path", "bytes"}``; bytes win)."""
    if item is None or (item.get("path") is None and item.get("bytes") is None):
        return "has no image"
    data = item.get("bytes")
    return problem(item["path"] if data is None else io.BytesIO(data), max_pixels=max_pixels)


def open_image(image: str | Path | dict, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """Opens one image with the checks of the data scan (inference, streamed training); a loaded copy.

    Args:
        image: a file path, or a ``datasets.Image(decode=False)`` item ``{"path", "bytes"}`` (bytes win).
        max_pixels: the largest width × height the file may declare.

    Raises:
        DataError: naming the file, if it is missing, over ``max_pixels`` or unreadable.
    """
    from PIL import Image

    _allow_in_pil(max_pixels)
    data = image.get("bytes") if isinstance(image, dict) else None
    path = image.get("path") if isinstance(image, dict) else image
    name = str(path) if path else "<image bytes>"
    if data is None and (not path or not Path(path).is_file()):
        raise DataError(f"Image file {name!r} does not exist.")
    source = io.BytesIO(data) if data is not None else str(path)
    with _quiet_pil():
        bad = problem(source, max_pixels=max_pixels)
    if bad:
        raise DataError(f"Image file {name!r} {bad}. Fix: re-export, downscale or remove it.")
    if data is not None:
        source.seek(0)
    with Image.open(source) as opened:  # read now and close the file (no handle per image)
        return opened.copy()


def scan_images(
    dd: datasets.DatasetDict, *, source: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> datasets.DatasetDict:
    """Raises one :class:`DataError` naming the unreadable, empty or oversized images of ``dd``; else returns ``dd``.

    Args:
        dd: splits with an ``image`` column (``datasets.Image`` feature).
        source: the data path, named in the error.
        max_pixels: the largest width × height a file may declare.

    Raises:
        DataError: listing the first bad files, why each is bad, and the fix.
    """
    _allow_in_pil(max_pixels)
    bad: list[str] = []
    with _quiet_pil(), ThreadPoolExecutor(_WORKERS) as pool:
        for split, ds in dd.items():
            if not isinstance(ds.features.get("image"), datasets.Image):
                continue
            items = ds.cast_column("image", datasets.Image(decode=False))["image"]
            found = pool.map(lambda item: _item_problem(item, max_pixels), items)
            for row, (item, what) in enumerate(zip(items, found, strict=True)):
                if what:
                    bad.append(
                        f"{(item or {}).get('path') or f'row {row}'} (split {split!r}, row {row}) {what}"
                    )
    if bad:
        shown = "\n  - ".join(bad[:SHOWN]) + (
            f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        )
        raise DataError(
            f"{len(bad)} image(s) of {source} cannot be used (checked before training):\n  - {shown}\n"
            "Fix: re-export, downscale or remove these files (PIL must be able to open them), or raise "
            "`data.max_image_pixels` for trusted files that are truly that large."
        )
    return dd
