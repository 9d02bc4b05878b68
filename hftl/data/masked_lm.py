"""Masked-language-model batches: text-only token rows and transformers' own masking, seeded per example.

:func:`tokenize_for_mlm` turns a text split into token rows and drops every other column (a ``label``
column never reaches the collator). :class:`MaskedLMCollator` masks each row with
:class:`transformers.DataCollatorForLanguageModeling`'s ``torch_mask_tokens`` (BERT's 80/10/10 rule, or
whole-word masking), before padding, so special tokens (``[CLS]``, ``[SEP]``, ``[UNK]``) and padding are
never masked or predicted. Each row gets its own generator seeded from ``(seed, index, epoch)`` (the key
hftl's loaders attach, see :class:`hftl.data.keys.KeyedDataset`): the masks are the same under
resume, any batch size and any number of processes, and the held-out rows get the same masks at every
evaluation, so their loss is comparable across steps and runs.

Example:
    >>> rows = tokenize_for_mlm(split, tokenizer, max_length=128)  # doctest: +SKIP
    >>> batch = MaskedLMCollator(tokenizer, seed=0)([rows[0], rows[1]])  # doctest: +SKIP
    >>> sorted(batch)  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'labels', 'token_type_ids']
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import datasets
import numpy as np
import torch

from hftl.data.keys import EXAMPLE_KEY
from hftl.errors import ConfigError, DataError

IGNORE_INDEX = -100  # label of a position that is not predicted (torch cross-entropy's ignore_index)
_TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


class _TokenizeText:
    """The ``map`` function: texts → token rows (windows of ``max_length`` tokens when splitting)."""

    def __init__(
        self, tokenizer: Any, *, max_length: int, split_long_texts: bool, offsets: bool, column: str
    ):
        self.tokenizer, self.column = tokenizer, column
        self.kwargs = dict(
            truncation=True, max_length=max_length, return_special_tokens_mask=True,
            return_overflowing_tokens=split_long_texts, return_offsets_mapping=offsets,
        )  # fmt: skip

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = dict(self.tokenizer(batch[self.column], **self.kwargs))
        out.pop("overflow_to_sample_mapping", None)
        return out


def tokenize_for_mlm(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    max_length: int,
    split_long_texts: bool = True,
    whole_word_mask: bool = False,
    input_column: str = "text",
) -> datasets.Dataset:
    """Token rows of ``dataset``'s texts for masked-LM training; every other column is dropped.

    Args:
        dataset: a split with an ``input_column`` of strings (other columns, e.g. ``label``, are removed).
        tokenizer: a transformers tokenizer with a mask token.
        max_length: tokens per row, special tokens included.
        split_long_texts: a text longer than ``max_length`` gives several rows (consecutive windows)
            instead of being truncated, so no text is wasted.
        whole_word_mask: also keep ``offset_mapping`` (needs a fast tokenizer), which whole-word masking
            reads to find word boundaries.
        input_column: the text column.

    Returns:
        A dataset with ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (and ``token_type_ids``,
        ``offset_mapping`` where they apply), one row per text or window.

    Raises:
        ConfigError: the tokenizer cannot do what was asked (no mask token; whole-word masking without a
            fast tokenizer).
    """
    name = type(tokenizer).__name__
    if tokenizer.mask_token is None:
        raise ConfigError(
            f"`encoder.model`: its tokenizer ({name}) has no mask token, so it cannot be trained as a masked "
            "language model. Fix: use an encoder pre-trained with masked-LM (BERT, RoBERTa, DeBERTa, MiniLM, ...)."
        )
    if whole_word_mask and not tokenizer.is_fast:
        raise ConfigError(
            f"`mlm.whole_word_mask` needs word boundaries from a fast tokenizer, but {name} is a slow one. "
            "Fix: set `mlm.whole_word_mask=false`, or use a model that ships tokenizer.json."
        )
    from hftl.data.tokenized import tokenization_fingerprint

    base = tokenization_fingerprint(dataset, tokenizer, max_length=max_length, input_column=input_column)
    flags = {"base": base, "split": split_long_texts, "offsets": whole_word_mask, "format": "mlm-1"}
    fingerprint = hashlib.blake2b(json.dumps(flags, sort_keys=True).encode(), digest_size=16).hexdigest()
    fn = _TokenizeText(
        tokenizer, max_length=max_length, split_long_texts=split_long_texts, offsets=whole_word_mask,
        column=input_column,
    )  # fmt: skip
    return dataset.map(
        fn, batched=True, remove_columns=dataset.column_names, new_fingerprint=fingerprint,
        desc="Tokenizing for masked-LM",
    )  # fmt: skip


def example_seed(seed: int, key: tuple[int, int] | None, *, position: int) -> int:
    """A 63-bit seed from ``(seed, index, epoch)``; without a key, from the row's position in its batch."""
    entropy = [seed, 0, *key] if key is not None else [seed, 1, position]
    return int(np.random.SeedSequence([int(x) for x in entropy]).generate_state(1, np.uint64)[0] >> 1)


class MaskedLMCollator:
    """Masks token rows for masked-LM training and pads them into a batch.

    Args:
        tokenizer: the encoder's tokenizer (mask, pad and special tokens come from it).
        mlm_probability: share of maskable tokens chosen for prediction.
        whole_word_mask: choose whole words (all their sub-tokens) instead of single tokens; the rows must
            carry ``offset_mapping`` (:func:`tokenize_for_mlm` with ``whole_word_mask=True``).
        mask_replace_prob: share of chosen tokens replaced by the mask token (None: 0.8, or 1.0 with
            whole-word masking, which transformers supports only that way).
        random_replace_prob: share replaced by a random token (None: 0.1, or 0 with whole-word masking);
            the rest keep their token.
        seed: seed of the masks (combined with each row's ``(index, epoch)`` key).
        fixed: the masks depend on the row index only, not on the epoch: the same tokens are scored at every
            evaluation of a held-out set (a prepared loader counts its passes as epochs).

    Returns (on call):
        ``input_ids``, ``attention_mask`` (and ``token_type_ids``), shape ``(B, L)``, and ``labels``
        ``(B, L)``: the original token at chosen positions, ``-100`` elsewhere (special tokens and padding
        included). Any other field of the rows (``label``, ``text``) is ignored.

    Raises:
        ConfigError: probabilities outside [0, 1], their sum above 1, or replacement shares other than
            1/0 with whole-word masking.
        DataError (on call): whole-word masking of rows without ``offset_mapping``.
    """

    uses_example_keys = True  # hftl's loaders then attach (index, epoch) keys to every row

    def __init__(
        self,
        tokenizer: Any,
        *,
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        mask_replace_prob: float | None = None,
        random_replace_prob: float | None = None,
        seed: int = 0,
        fixed: bool = False,
    ):
        from transformers import DataCollatorForLanguageModeling

        default = (1.0, 0.0) if whole_word_mask else (0.8, 0.1)
        mask_p = default[0] if mask_replace_prob is None else mask_replace_prob
        random_p = default[1] if random_replace_prob is None else random_replace_prob
        if whole_word_mask and (mask_p, random_p) != (1.0, 0.0):
            raise ConfigError(
                "`mlm.whole_word_mask` replaces every chosen word by the mask token (transformers supports no "
                f"random replacement there), but `mlm.mask_replace_prob` = {mask_p} and `mlm.random_replace_prob` "
                f"= {random_p}. Fix: leave both unset (null) or set them to 1.0 and 0.0."
            )
        try:
            self.masker = DataCollatorForLanguageModeling(
                tokenizer, mlm_probability=mlm_probability, whole_word_mask=whole_word_mask,
                mask_replace_prob=mask_p, random_replace_prob=random_p,
            )  # fmt: skip
        except ValueError as err:
            raise ConfigError(f"`mlm`: {err} (got mlm_probability={mlm_probability}, "
                              f"mask_replace_prob={mask_p}, random_replace_prob={random_p})") from err  # fmt: skip
        self.tokenizer, self.seed, self.whole_word_mask, self.fixed = tokenizer, seed, whole_word_mask, fixed

    def _mask_row(self, example: dict, generator: torch.Generator) -> tuple[dict[str, list], list[int]]:
        ids = torch.tensor([example["input_ids"]], dtype=torch.long)
        special = example.get("special_tokens_mask")
        if special is None:
            special = self.tokenizer.get_special_tokens_mask(
                example["input_ids"], already_has_special_tokens=True
            )
        special = torch.tensor([special], dtype=torch.bool)
        if "attention_mask" in example:  # a position the model does not attend to is never a target
            special |= torch.tensor([example["attention_mask"]]) == 0
        offsets = None
        if self.whole_word_mask:
            if "offset_mapping" not in example:
                raise DataError(
                    "whole-word masking needs each row's `offset_mapping` (word boundaries); tokenize the "
                    "text with tokenize_for_mlm(..., whole_word_mask=True)"
                )
            offsets = torch.tensor([example["offset_mapping"]])
        self.masker.generator = generator
        masked, labels = self.masker.torch_mask_tokens(
            ids, special_tokens_mask=special, offset_mapping=offsets
        )
        row = {k: example[k] for k in _TOKEN_COLUMNS if k in example}
        row["input_ids"] = masked[0].tolist()
        return row, labels[0].tolist()

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows, labels = [], []
        for position, example in enumerate(examples):
            key = example.get(EXAMPLE_KEY)
            if key is not None and self.fixed:
                key = (key[0], 0)
            seed = example_seed(self.seed, key, position=position)
            row, row_labels = self._mask_row(example, torch.Generator().manual_seed(seed))
            rows.append(row)
            labels.append(row_labels)
        batch = dict(self.tokenizer.pad(rows, padding="longest", return_tensors="pt"))
        width = batch["input_ids"].shape[1]
        padded = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, row_labels in enumerate(labels):
            if self.tokenizer.padding_side == "left":
                padded[i, width - len(row_labels) :] = torch.tensor(row_labels)
            else:
                padded[i, : len(row_labels)] = torch.tensor(row_labels)
        batch["labels"] = padded
        return batch
