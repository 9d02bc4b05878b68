"""Run plumbing every recipe shares: trackers, pre-tokenizing, evaluation loaders, running a model over one.

Plain functions, not a base class: a recipe stays one file read top to bottom and calls these where its
``setup()`` / ``evaluate()`` needs them, as the accelerate examples do inline.

- :func:`init_trackers` starts the trackers of ``train.report_to`` (TensorBoard, W&B, ...) with the run's
  settings; without it accelerate builds the trackers but never starts them, so nothing is logged.
- :func:`pretokenized` tokenizes text once (cached across runs) when the encoder asks for it.
- :func:`eval_loader` is the prepared, unshuffled loader of an evaluation split at
  :attr:`~hftl.training.TrainConfig.evaluation_batch_size` (longest rows first when given their lengths).
- :func:`gather_outputs` runs a model over a loader in eval mode, under the run's autocast and
  ``torch.inference_mode``, and gathers what it returns from every process, each example exactly once, in
  the dataset's row order.
- :func:`classification_step` trains a classifier with a recipe's ``loss:`` component.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hftl.data.streaming import is_stream
from hftl.data.tokenized import pretokenize, pretokenize_splits
from hftl.training.builders import build_loader
from hftl.training.config import TrainConfig

__all__ = [
    "classification_step", "eval_loader", "gather_outputs", "init_trackers", "pretokenized", "tracker_config",
]  # fmt: skip

# (model, batch) -> per-example tensors of the batch, e.g. {"logits": (B, C), "labels": (B,)}
ForwardFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]


def tracker_config(config: TrainConfig, **extra: Any) -> dict[str, int | float | str | bool]:
    """The hyperparameters trackers record: the scalar fields of ``train:`` plus ``extra``.

    Example:
        >>> tracker_config(TrainConfig(batch_size=8), method="dann")["batch_size"]
        8
    """
    scalars = {k: v for k, v in vars(config).items() if isinstance(v, int | float | str | bool)}
    return {**scalars, **{k: v for k, v in extra.items() if isinstance(v, int | float | str | bool)}}


def init_trackers(
    accelerator: Accelerator, config: TrainConfig, *, project: str = "hftl", **extra: Any
) -> None:
    """Starts the trackers ``train.report_to`` names, recording the run's settings (:func:`tracker_config`).

    Call it once per run, after :func:`~hftl.training.builders.build_accelerator` and before the Engine
    logs; ``accelerator.end_training()`` closes them. Without trackers it does nothing.

    Args:
        accelerator: the run's Accelerator (its ``log_with`` comes from ``train.report_to``).
        config: the ``train:`` section.
        project: the tracker's project (TensorBoard: the folder under ``output_dir/logs``).
        extra: more scalar settings to record, e.g. ``method="dann"``.
    """
    accelerator.init_trackers(project, config=tracker_config(config, **extra))


def pretokenized(accelerator: Accelerator, encoder: Any, data: Any) -> Any:
    """``data`` tokenized once by ``encoder``'s tokenizer when the encoder asks for it, else unchanged.

    Text encoders with ``pretokenize=True`` (the default of :class:`~hftl.encoders.TextEncoder`) get token
    ids cached next to the data (:mod:`hftl.data.tokenized`), so no epoch and no later run tokenizes again.
    The main process writes the cache first; the other processes then read it.

    Args:
        accelerator: the run's Accelerator.
        encoder: the run's encoder (``pretokenize``, ``processor`` and ``max_length`` are read).
        data: one split, or a mapping of split name → split (``ClassificationData.load()``).
    """
    if not getattr(encoder, "pretokenize", False):
        return data
    tokenize = pretokenize_splits if isinstance(data, Mapping) else pretokenize
    with accelerator.main_process_first():
        return tokenize(data, encoder.processor, max_length=encoder.max_length)


ORDER_ATTR = "hftl_row_order"  # on a length-sorted evaluation loader: loader position -> dataset row


def eval_loader(
    accelerator: Accelerator,
    dataset: Any,
    *,
    collate_fn: Callable,
    config: TrainConfig,
    lengths: Sequence[int] | None = None,
) -> Any:
    """The prepared loader of an evaluation split, ``config.evaluation_batch_size`` examples a batch.

    With ``lengths`` (one per row) the rows run longest first, so each batch pads to nearly its own length
    (shuffled text batches carried 1.6-3.4x their real tokens as padding); :func:`gather_outputs` puts the
    outputs back in row order, so whatever reads them by position (selection criteria, diagnostics) sees the
    dataset's order. Without ``lengths``, or for streamed data, the rows run in order.
    """
    size = config.evaluation_batch_size
    if lengths is None or is_stream(dataset):
        return accelerator.prepare(
            build_loader(dataset, collate_fn=collate_fn, batch_size=size, shuffle=False)
        )
    if len(lengths) != len(dataset):
        raise ValueError(f"eval_loader: {len(lengths)} lengths for {len(dataset)} rows")
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])  # stable: ties keep row order
    # a generator of its own: starting an iterator draws a seed from it, not from the global RNG (training's)
    made = DataLoader(
        dataset,
        batch_size=size,
        sampler=order,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )
    loader = accelerator.prepare(made)
    setattr(loader, ORDER_ATTR, torch.tensor(order))
    return loader


def gather_outputs(
    accelerator: Accelerator, model: nn.Module, loader: Any, forward: ForwardFn, *, desc: str = "eval"
) -> dict[str, torch.Tensor]:
    """Runs ``forward(model, batch)`` over ``loader`` and returns each output for every example, on the CPU.

    The one evaluation loop of hftl: the model runs in eval mode (its previous mode is restored, also after
    an error), without gradients and under the run's mixed precision (``accelerator.autocast()``, which a
    model view that ``accelerator.prepare`` did not wrap would otherwise miss). Every output is gathered from
    all processes with ``gather_for_metrics``, which drops the examples distributed sampling repeats to even
    out the last batch, so each example counts exactly once and the rows follow the loader's order.

    Args:
        accelerator: the run's Accelerator.
        model: called by ``forward``; any ``nn.Module`` (prepared or not).
        loader: a prepared loader (its batches are on the accelerator's device).
        forward: ``(model, batch) -> {name: (B, ...) tensor}``; the same names for every batch.
        desc: label of the progress bar (shown on the local main process only).

    Returns:
        ``{name: (N, ...) tensor}`` for the ``N`` examples of the loader's dataset, in its row order (a
        length-sorted :func:`eval_loader`'s rows are put back), on the CPU: the outputs stay on the device
        until the last batch and cross to the host in one copy per name.

    Example:
        >>> acc = Accelerator(cpu=True)
        >>> model = nn.Linear(3, 2)
        >>> loader = acc.prepare(torch.utils.data.DataLoader(torch.ones(5, 3), batch_size=2))
        >>> out = gather_outputs(acc, model, loader, lambda m, x: {"logits": m(x)})
        >>> out["logits"].shape, model.training
        (torch.Size([5, 2]), True)
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
                with accelerator.autocast():
                    out = dict(forward(model, batch))
                for name, value in accelerator.gather_for_metrics(out).items():
                    parts[name].append(value)
    finally:
        model.train(was_training)
    # outside inference mode: the results are ordinary tensors (a caller may train on them)
    outputs = {name: torch.cat(values).cpu() for name, values in parts.items()}
    order = getattr(loader, ORDER_ATTR, None)
    if order is not None:
        inverse = torch.argsort(order)
        outputs = {name: values[inverse] for name, values in outputs.items()}
    return outputs


def classification_step(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """The Engine's loss function for a classifier trained with ``criterion(logits, labels)``.

    ``criterion`` is a recipe's ``loss:`` component, e.g. ``torch.nn.CrossEntropyLoss`` with
    ``label_smoothing: 0.1``; without one a recipe keeps :func:`hftl.training.cross_entropy_step`.

    Example:
        >>> step = classification_step(nn.CrossEntropyLoss(label_smoothing=0.1))
        >>> model = lambda **batch: type("Out", (), {"logits": batch["x"]})()
        >>> loss, logs = step(model, {"x": torch.zeros(2, 3), "labels": torch.tensor([0, 2])})
        >>> round(loss.item(), 4), logs
        (1.0986, {})
    """

    def step(model: nn.Module, batch: dict[str, Any], progress: Any = None) -> tuple[torch.Tensor, dict]:
        labels = batch.pop("labels")
        return criterion(model(**batch).logits, labels), {}

    return step
