"""Batch collators: a list of standardized examples in, the model's input tensors (+ ``labels``) out.

Examples come from :class:`hftl.data.ClassificationData` splits: ``{"text" | "audio" | "image": ...,
"label": int}`` (no ``label`` in unlabeled splits). Each collator pads dynamically to the longest
example of the batch, so short batches cost little.

Example:
    >>> collate = TextCollator(tokenizer, max_length=128)
    >>> loader = torch.utils.data.DataLoader(splits["train"], batch_size=32, collate_fn=collate)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import numpy as np
import torch

from hftl.data.audio import crop_or_pad, decode_audio


def _with_labels(batch, examples: list[dict]) -> dict[str, torch.Tensor]:
    """Plain dict of the processor's tensors, plus ``labels`` (LongTensor) when the examples have ``label``."""
    out = dict(batch)
    if examples and "label" in examples[0]:
        out["labels"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
    return out


class TextCollator:
    """Tokenizes ``text`` and pads to the longest sequence of the batch.

    Args:
        tokenizer: a transformers tokenizer.
        max_length: sequences longer than this many tokens are truncated.

    Returns (on call):
        ``input_ids``, ``attention_mask`` (and whatever else the tokenizer returns), shape ``(B, L)``
        with ``L <= max_length`` the longest tokenized text; ``labels`` shape ``(B,)``.
    """

    def __init__(self, tokenizer, *, max_length: int = 128):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        texts = [ex["text"] for ex in examples]
        batch = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return _with_labels(batch, examples)


class AudioCollator:
    """Decodes ``audio``, crops long clips and runs the feature extractor with padding to the longest.

    Args:
        feature_extractor: a transformers feature extractor; its ``sampling_rate`` sets the decode rate.
        max_duration: clips longer than this many seconds are cropped to it; None keeps full clips.
        train: crop at a random offset (augmentation) instead of the centre.
        seed: seed of the random crops, so a run is reproducible.

    Returns (on call):
        The extractor's tensors (``input_values`` ``(B, T)`` for wav2vec2-style extractors, with
        ``T <= max_duration * sampling_rate``) and ``attention_mask`` when the extractor supports it;
        ``labels`` shape ``(B,)``.
    """

    def __init__(
        self, feature_extractor, *, max_duration: float | None = None, train: bool = False, seed: int = 0
    ):
        if max_duration is not None and max_duration <= 0:
            raise ValueError(
                f"AudioCollator: max_duration must be positive seconds or None, got {max_duration}"
            )
        self.feature_extractor = feature_extractor
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.max_length = None if max_duration is None else int(round(max_duration * self.sampling_rate))
        self.train = train
        self.generator = np.random.default_rng(seed)
        params = inspect.signature(feature_extractor.__call__).parameters
        self._mask_kwargs = {"return_attention_mask": True} if "return_attention_mask" in params else {}

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        waves = [decode_audio(ex["audio"], sampling_rate=self.sampling_rate) for ex in examples]
        if self.max_length is not None:
            waves = [
                crop_or_pad(w, self.max_length, random=self.train, generator=self.generator)
                if len(w) > self.max_length
                else w
                for w in waves
            ]
        batch = self.feature_extractor(
            waves,
            sampling_rate=self.sampling_rate,
            padding="longest",
            return_tensors="pt",
            **self._mask_kwargs,
        )
        return _with_labels(batch, examples)


class ImageCollator:
    """Runs the image processor on ``image``, converting to the channel count it expects.

    The expected count is the processor's ``num_channels`` if it has one, else the length of its
    ``image_mean`` (3 when unknown): grayscale digits become RGB for an ImageNet ViT.

    Args:
        image_processor: a transformers image processor.

    Returns (on call):
        ``pixel_values`` shape ``(B, C, H, W)`` and ``labels`` shape ``(B,)``.
    """

    def __init__(self, image_processor):
        self.image_processor = image_processor
        channels = getattr(image_processor, "num_channels", None)
        mean = getattr(image_processor, "image_mean", None)
        if channels is None and isinstance(mean, list | tuple):
            channels = len(mean)
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [ex["image"] for ex in examples]
        images = [
            im.convert(self.mode) if getattr(im, "mode", self.mode) != self.mode else im for im in images
        ]
        return _with_labels(self.image_processor(images, return_tensors="pt"), examples)


def text_lengths(dataset: Iterable[dict], tokenizer=None, *, batch_size: int = 1000) -> list[int]:
    """Per-example lengths of ``text``, for length-grouped sampling.

    Args:
        dataset: a ``datasets.Dataset`` (or any sequence of dicts) with a ``text`` column.
        tokenizer: count tokens (special tokens included) with it; None counts whitespace-separated words.
        batch_size: texts tokenized per call.

    Returns:
        One length per example, in dataset order.
    """
    if hasattr(dataset, "with_format"):
        texts = dataset.with_format("arrow")["text"].to_pylist()
    else:
        texts = [ex["text"] for ex in dataset]
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    lengths = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start : start + batch_size], truncation=False)["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths
