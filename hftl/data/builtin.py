"""Built-in data sets, addressed as ``path: hftl:<name>``.

- ``hftl:sklearn_digits`` ships inside scikit-learn: no download and no data folder, which makes it
  the data of the smoke tests and the quick-start configs.
- ``hftl:mnist`` and ``hftl:usps`` (the MNIST <-> USPS digits benchmark) are read from the shared
  data folder: env ``HFTL_DATA_DIR``, else ``../shared/data`` from the current directory or the repo.
- ``hftl:fsdd`` (Free Spoken Digit Dataset, 8 kHz speech) is read from the same folder; its ``speaker``
  column makes speaker-shift domains with ``data.filters``.

Example:
    >>> splits = load_builtin("sklearn_digits", seed=0)
    >>> splits["train"][0]["image"].size
    (32, 32)
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np

from hftl.config.data_dir import shared_data_dir
from hftl.errors import ConfigError, DataError

PREFIX = "hftl:"
DIGIT_NAMES = [str(d) for d in range(10)]


def _digit_features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})


def _data_file(folder: str, name: str) -> Path:
    path = shared_data_dir() / folder / name
    if not path.is_file():
        raise DataError(
            f"Built-in data set `hftl:{folder}`: file not found: {path}. Put the {folder}/ folder (see its "
            "PROVENANCE.md) in the shared data folder, or set `HFTL_DATA_DIR` to the folder that holds it."
        )
    return path


def _gray_images(pixels: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    """A Dataset of ``image`` (PIL mode "L") and ``label`` from ``(N, H, W)`` uint8 pixels.

    Each image is stored as binary PGM bytes (a 15-byte header + the raw pixels, lossless, decoded by
    PIL as mode "L"): building the 60,000 MNIST rows takes about a second, PNG encoding about ten.
    """
    _, height, width = pixels.shape
    header = f"P5\n{width} {height}\n255\n".encode()
    images = [
        {"bytes": header + p.tobytes(), "path": None} for p in np.ascontiguousarray(pixels, dtype=np.uint8)
    ]
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels.astype(int).tolist()}, features=_digit_features()
    )


def sklearn_digits(*, seed: int, test_size: float = 0.2) -> datasets.DatasetDict:
    """scikit-learn's bundled handwritten digits (UCI optdigits test set, 1797 images).

    The 8x8 images (values 0..16) are scaled to 8-bit grayscale (PIL mode ``"L"``) and upscaled to
    32x32 with nearest-neighbour resampling, so every pixel stays a 4x4 block of one value.

    Args:
        seed: seed of the stratified train/test split.
        test_size: fraction of the images in the ``test`` split.

    Returns:
        ``train`` and ``test`` splits with ``image`` (PIL) and ``label`` (ClassLabel ``"0".."9"``).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    images = [Image.fromarray(p, mode="L").resize((32, 32), Image.NEAREST) for p in pixels]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    full = datasets.Dataset.from_dict({"image": images, "label": bunch.target.tolist()}, features=features)
    return full.train_test_split(test_size=test_size, stratify_by_column="label", seed=seed)


def mnist(*, seed: int = 0) -> datasets.DatasetDict:
    """MNIST (LeCun et al.), 28x28 grayscale digits, from ``<data folder>/mnist/mnist_{train,test}.npz``.

    Args:
        seed: unused (the official train/test split); accepted like every built-in's.

    Returns:
        ``train`` (60,000) and ``test`` (10,000) splits with ``image`` (PIL "L", 28x28, white digit on
        black) and ``label`` (ClassLabel ``"0".."9"``).

    Raises:
        DataError: if the data folder or a file is missing.
    """
    splits = {}
    for split in ("train", "test"):
        with np.load(_data_file("mnist", f"mnist_{split}.npz")) as arrays:
            splits[split] = _gray_images(arrays["x"], arrays["y"])
    return datasets.DatasetDict(splits)


def usps(*, seed: int = 0) -> datasets.DatasetDict:
    """USPS ZIP-code digits (ESL ``zip.train.gz`` / ``zip.test.gz``), resized to MNIST's 28x28.

    Each text row is the label then 256 grey values in [-1, 1] (16x16, white digit on black). Values
    map linearly to 0..255 (-1 -> 0, 1 -> 255) and the 16x16 images are resized to 28x28 with PIL's
    bilinear filter, so both domains of the MNIST <-> USPS benchmark share one input size (as in ADDA
    and TLlib, which also resize USPS to 28x28).

    Args:
        seed: unused (the official train/test split); accepted like every built-in's.

    Returns:
        ``train`` (7,291) and ``test`` (2,007) splits with ``image`` (PIL "L", 28x28) and ``label``
        (ClassLabel ``"0".."9"``).

    Raises:
        DataError: if the data folder or a file is missing, or a row is malformed.
    """
    from PIL import Image

    splits = {}
    for split in ("train", "test"):
        path = _data_file("usps", f"zip.{split}.gz")
        try:
            with gzip.open(path, "rt") as f:
                rows = np.loadtxt(f, dtype=np.float32, ndmin=2)
        except (OSError, ValueError) as err:
            raise DataError(f"Cannot read {path}: {err}") from err
        if rows.shape[1] != 257:
            raise DataError(f"{path}: rows have {rows.shape[1]} values; expected 257 (label + 16x16 pixels).")
        small = np.rint((rows[:, 1:].reshape(-1, 16, 16) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        big = np.stack([np.asarray(Image.fromarray(p).resize((28, 28), Image.BILINEAR)) for p in small])
        splits[split] = _gray_images(big, rows[:, 0])
    return datasets.DatasetDict(splits)


def fsdd(*, seed: int = 0) -> datasets.DatasetDict:
    """Free Spoken Digit Dataset (Jackson et al.), ``<data folder>/fsdd/recordings/{digit}_{speaker}_{index}.wav``.

    3,000 mono 8 kHz clips: 6 speakers x 10 digits x 50 takes. The official split (the repo's README)
    is kept: takes 0-4 of every (digit, speaker) are ``test``, takes 5-49 are ``train``.

    Args:
        seed: unused (the official train/test split); accepted like every built-in's.

    Returns:
        ``train`` (2,700) and ``test`` (300) splits with ``audio`` (``Audio(decode=False)``, file paths),
        ``label`` (ClassLabel ``"0".."9"``), ``speaker`` (e.g. ``"theo"``) and ``take`` (0-49).

    Raises:
        DataError: if the folder is missing, empty, or holds a file not named ``{digit}_{speaker}_{index}.wav``.
    """
    folder = shared_data_dir() / "fsdd" / "recordings"
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        raise DataError(
            f"Built-in data set `hftl:fsdd`: no .wav files in {folder}. Put the fsdd/ folder (see its "
            "PROVENANCE.md) in the shared data folder, or set `HFTL_DATA_DIR` to the folder that holds it."
        )
    columns: dict[str, dict[str, list]] = {
        s: {"audio": [], "label": [], "speaker": [], "take": []} for s in ("train", "test")
    }
    for path in files:
        match = re.fullmatch(r"(\d)_([^_]+)_(\d+)", path.stem)
        if match is None:
            raise DataError(
                f"`hftl:fsdd`: file name {path.name} in {folder} is not {{digit}}_{{speaker}}_{{index}}.wav; "
                "remove or rename it."
            )
        digit, speaker, take = int(match[1]), match[2], int(match[3])
        row = columns["test" if take < 5 else "train"]  # the official split: takes 0-4 are test
        for key, value in (("audio", str(path)), ("label", digit), ("speaker", speaker), ("take", take)):
            row[key].append(value)
    features = datasets.Features(
        {
            "audio": datasets.Value("string"),
            "label": datasets.ClassLabel(names=DIGIT_NAMES),
            "speaker": datasets.Value("string"),
            "take": datasets.Value("int32"),
        }
    )
    # Paths cast to Audio(decode=False) in one step: encoding 3,000 path items one by one takes ~6 s.
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(cols, features=features).cast_column(
                "audio", datasets.Audio(decode=False)
            )
            for split, cols in columns.items()
        }
    )


BUILTINS: dict[str, Callable[..., datasets.DatasetDict]] = {
    "sklearn_digits": sklearn_digits,
    "mnist": mnist,
    "usps": usps,
    "fsdd": fsdd,
}


def load_builtin(name: str, *, seed: int) -> datasets.DatasetDict:
    """Loads a built-in data set by name (with or without the ``hftl:`` prefix).

    Raises:
        ConfigError: if the name is not one of :data:`BUILTINS`.
    """
    key = name.removeprefix(PREFIX)
    if key not in BUILTINS:
        allowed = ", ".join(PREFIX + k for k in BUILTINS)
        raise ConfigError(f"`data.path`: unknown built-in data set {name!r}; allowed: {allowed}.")
    return BUILTINS[key](seed=seed)
