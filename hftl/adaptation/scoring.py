"""Scoring an adaptation run: model outputs gathered over loaders, every label-free criterion, the report."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from hftl.adaptation.collapse import prediction_signals
from hftl.adaptation.selection import CRITERIA, score
from hftl.adapters.merged import evaluation_view
from hftl.training.run import gather_outputs

# The loaders an evaluation reads: source validation and training subset, target training subset (all for
# the label-free criteria), and the target test split (for the report only, never for selection).
EVAL_SPLITS = ("source_val", "source_train", "target_train", "target_test")


def _outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    labels = batch.pop("labels", None)
    out = model(**batch)
    logits = out.logits.float()
    outputs = {"features": out.features.float(), "probs": logits.softmax(-1)}
    if labels is not None:
        outputs["labels"] = labels
        outputs["losses"] = nn.functional.cross_entropy(logits, labels, reduction="none")
    return outputs


def collect_outputs(accelerator: Accelerator, model: nn.Module, loader: Any) -> dict[str, np.ndarray]:
    """Pooled ``features``, ``probs`` and, for labelled batches, ``labels`` and per-example ``losses``.

    Gathered by :func:`hftl.training.run.gather_outputs` (eval mode, the run's autocast, every example once),
    through a merged copy of a LoRA/IA3 model (:func:`hftl.adapters.merged.evaluation_view`).
    """
    outputs = gather_outputs(accelerator, evaluation_view(model, accelerator), loader, _outputs, desc="score")
    return {name: values.numpy() for name, values in outputs.items()}


def collect_splits(
    accelerator: Accelerator, model: nn.Module, evals: dict[str, Any], known: dict[str, Any] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`collect_outputs` of each split of ``evals`` (names of :data:`EVAL_SPLITS`), except those
    already in ``known`` (outputs of the same weights, e.g. the periodic evaluation of the selected step)."""
    known = known or {}
    return {
        name: known[name] if name in known else collect_outputs(accelerator, model, evals[name])
        for name in EVAL_SPLITS
        if name in evals
    }


def score_outputs(o: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Every selection criterion (none reads target labels) from :func:`collect_splits`' outputs, the
    collapse guard's prediction signals, and the target test accuracy when ``o`` has the test split.

    Without ``target_test`` (the periodic evaluations unless ``report.target_curve``) there is no
    ``target_test_acc``, without ``source_train`` (periodic evaluations unless ``dev`` or
    ``selection.score_all``) no ``dev``.
    """
    inputs = {
        "probs_s_val": o["source_val"]["probs"], "labels_s_val": o["source_val"]["labels"],
        "probs_t": o["target_train"]["probs"], "features_t": o["target_train"]["features"],
        "features_s_val": o["source_val"]["features"], "losses_s_val": o["source_val"]["losses"],
    }  # fmt: skip
    if "source_train" in o:
        inputs["features_s_train"] = o["source_train"]["features"]
    scores = {name: score(inputs, name) for name, c in CRITERIA.items() if set(c.inputs) <= set(inputs)}
    scores.update(prediction_signals(inputs["probs_t"], inputs["labels_s_val"]))  # the collapse guard's
    if "target_test" in o:
        test = o["target_test"]
        scores["target_test_acc"] = float((test["probs"].argmax(-1) == test["labels"]).mean())
    return scores


def score_checkpoint(accelerator: Accelerator, model: nn.Module, evals: dict[str, Any]) -> dict[str, float]:
    """:func:`score_outputs` of the model's outputs on every split of ``evals`` (a loader per name of
    :data:`EVAL_SPLITS`)."""
    return score_outputs(collect_splits(accelerator, model, evals))


def weights_digest(model: nn.Module) -> str:
    """A digest of the tensors training changes (trainable parameters, buffers), to tell whether outputs
    computed earlier still belong to the model's current weights."""
    digest = hashlib.blake2b(digest_size=16)
    tensors = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + list(model.named_buffers())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def format_report(metrics: dict[str, Any]) -> str:
    """The adaptation report: target test and source validation accuracy per trained method, the proxy
    A-distance of its features (source-only's is the reference; without it, before → after training), and
    warnings (collapse, the model kept by the fallback, negative transfer; transitive vs direct)."""
    rows, main = metrics["results"], metrics["method"]
    kept = metrics.get("kept", main)
    width = max(16, *(len(n) + 9 for n in rows))
    lines = [
        f"***** Adaptation report (checkpoint chosen by {metrics['selection_criterion']}, no target labels) *****",
        f"{'method':<{width}}{'target test acc':>17}{'source val acc':>16}{'proxy A-dist.':>20}",
    ]
    for name, r in rows.items():
        pad = r.get("proxy_a_distance")
        pad_s = "-" if not pad else f"{pad['after']:.2f}"
        if pad and "before" in pad:  # no source-only run beside it: before → after training
            pad_s = f"{pad['before']:.2f} → {pad_s}"
        shown = f"{name} (kept)" if name == kept and kept != main else name
        lines.append(
            f"{shown:<{width}}{100 * r['target_test_acc']:>16.2f}%{100 * r['source_val_acc']:>15.2f}%{pad_s:>20}"
        )
    for name, r in rows.items():
        c = r.get("collapse") or {}
        if c.get("collapsed"):
            where = f"stopped at step {c['stopped_at']}" if c["stopped_early"] else "ran to the end"
            keep = (
                f"kept step {c['kept_step']}"
                if c["pre_collapse_checkpoint"]
                else "no pre-collapse checkpoint"
            )
            lines.append(
                f"WARNING: {name} collapsed at step {c['first_step']} ({'; '.join(c['reasons'])}); {where}, {keep}. "
                f"{c['fix']}"
            )
    fb = metrics.get("fallback")
    if fb and kept != main:
        lines.append(f"Kept source_only instead of {main} (selection.fallback): {'; '.join(fb['reasons'])}.")
    elif fb and fb.get("overruled"):
        lines.append(f"Kept {main}: not predicted to hurt ({'; '.join(fb['overruled'])}).")
    elif fb:
        lines.append(f"Kept {main}: not predicted to hurt (`{fb['criterion']}` {fb['scores'][main]:.4f} vs source_only {fb['scores']['source_only']:.4f}).")  # fmt: skip
    so, direct = rows.get("source_only"), rows.get(main.removesuffix("_transitive"))
    if so and kept != "source_only" and rows[main]["target_test_acc"] < so["target_test_acc"]:
        lines.append(f"WARNING: negative transfer: {main} is below source-only on the target test set.")
    if main.endswith("_transitive"):
        lines.append(
            f"{main.removesuffix('_transitive')}_stage1: adapted source → intermediate (scored on the target)."
        )
        if direct is not None:
            gain = 100 * (rows[main]["target_test_acc"] - direct["target_test_acc"])
            lines.append(f"Transitive vs direct: {gain:+.2f} points on the target test set.")
    return "\n".join(lines)
