"""Text encoders: ``AutoModel`` + ``AutoTokenizer``, and the collator that tokenizes or pads their batches."""

from __future__ import annotations

from typing import Any

import torch

from hftl.encoders.base import Encoder, with_labels
from hftl.errors import DataError


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
        return TextCollator(self.processor, max_length=self.max_length)


class TextCollator:
    """Pads token ids (pre-tokenized rows) or tokenizes ``text``, to the longest sequence of the batch.

    Rows of a split tokenized by :func:`hftl.data.tokenized.pretokenize` carry ``input_ids`` (and
    ``attention_mask``, ``token_type_ids``): they are only padded, with ``tokenizer.pad``. Rows with
    raw ``text`` are tokenized here, on every call. Both give the same tensors for the same texts.

    Args:
        tokenizer: a transformers tokenizer.
        max_length: sequences longer than this many tokens are truncated.

    Returns (on call):
        ``input_ids``, ``attention_mask`` (and whatever else the tokenizer returns), shape ``(B, L)``
        with ``L <= max_length`` the longest tokenized text; ``labels`` shape ``(B,)``.

    Raises (on call):
        DataError: pre-tokenized rows longer than ``max_length`` (tokenized for another max length).
    """

    def __init__(self, tokenizer, *, max_length: int = 128):
        self.tokenizer, self.max_length = tokenizer, max_length
        self._token_keys = ("input_ids", *(k for k in tokenizer.model_input_names if k != "input_ids"))

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if examples and "input_ids" in examples[0]:
            return with_labels(self._pad(examples), examples)
        texts = [ex["text"] for ex in examples]
        batch = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return with_labels(batch, examples)

    def _pad(self, examples: list[dict]):
        longest = max(len(ex["input_ids"]) for ex in examples)
        if self.max_length is not None and longest > self.max_length:
            raise DataError(
                f"A pre-tokenized row has {longest} tokens but the collator's max_length is "
                f"{self.max_length}: the split was tokenized with a larger `encoder.max_length`. Fix: "
                "tokenize it again with the encoder's max_length (hftl.data.tokenized.pretokenize)."
            )
        keys = [k for k in self._token_keys if k in examples[0]]
        features = [{k: ex[k] for k in keys} for ex in examples]
        return self.tokenizer.pad(features, padding="longest", return_tensors="pt")
