"""Text encoders: ``AutoModel`` + ``AutoTokenizer``."""

from __future__ import annotations

from typing import Any

from hftl.encoders.base import Encoder


class TextEncoder(Encoder):
    """A transformers text encoder (BERT, MiniLM, RoBERTa, ...) with its tokenizer.

    Args:
        model: Hub id or local directory.
        max_length: tokens kept per example (longer texts are truncated).
        pretokenize: recipes that support it (``finetune``, ``adapt``) tokenize every split once before training
            with ``datasets.map``, cached on disk and reused by later runs
            (:mod:`hftl.data.tokenized`); the collator then only pads. False: the collator tokenizes
            the raw text of each batch, at every step of every epoch.
        **kwargs: see :class:`hftl.encoders.base.Encoder` (pooling, layer, freeze_modules, ...).

    Example:
        >>> enc = TextEncoder("sentence-transformers/all-MiniLM-L6-v2", pooling="mean")  # doctest: +SKIP
        >>> enc.out_features  # doctest: +SKIP
        384
    """

    modality = "text"

    def __init__(self, model: str, *, max_length: int = 128, pretokenize: bool = True, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.max_length, self.pretokenize = max_length, pretokenize

    @classmethod
    def load_processor(cls, path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)

    def collator(self, *, train: bool) -> Any:
        from hftl.data import TextCollator

        return TextCollator(self.processor, max_length=self.max_length)
