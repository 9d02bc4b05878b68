"""hftl: transfer pretrained Hugging Face encoders to new domains."""

from __future__ import annotations

__version__ = "0.1.0"

from hftl.errors import ConfigError, DataError, HftlError, ModelLoadError

__all__ = ["ConfigError", "DataError", "HftlError", "ModelLoadError", "__version__", "load"]


def load(path: str, **kwargs):
    """Load a trained hftl model directory as a ready :class:`hftl.predict.Predictor`."""
    from hftl.predict import Predictor

    return Predictor.from_pretrained(path, **kwargs)
