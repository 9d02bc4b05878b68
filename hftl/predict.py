"""Inference with a saved model: ``hftl.load(dir)`` and ``hftl predict``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hftl.adapters.merged import evaluation_view
from hftl.errors import DataError, HftlError
from hftl.models.io import load_model
from hftl.models.multitask import load_task


class Predictor:
    """A loaded classifier with its processor; call it on texts, audio file paths or images.

    Example:
        >>> predictor = hftl.load("outputs/minilm_lora_sst2")  # doctest: +SKIP
        >>> predictor(["a gorgeous, witty film"])  # doctest: +SKIP
        [{'label': 'positive', 'score': 0.97, 'scores': {...}}]
    """

    def __init__(self, model: Any, meta: dict[str, Any], *, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta = model.to(self.device).eval(), meta
        self.modality: str = meta["modality"]
        self.collate = model.encoder.collator(train=False)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        task: str | None = None,
        device: str | None = None,
        from_hub: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> Predictor:
        """Loads a model directory (see :func:`hftl.models.io.load_model` for the arguments); ``task``
        picks one task of a multi-task model (:func:`hftl.models.multitask.load_task`)."""
        source = {"from_hub": from_hub, "revision": revision, "trust_remote_code": trust_remote_code}
        model, meta = load_model(path, **source) if task is None else load_task(path, task, **source)
        return cls(model, meta, device=device)

    @property
    def source(self) -> str:
        """Where the model was loaded from: its local path, or ``hf://user/name@<commit sha>``."""
        return self.meta.get("source", "")

    def _row(self, item: Any) -> dict[str, Any]:
        if self.modality == "text":
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"Text input must be a non-empty string; got {item!r}")
            return {"text": item}
        if self.modality == "audio":
            return {"audio": str(item) if isinstance(item, Path) else item}
        if isinstance(item, str | Path):
            from hftl.data.image_checks import open_image

            item = open_image(item)  # missing, unreadable or decompression-bomb files: DataError
        return {"image": item}

    @torch.no_grad()
    def __call__(self, inputs: Sequence[Any] | str | Path, *, batch_size: int = 32) -> list[dict[str, Any]]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise HftlError(f"`batch_size` is {batch_size!r}; allowed: a positive integer.")
        if isinstance(inputs, str | Path):
            inputs = [inputs]  # one text or file, not a sequence of characters
        results: list[dict[str, Any]] = []
        names = self.meta["label_names"]
        model = evaluation_view(self.model)  # LoRA/IA3 folded into a cached copy; self.model stays as loaded
        for start in range(0, len(inputs), batch_size):
            batch = self.collate([self._row(x) for x in inputs[start : start + batch_size]])
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
            probs = model(**batch).logits.float().softmax(-1).cpu()
            for p in probs:
                i = int(p.argmax())
                results.append(
                    {
                        "label": names[i],
                        "score": float(p[i]),
                        "scores": dict(zip(names, map(float, p), strict=True)),
                    }
                )
        return results
