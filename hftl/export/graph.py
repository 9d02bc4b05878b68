"""The module hftl exports: (audio front end) → encoder → pooling → head(s), on positional inputs.

This wrapper is the only hand-written part of the export; the encoder, pooling and heads are the
trained modules themselves (in a copy with LoRA/IA3 merged), traced by ``torch.onnx``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hftl.encoders.base import Encoder
from hftl.errors import HftlError


class OnnxExportError(HftlError):
    """The model cannot be exported to ONNX (or not with matching outputs); nothing was written."""


class ExportGraph(nn.Module):
    """Logits of every head from one encoder pass, for ``torch.onnx.export``.

    Args:
        encoder: the trained encoder (already a merged copy: see :func:`merged_copy`).
        heads: task name -> head, in output order (one entry for a single-task classifier).
        input_names: names of the positional inputs, in order (the ONNX graph's input names).
        frontend: a module turning ``waveform``/``attention_mask`` into the encoder's inputs
            (:mod:`hftl.export.frontends`), or ``None`` when the inputs are the encoder's own.

    Returns (forward):
        One ``(B, num_labels)`` tensor per head, a tuple when there are several.
    """

    def __init__(
        self,
        encoder: Encoder,
        heads: dict[str, nn.Module],
        input_names: list[str],
        frontend: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder, self.heads, self.frontend = encoder, nn.ModuleDict(heads), frontend
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        batch = dict(zip(self.input_names, inputs, strict=True))
        if self.frontend is not None:
            batch = self.frontend(**batch)
        features = self.encoder(**batch).pooled
        logits = tuple(head(features) for head in self.heads.values())
        return logits[0] if len(logits) == 1 else logits


def merged_copy(encoder: Encoder, heads: dict[str, nn.Module]) -> tuple[Encoder, dict[str, nn.Module]]:
    """``encoder`` with LoRA/IA3 merged into a copy's base weights (peft wrapper removed), and the heads,
    both in eval mode (:func:`hftl.adapters.merged.merged_copy`).

    The loaded model is left untouched, so it still gives the reference logits of the parity check.
    """
    from hftl.adapters.merged import merged_copy as merged

    heads = copy.deepcopy(heads)
    return merged(encoder), {name: head.eval() for name, head in heads.items()}


def unsupported(encoder: Encoder) -> str | None:
    """Why ``encoder`` cannot be exported, for the parts known to defeat both exporters; else ``None``."""
    from hftl.embeddings.heads import ContextPooler

    if any(isinstance(m, ContextPooler) and m.token_head == "bilstm" for m in encoder.modules()):
        return (
            "`encoder.token_head: bilstm` (a BiLSTM over packed sequences) has no ONNX export: torch.export "
            "unrolls the LSTM over time (tens of minutes, then fixed to one length) and the TorchScript exporter "
            "stops at the scalar mix's layer norm. Train with token_head transformer, attention or mean for an "
            "exportable model, or serve this one with hftl.load"
        )
    return None
