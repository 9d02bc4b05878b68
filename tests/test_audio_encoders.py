"""Component tests of AudioEncoder on tiny random wav2vec2, HuBERT, WavLM, AST and Whisper encoders.

Each tiny model (hidden 32, 2 layers) is built from its transformers config and saved with its feature
extractor, so the encoder loads it like a Hub checkpoint. A recipe test fine-tunes the tiny Whisper encoder
with LoRA and augmentation on a slice of real FSDD through the `hftl` CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hftl.adapters import IA3, Lora
from hftl.encoders import AudioEncoder
from hftl.errors import ConfigError

KINDS = ("wav2vec2", "hubert", "wavlm", "ast", "whisper")
SPEECH = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
    conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    layerdrop=0.0, do_stable_layer_norm=True, feat_extract_norm="layer",
)  # fmt: skip
MEL = 16  # mel bins of the tiny AST and Whisper


def tiny_config(kind: str, **overrides):
    """The transformers config of a tiny ``kind`` model."""
    import transformers as tf

    if kind in ("wav2vec2", "hubert", "wavlm"):
        cls = {"wav2vec2": tf.Wav2Vec2Config, "hubert": tf.HubertConfig, "wavlm": tf.WavLMConfig}[kind]
        return cls(**{**SPEECH, **overrides})
    if kind == "ast":  # 100 frames (1 s) x 16 mel bins -> 9 x 1 patches of 16 x 16, stride 10
        return tf.ASTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_length=100, num_mel_bins=MEL, **overrides,
        )  # fmt: skip
    return tf.WhisperConfig(  # 50 positions = 100 mel frames = 1 s chunks
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=MEL, max_source_positions=50,
        max_target_positions=8, vocab_size=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, **overrides,
    )  # fmt: skip


def tiny_extractor(kind: str, **overrides):
    import transformers as tf

    if kind == "ast":
        return tf.ASTFeatureExtractor(**{"num_mel_bins": MEL, "max_length": 100, **overrides})
    if kind == "whisper":
        return tf.WhisperFeatureExtractor(**{"feature_size": MEL, "chunk_length": 1, **overrides})
    return tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)


def save_tiny_audio_encoder(kind: str, path: Path, **overrides) -> str:
    """Writes a tiny random ``kind`` model and its feature extractor to ``path``."""
    from transformers import AutoModel

    torch.manual_seed(0)
    tiny_extractor(kind).save_pretrained(path)
    AutoModel.from_config(tiny_config(kind, **overrides)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_audio")
    return {kind: save_tiny_audio_encoder(kind, root / kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_forward_stats_pooling_over_real_frames(tiny, wavs, kind: str):
    enc = AudioEncoder(tiny[kind], pooling="stats").eval()
    batch = enc.collator(train=False)(wavs)  # clips of 1.0 s and 0.5 s
    with torch.no_grad():
        out = enc(**batch)
    assert enc.out_features == 64 and out.pooled.shape == (2, 64)
    if kind == "ast":  # fixed 100 frames x 16 bins, no mask: every patch counts
        assert batch["input_values"].shape == (2, 100, MEL) and out.mask is None
        mask = torch.ones(out.hidden.shape[:2])
    else:
        mask = out.mask
        assert mask.shape == out.hidden.shape[:2]
        assert mask[0].sum() == out.hidden.shape[1] and 0 < mask[1].sum() < mask[0].sum()
    if kind == "whisper":  # padded to the 1 s chunk; 50 encoder frames, the 0.5 s clip fills 25
        assert batch["input_features"].shape == (2, MEL, 100) and mask.sum(1).tolist() == [50, 25]
    for i in range(2):
        real = out.hidden[i][mask[i].bool()]
        torch.testing.assert_close(out.pooled[i, :32], real.mean(0))
        torch.testing.assert_close(out.pooled[i, 32:], real.std(0, unbiased=False))


@pytest.mark.parametrize("kind", KINDS)
def test_layer_choice(tiny, wavs, kind: str):
    enc = AudioEncoder(tiny[kind], layer=1).eval()
    batch = enc.collator(train=False)(wavs)
    with torch.no_grad():
        out = enc(**batch)
        states = enc.backbone(**batch, output_hidden_states=True).hidden_states
    assert len(states) == 3
    torch.testing.assert_close(out.hidden, states[1])
    assert not torch.allclose(out.hidden, states[-1])
    with pytest.raises(ConfigError, match="encoder.layer"):
        AudioEncoder(tiny[kind], layer=3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("adapter", "marker", "per_layer"), [(Lora, "lora_A", 2), (IA3, "ia3_l", 3)])
def test_peft_defaults_wrap_modules_that_run(tiny, wavs, kind: str, adapter, marker: str, per_layer: int):
    """Every default target must be called as a module: WavLM's attention reads q/k/v_proj.weight directly,
    so adapters there would get no gradient (its defaults are the two feed-forward layers)."""
    if kind == "wavlm" and adapter is IA3:
        per_layer = 2
    enc = adapter().apply(AudioEncoder(tiny[kind]))
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "ia3_" in n for n in trainable)
    wrapped = {n.rsplit(f".{marker}", 1)[0] for n in trainable if marker in n}
    assert len(wrapped) == 2 * per_layer  # e.g. q,v (LoRA) or k,v,feed-forward out (IA3) in each of 2 layers
    enc.train()
    enc(**enc.collator(train=True)(wavs)).pooled.square().sum().backward()
    grads = [p.grad for n, p in enc.named_parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_feature_encoder_freezing_per_architecture(tiny):
    def frozen(enc: AudioEncoder) -> set[str]:
        return {n.split(".")[0] for n, p in enc.base_model.named_parameters() if not p.requires_grad}

    for kind in ("wav2vec2", "hubert", "wavlm"):  # HuBERT has no freeze_feature_encoder() in transformers 5
        assert frozen(AudioEncoder(tiny[kind])) == {"feature_extractor"}
    assert frozen(AudioEncoder(tiny["whisper"])) == {"conv1", "conv2"}
    assert frozen(AudioEncoder(tiny["ast"])) == set()
    for kind in KINDS:
        assert frozen(AudioEncoder(tiny[kind], freeze_feature_encoder=False)) == set()


def test_fixed_length_models_check_their_extractor(tiny):
    with pytest.raises(ConfigError, match="chunk_length to 1 or max_source_positions to 100"):
        AudioEncoder(tiny["whisper"], processor=tiny_extractor("whisper", chunk_length=2))
    with pytest.raises(ConfigError, match="feature_size to 16"):
        AudioEncoder(tiny["whisper"], processor=tiny_extractor("whisper", feature_size=80))
    with pytest.raises(ConfigError, match=r"\(max_length, num_mel_bins\) = \(100, 16\)"):
        AudioEncoder(tiny["ast"], processor=tiny_extractor("ast", max_length=200))


def test_group_norm_checkpoints_get_no_attention_mask(tmp_path: Path, wavs):
    """wav2vec2-base-style models were trained without masks: the mask only restricts pooling."""
    path = save_tiny_audio_encoder(
        "wav2vec2", tmp_path, feat_extract_norm="group", do_stable_layer_norm=False
    )
    enc = AudioEncoder(path, pooling="mean").eval()
    seen: list[set[str]] = []
    enc.backbone.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    batch = enc.collator(train=False)(wavs)
    out = enc(**batch)
    assert "attention_mask" in batch and "attention_mask" not in seen[0]
    assert 0 < out.mask[1].sum() < out.mask[0].sum()


def test_whisper_lora_with_augmentation_on_real_fsdd(tmp_path: Path, tiny, data_dir):
    """`hftl run finetune` end to end: tiny Whisper encoder + LoRA + waveform and SpecAugment on FSDD."""
    import yaml

    import hftl
    from hftl.cli import main as hftl_cli

    augment = {"noise_prob": 0.5, "speed_prob": 0.5, "gain_prob": 0.5, "time_mask_prob": 0.5,
               "freq_mask_prob": 0.5, "time_mask_param": 10, "freq_mask_param": 4}  # fmt: skip
    cfg = {
        "recipe": "finetune",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "encoder": {
            "_component_": "hftl.encoders.AudioEncoder",
            "model": tiny["whisper"],
            "pooling": "stats",
            "max_duration": 1.0,
            "augment": augment,
        },  # fmt: skip
        "adapter": {"_component_": "hftl.adapters.Lora", "r": 4},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": {
            "_component_": "hftl.data.ClassificationData",
            "path": "hftl:fsdd",
            "max_samples": {"train": 24, "validation": 8, "test": 8},
        },  # fmt: skip
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8, "log_every_steps": 1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl_cli(["run", "finetune", "--config", str(tmp_path / "cfg.yaml")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["test"]["num_samples"] == 8
    clip = next((data_dir / "fsdd" / "recordings").glob("*.wav"))
    prediction = hftl.load(tmp_path / "out" / "model")([str(clip)])
    assert prediction[0]["label"] in [str(d) for d in range(10)]
