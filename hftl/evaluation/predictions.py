"""Running a classifier over a loader, gathering across processes without duplicates."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def collect_predictions(
    accelerator: Accelerator, model: nn.Module, loader, *, desc: str = "eval"
) -> dict[str, np.ndarray | float]:
    """Returns ``predictions``, ``probabilities``, ``references`` (when labelled) and mean ``loss``.

    ``gather_for_metrics`` drops the samples that distributed sampling duplicates to even out the
    last batch, so every example counts exactly once.
    """
    was_training = model.training
    model.eval()
    preds, probs, refs = [], [], []
    loss_sum, n = torch.zeros((), device=accelerator.device), 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        labels = batch.pop("labels", None)
        logits = model(**batch).logits.float()
        if labels is not None:
            # after the gather: the loss then counts the samples DDP duplicates to even out shards once
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
            n += labels.numel()
            refs.append(labels.cpu())
        else:
            logits = accelerator.gather_for_metrics(logits)
        probs.append(logits.softmax(-1).cpu())
        preds.append(logits.argmax(-1).cpu())
    model.train(was_training)
    out: dict[str, np.ndarray | float] = {
        "predictions": torch.cat(preds).numpy(),
        "probabilities": torch.cat(probs).numpy(),
    }
    if refs:
        out["references"] = torch.cat(refs).numpy()
        out["loss"] = loss_sum.item() / max(n, 1)  # every process holds the gathered (global) sums
    return out
