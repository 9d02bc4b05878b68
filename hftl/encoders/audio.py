"""Audio encoders: ``AutoModel`` + ``AutoFeatureExtractor`` (wav2vec2, HuBERT, WavLM, AST, Whisper)."""

from __future__ import annotations

from typing import Any

import torch

from hftl.encoders.base import Encoder


class AudioEncoder(Encoder):
    """A transformers speech/audio encoder with its feature extractor.

    Args:
        model: Hub id or local directory.
        pooling: ``mean`` (default), ``stats`` (mean + std, x-vector style), ``attention`` or ``cls``.
        max_duration: seconds kept per clip (random crop in training, centre crop in evaluation).
        freeze_feature_encoder: keep the convolutional waveform encoder fixed (wav2vec2/HuBERT/WavLM),
            the usual choice when fine-tuning on little data.
        **kwargs: see :class:`hftl.encoders.base.Encoder`.
    """

    modality = "audio"

    def __init__(
        self,
        model: str,
        *,
        max_duration: float | None = 4.0,
        freeze_feature_encoder: bool = True,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(model, **kwargs)
        self.max_duration = max_duration
        self.seed = seed
        if freeze_feature_encoder and hasattr(self.base_model, "freeze_feature_encoder"):
            self.base_model.freeze_feature_encoder()

    @property
    def sampling_rate(self) -> int:
        return int(self.processor.sampling_rate)

    @classmethod
    def load_processor(cls, path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
        from transformers import AutoFeatureExtractor

        return AutoFeatureExtractor.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )

    def output_mask(self, inputs: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor | None:
        mask = inputs.get("attention_mask")
        to_frames = getattr(self.base_model, "_get_feature_vector_attention_mask", None)
        if mask is None or to_frames is None or mask.shape[1] == hidden.shape[1]:
            return mask if mask is not None and mask.shape[1] == hidden.shape[1] else None
        return to_frames(hidden.shape[1], mask)  # sample-level mask -> frame-level mask

    def collator(self, *, train: bool) -> Any:
        from hftl.data import AudioCollator

        return AudioCollator(self.processor, max_duration=self.max_duration, train=train, seed=self.seed)
