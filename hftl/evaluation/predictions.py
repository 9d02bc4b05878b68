"""A classifier's predictions over a loader, gathered across processes without duplicates."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from hftl.adapters.merged import evaluation_view
from hftl.training.run import gather_outputs


def _logits(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    labels = batch.pop("labels", None)
    out = {"logits": model(**batch).logits.float()}
    return out if labels is None else {**out, "labels": labels}


def collect_predictions(
    accelerator: Accelerator, model: nn.Module, loader: Any, *, desc: str = "eval"
) -> dict[str, np.ndarray | float]:
    """Returns ``predictions``, ``probabilities``, ``references`` (when labelled) and mean ``loss``.

    The model runs as :func:`hftl.training.run.gather_outputs` runs it (eval mode, the run's autocast,
    every example exactly once across processes), a LoRA/IA3 model through its merged copy
    (:func:`hftl.adapters.merged.evaluation_view`; the model itself is never merged).
    """
    out = gather_outputs(accelerator, evaluation_view(model, accelerator), loader, _logits, desc=desc)
    logits = out["logits"]
    result: dict[str, np.ndarray | float] = {
        "predictions": logits.argmax(-1).numpy(),
        "probabilities": logits.softmax(-1).numpy(),
    }
    if "labels" in out:
        result["references"] = out["labels"].numpy()
        result["loss"] = nn.functional.cross_entropy(logits, out["labels"]).item()
    return result
