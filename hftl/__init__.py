"""hftl: transfer pretrained Hugging Face encoders to new domains."""

from __future__ import annotations

__version__ = "0.1.0"

from hftl.errors import ConfigError, DataError, HftlError, ModelLoadError

__all__ = ["ConfigError", "DataError", "HftlError", "ModelLoadError", "__version__", "load"]


def load(path: str, *, task: str | None = None, **kwargs):
    """Load a trained hftl model directory as a ready :class:`hftl.predict.Predictor`.

    ``task`` picks one task of a multi-task model (``hftl run multitask``); ``None`` = its default task.
    """
    from hftl.predict import Predictor

    if task is not None:
        from hftl.models.multitask import load_task

        return load_task(path, task, **kwargs)
    return Predictor.from_pretrained(path, **kwargs)
