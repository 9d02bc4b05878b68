"""LoRA and IA3 through peft, with default target modules per architecture."""

from __future__ import annotations

from typing import Literal

from hftl.adapters.simple import Adapter
from hftl.encoders.base import Encoder
from hftl.errors import ConfigError

# peft ships defaults for BERT but none for ViT/wav2vec2/HuBERT/WavLM/AST/Whisper. transformers 5 names their
# attention projections q_proj/k_proj/v_proj (ViT and AST too, no longer query/value; checked on tiny configs by
# tests/test_audio_encoders.py): LoRA wraps the query/value projections, as in the LoRA paper.
# WavLM's attention passes q/k/v_proj.weight straight to F.multi_head_attention_forward (the modules' forward
# never runs), so LoRA/IA3 there would train nothing: it adapts the feed-forward layers instead.
_WAV2VEC2_LIKE = ("wav2vec2", "hubert", "data2vec-audio", "unispeech", "unispeech-sat", "sew")
_WAVLM_FFN = ["feed_forward.intermediate_dense", "feed_forward.output_dense"]
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    **{
        t: ["q_proj", "v_proj"]
        for t in ("vit", "deit", "audio-spectrogram-transformer", "whisper", *_WAV2VEC2_LIKE)
    },
    "wav2vec2-conformer": ["linear_q", "linear_v"],
    "wavlm": _WAVLM_FFN,
}
# IA3 rescales keys, values and the feed-forward output (Liu et al. 2022).
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    **{
        t: (["k_proj", "v_proj", "fc2"], ["fc2"])
        for t in ("vit", "deit", "audio-spectrogram-transformer", "whisper")
    },
    **{
        t: (["k_proj", "v_proj", "feed_forward.output_dense"], ["feed_forward.output_dense"])
        for t in _WAV2VEC2_LIKE
    },
    "wavlm": (_WAVLM_FFN, ["feed_forward.output_dense"]),
}


def default_target_modules(model_type: str, method: Literal["lora", "ia3"] = "lora") -> list[str]:
    """Module names LoRA (or IA3) wraps for a transformers ``model_type`` such as ``bert`` or ``vit``."""
    table = LORA_TARGETS if method == "lora" else {k: v[0] for k, v in IA3_TARGETS.items()}
    if model_type not in table:
        raise ConfigError(
            f"`adapter.target_modules`: hftl has no default for model_type {model_type!r}; known: "
            f"{', '.join(sorted(table))}. Set `adapter.target_modules` to the names of its attention "
            "projections (print the model to see them)."
        )
    return list(table[model_type])


class _PeftAdapter(Adapter):
    kind = "peft"

    def _config(self, model_type: str):  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, encoder: Encoder) -> Encoder:
        from peft import get_peft_model

        if encoder.from_config:
            raise ConfigError(
                f"`adapter`: {type(self).__name__} needs pretrained weights, but `encoder.model` is a config "
                "(random init). Use hftl.adapters.FullFinetune to train it from scratch."
            )
        # task_type None gives a plain PeftModel whose forward passes any inputs (input_values, pixel_values).
        encoder.backbone = get_peft_model(encoder.backbone, self._config(encoder.backbone.config.model_type))
        return encoder


class Lora(_PeftAdapter):
    """Low-rank adaptation (Hu et al. 2021, arXiv:2106.09685) through ``peft.LoraConfig``.

    Args:
        r: rank of the update ``ΔW = B A`` (``A: r×in``, ``B: out×r``).
        alpha: scale; the update is multiplied by ``alpha / r``.
        dropout: dropout on the LoRA input.
        target_modules: module names to wrap; ``None`` = hftl's default for the architecture
            (:data:`LORA_TARGETS`).
        bias: which biases train: ``none``, ``all`` or ``lora_only``.
        use_rslora: scale by ``alpha / sqrt(r)`` (rank-stabilized LoRA).
    """

    def __init__(
        self,
        *,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.1,
        target_modules: list[str] | None = None,
        bias: Literal["none", "all", "lora_only"] = "none",
        use_rslora: bool = False,
    ):
        if r < 1:
            raise ConfigError(f"`adapter.r` must be >= 1; got {r}")
        self.r, self.alpha, self.dropout, self.bias, self.use_rslora = r, alpha, dropout, bias, use_rslora
        self.target_modules = target_modules

    def _config(self, model_type: str):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules or default_target_modules(model_type, "lora"),
            bias=self.bias,
            use_rslora=self.use_rslora,
        )


class IA3(_PeftAdapter):
    """(IA)^3: learned rescaling of keys, values and feed-forward activations (Liu et al. 2022).

    Args:
        target_modules: modules to rescale; ``None`` = hftl's default for the architecture.
        feedforward_modules: the subset of ``target_modules`` that are feed-forward layers
            (scaled on their input rather than output).
    """

    def __init__(
        self, *, target_modules: list[str] | None = None, feedforward_modules: list[str] | None = None
    ):
        self.target_modules, self.feedforward_modules = target_modules, feedforward_modules

    def _config(self, model_type: str):
        from peft import IA3Config

        if self.target_modules is None:
            if model_type not in IA3_TARGETS:
                default_target_modules(model_type, "ia3")  # raises the explanatory error
            targets, feedforward = IA3_TARGETS[model_type]
        else:
            targets, feedforward = self.target_modules, self.feedforward_modules or []
        return IA3Config(target_modules=targets, feedforward_modules=feedforward)
