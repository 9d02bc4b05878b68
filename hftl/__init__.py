"""hftl: transfer pretrained Hugging Face encoders to new domains."""

from __future__ import annotations

from hftl.errors import ConfigError, DataError, HftlError, ModelLoadError
from hftl.version import __version__

__all__ = ["ConfigError", "DataError", "HftlError", "ModelLoadError", "__version__", "load"]


def load(
    path,
    *,
    task: str | None = None,
    device: str | None = None,
    from_hub: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """Load a trained hftl model as a ready :class:`hftl.predict.Predictor`.

    The model directory is data: hftl rebuilds only its own registered classes from it and runs no code
    it ships, unless ``trust_remote_code=True``.

    Args:
        path: a run's ``output_dir`` (or its ``model/`` folder), or a Hub repo as ``"hf://user/name"`` /
            ``"hf://user/name@revision"``. A local path that does not exist is an error, never a Hub lookup.
        task: one task of a multi-task model (``hftl run multitask``); ``None`` = its default task.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        from_hub: ``path`` is a Hub repo id ``user/name`` (same as the ``hf://`` prefix).
        revision: Hub branch, tag or commit. The commit loaded is in ``predictor.source``.
        trust_remote_code: let transformers import the ``.py`` files a model with ``auto_map`` ships (or its
            base model's); refused otherwise. Only for code you have read.

    Example:
        >>> clf = hftl.load("hf://you/minilm-sst2@main")  # doctest: +SKIP
        >>> clf.source  # doctest: +SKIP
        'hf://you/minilm-sst2@3f1c...'
    """
    from hftl.predict import Predictor  # here, not at the top: `import hftl` stays light (no torch)

    return Predictor.from_pretrained(
        path,
        task=task,
        device=device,
        from_hub=from_hub,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
