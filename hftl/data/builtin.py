"""Small data sets that ship inside installed libraries, addressed as ``path: hftl:<name>``.

They need no download and no data folder, which makes them the data of the smoke tests and the
quick-start configs.

Example:
    >>> splits = load_builtin("sklearn_digits", seed=0)
    >>> splits["train"][0]["image"].size
    (32, 32)
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np

from hftl.errors import ConfigError

PREFIX = "hftl:"


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


BUILTINS: dict[str, Callable[..., datasets.DatasetDict]] = {"sklearn_digits": sklearn_digits}


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
