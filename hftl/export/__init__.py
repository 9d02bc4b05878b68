"""Deployable outputs: ``hftl export --onnx`` and running exports without hftl or torch.

* :func:`export_onnx` (:mod:`hftl.export.exporter`): a trained model → one ONNX graph + preprocessing
  files, checked against the PyTorch model in onnxruntime before anything is written.
* :class:`OnnxPredictor` (:mod:`hftl.export.runtime`): runs an export with onnxruntime; ``hftl predict``
  uses it for export directories. It imports no torch, so this package's ``__init__`` does not either
  (``export_onnx`` is imported on first use).
"""

from __future__ import annotations

from typing import Any

from hftl.export.runtime import SPEC_FILE, OnnxPredictor, is_onnx_export

__all__ = ["SPEC_FILE", "OnnxPredictor", "export_onnx", "is_onnx_export"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":  # needs torch: imported only when asked for
        from hftl.export.exporter import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
