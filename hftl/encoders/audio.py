"""Audio encoders: ``AutoModel`` + ``AutoFeatureExtractor`` (wav2vec2, HuBERT, WavLM, AST, Whisper).

What differs between the families, and how :class:`AudioEncoder` handles it:

* **wav2vec2 / HuBERT / WavLM** (and data2vec-audio, UniSpeech, SEW) take the raw waveform
  (``input_values``, padded to the longest clip); the convolutional ``feature_extractor`` can be
  frozen; the sample-level attention mask becomes a frame mask for pooling. Checkpoints whose
  feature encoder uses group norm (``feat_extract_norm: group``, e.g. wav2vec2-base) were trained
  without attention masks, so the mask is used for pooling only, not passed to the model.
* **Whisper**: only ``WhisperModel.get_encoder()`` is kept. Its extractor pads every clip to
  ``chunk_length`` seconds (30 s, 3000 frames), which the encoder requires
  (``2 × max_source_positions`` frames); the frame mask keeps pooling off the padding.
  Freezing the feature encoder freezes its two convolutions (``conv1``, ``conv2``).
* **AST**: the extractor pads or cuts every clip to the model's fixed ``max_length`` frames.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import torch

from hftl.data.augment import AudioAugment, AudioAugmentConfig
from hftl.encoders.audio_collator import AudioCollator
from hftl.encoders.base import Encoder, EncoderOutput
from hftl.errors import ConfigError

logger = logging.getLogger(__name__)

# The convolutional front end per model_type: what `freeze_feature_encoder` freezes.
FEATURE_ENCODER_MODULES: dict[str, tuple[str, ...]] = {
    **{
        t: ("feature_extractor",)
        for t in (
            "wav2vec2",
            "hubert",
            "wavlm",
            "data2vec-audio",
            "unispeech",
            "unispeech-sat",
            "sew",
            "sew-d",
        )
    },
    "wav2vec2-conformer": ("feature_extractor",),
    "whisper": ("conv1", "conv2"),
}


class AudioEncoder(Encoder):
    """A transformers speech/audio encoder with its feature extractor.

    Args:
        model: Hub id or local directory (or a transformers config for a random init).
        pooling: ``mean`` (default), ``stats`` (mean + std, x-vector style), ``attention`` or ``cls``.
        max_duration: seconds kept per clip (random crop in training, centre crop in evaluation).
        freeze_feature_encoder: keep the convolutional front end fixed (:data:`FEATURE_ENCODER_MODULES`:
            the waveform CNN of wav2vec2/HuBERT/WavLM, Whisper's two convolutions), the usual choice when
            fine-tuning on little data. No effect for AST and for models built from a config.
        seed: seed of the training collator's per-example random crops and augmentation.
        augment: training-split augmentation (:class:`hftl.data.augment.AudioAugmentConfig` or a mapping
            of its fields, e.g. ``{noise_prob: 0.5, snr_min: 5, snr_max: 20, speed_prob: 0.3}``);
            None = none.
        normalize: level every clip after decoding: ``peak`` (max |x| = 1), ``rms`` (-20 dBFS) or
            ``none``; useful when recordings of the source and target domains differ in gain.
        **kwargs: see :class:`hftl.encoders.base.Encoder` (``layer``, ``freeze_modules``, ...).

    Raises:
        ConfigError: a bad ``augment`` field, or a feature extractor whose fixed input length does not
            match the model (Whisper, AST).
    """

    modality = "audio"

    def __init__(
        self,
        model: str,
        *,
        max_duration: float | None = 4.0,
        freeze_feature_encoder: bool = True,
        seed: int = 0,
        augment: AudioAugmentConfig | Mapping[str, Any] | None = None,
        normalize: Literal["none", "peak", "rms"] = "none",
        **kwargs: Any,
    ):
        augment = AudioAugment(augment) if augment is not None else None  # config errors before weights load
        super().__init__(model, **kwargs)
        self.max_duration, self.seed, self.augment, self.normalize = max_duration, seed, augment, normalize
        config = self.base_model.config
        self._check_input_length(config)
        # wav2vec2-base-style group norm: trained without masks, so the mask only serves pooling.
        self._model_takes_mask = getattr(config, "feat_extract_norm", "layer") != "group"
        if freeze_feature_encoder and not self.from_config:
            self._freeze_feature_encoder(config.model_type)

    @property
    def sampling_rate(self) -> int:
        return int(self.processor.sampling_rate)

    @classmethod
    def load_processor(cls, path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
        from transformers import AutoFeatureExtractor

        return AutoFeatureExtractor.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )

    def _freeze_feature_encoder(self, model_type: str) -> None:
        names = FEATURE_ENCODER_MODULES.get(model_type)
        if names is None:
            if hasattr(self.base_model, "freeze_feature_encoder"):
                self.base_model.freeze_feature_encoder()
            return
        for name in names:
            module = getattr(self.base_model, name, None)
            if module is not None:
                module.requires_grad_(False)

    def _check_input_length(self, config: Any) -> None:
        """Whisper and AST need a fixed number of input frames: the extractor must produce exactly that."""
        fe, problem = self.processor, None
        if config.model_type == "whisper":
            frames, made = 2 * config.max_source_positions, getattr(fe, "nb_max_frames", None)
            if made is not None and made != frames:
                problem = (
                    f"the Whisper encoder takes {frames} mel frames (2 × max_source_positions = "
                    f"{config.max_source_positions}) but its feature extractor pads to {made} "
                    f"(chunk_length {fe.chunk_length} s). Set the extractor's chunk_length to "
                    f"{frames * fe.hop_length / fe.sampling_rate:g} or max_source_positions to {made // 2}"
                )
            elif getattr(fe, "feature_size", config.num_mel_bins) != config.num_mel_bins:
                problem = (
                    f"the Whisper encoder takes {config.num_mel_bins} mel bins but its feature extractor "
                    f"makes {fe.feature_size}; set the extractor's feature_size to {config.num_mel_bins}"
                )
        elif config.model_type == "audio-spectrogram-transformer":
            want = (config.max_length, config.num_mel_bins)
            made = (getattr(fe, "max_length", want[0]), getattr(fe, "num_mel_bins", want[1]))
            if made != want:
                problem = (
                    f"the AST model takes (max_length, num_mel_bins) = {want} but its feature extractor "
                    f"makes {made}; give the extractor the model's max_length and num_mel_bins"
                )
        if problem:
            raise ConfigError(f"`encoder.processor`: {problem}.")

    def output_mask(self, inputs: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor | None:
        """Frame mask of ``hidden`` from the collator's sample- (wav2vec2) or frame-level (Whisper) mask."""
        mask = inputs.get("attention_mask")
        if mask is None or mask.shape[1] == hidden.shape[1]:
            return mask
        to_frames = getattr(self.base_model, "_get_feature_vector_attention_mask", None)
        if to_frames is not None:
            return to_frames(hidden.shape[1], mask)  # sample-level mask -> frame-level mask
        to_lengths = getattr(self.base_model, "_get_feat_extract_output_lengths", None)
        if to_lengths is None:
            return None
        lengths = to_lengths(mask.sum(-1))  # Whisper: mel frames -> encoder frames (stride 2)
        return (torch.arange(hidden.shape[1], device=mask.device)[None] < lengths[:, None]).to(mask.dtype)

    def forward(self, **inputs: torch.Tensor) -> EncoderOutput:
        model_inputs = inputs
        if not self._model_takes_mask:
            model_inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
        all_layers = self.layer != -1
        out = self.backbone(**model_inputs, output_hidden_states=all_layers, return_dict=True)
        hidden = out.hidden_states[self.layer] if all_layers else out.last_hidden_state
        mask = self.output_mask(inputs, hidden)
        return EncoderOutput(pooled=self.pool(hidden, mask), hidden=hidden, mask=mask)

    def collator(self, *, train: bool) -> Any:
        fixed = self.base_model.config.model_type == "whisper"  # the encoder takes exactly chunk_length
        return AudioCollator(
            self.processor, max_duration=self.max_duration, train=train, seed=self.seed, augment=self.augment,
            padding="max_length" if fixed else "longest", normalize=self.normalize,
        )  # fmt: skip
