"""Encoders trained from scratch (hftl.encoders.scratch): shapes, masks, save/load round trips, training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from hftl.encoders import AudioEncoder, LeNetConfig, SpeechCNNTransformerConfig, VisionEncoder
from hftl.encoders.scratch import LeNetModel, SpeechCNNTransformerModel
from hftl.errors import ConfigError

SMALL_SPEECH = dict(num_mel_bins=40, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def _digit_processor() -> transformers.ViTImageProcessor:
    return transformers.ViTImageProcessor(
        size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5], do_convert_rgb=False
    )


def _extractor(kind: str):
    if kind == "speech2text":
        return transformers.Speech2TextFeatureExtractor(feature_size=40, num_mel_bins=40, sampling_rate=16000)
    return transformers.WhisperFeatureExtractor(feature_size=40, sampling_rate=16000)


# --- models -----------------------------------------------------------------------------------------


def test_lenet_shapes_hidden_states_and_default_init():
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(LeNetConfig()).eval()
    assert isinstance(model, LeNetModel) and model.config.num_hidden_layers == 0
    assert model.fc.in_features == 50 * 4 * 4  # 28 -> conv 24 -> pool 12 -> conv 8 -> pool 4
    out = model(pixel_values=torch.randn(3, 1, 28, 28), output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 1, 500)
    assert len(out.hidden_states) == 1 and out.hidden_states[0] is out.last_hidden_state
    (last,) = model(pixel_values=torch.randn(3, 1, 28, 28), return_dict=False)
    assert last.shape == (3, 1, 500) and (last >= 0).all()  # ReLU features
    # PyTorch's default init (uniform, bound 1/sqrt(fan_in) = 1/5), not transformers' normal(0, 0.02)
    weight = model.conv1.weight
    assert weight.abs().max() <= 0.2 and weight.std() > 0.08
    assert LeNetModel(LeNetConfig(image_size=16)).fc.in_features == 50  # smallest input: a 1x1 map
    with pytest.raises(ValueError, match="image_size"):
        model(pixel_values=torch.randn(1, 3, 28, 28))


def test_speech_shapes_layouts_and_frame_mask():
    torch.manual_seed(0)
    config = SpeechCNNTransformerConfig(**SMALL_SPEECH)
    assert config.num_hidden_layers == 2 and config.num_attention_heads == 2
    model = transformers.AutoModel.from_config(config).eval()
    assert isinstance(model, SpeechCNNTransformerModel)
    features = torch.randn(2, 40, 101)
    mask = torch.ones(2, 101, dtype=torch.long)
    mask[1, 50:] = 0
    out = model(input_features=features, attention_mask=mask, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 26, 32)  # 101 -> 51 -> 26 frames
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    frames = model._get_feature_vector_attention_mask(26, mask)
    assert frames.tolist()[1] == [1] * 13 + [0] * 13  # 50 -> 25 -> 13 valid frames
    transposed = model(input_features=features.transpose(1, 2), attention_mask=mask)  # (B, T, mel)
    torch.testing.assert_close(transposed.last_hidden_state, out.last_hidden_state)
    alone = model(input_features=features[1:, :, :50]).last_hidden_state[0]  # the padding is ignored
    torch.testing.assert_close(alone, out.last_hidden_state[1, :13], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="num_mel_bins"):
        model(input_features=torch.randn(1, 80, 100))


def test_configs_report_every_bad_value():
    with pytest.raises(ConfigError) as err:
        SpeechCNNTransformerConfig(num_heads=5, dropout=1.5, input_layout="channels_last", conv_kernel_size=4)
    message = str(err.value)
    assert "4 config errors" in message
    for field in ("num_heads", "dropout", "input_layout", "conv_kernel_size"):
        assert f"`SpeechCNNTransformerConfig.{field}`" in message
    with pytest.raises(ConfigError, match="LeNetConfig.image_size.*>= 16") as err:
        LeNetConfig(image_size=12, conv_channels=[20])
    assert "`LeNetConfig.conv_channels` is [20]" in str(err.value)


@pytest.mark.parametrize("kind", ["lenet", "speech"])
def test_save_pretrained_round_trip(tmp_path: Path, kind: str):
    torch.manual_seed(0)
    if kind == "lenet":
        config, inputs = LeNetConfig(hidden_size=64), {"pixel_values": torch.randn(2, 1, 28, 28)}
    else:
        mask = torch.tensor([[1] * 30, [1] * 20 + [0] * 10])
        config = SpeechCNNTransformerConfig(**SMALL_SPEECH)
        inputs = {"input_features": torch.randn(2, 30, 40), "attention_mask": mask}
    model = transformers.AutoModel.from_config(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.to_diff_dict() == model.config.to_diff_dict()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


# --- through hftl's encoders ------------------------------------------------------------------------


def test_vision_encoder_with_lenet(tmp_path: Path):
    images = [{"image": Image.new("RGB", (40, 40), (200, 10, 10))}, {"image": Image.new("L", (16, 16), 128)}]
    enc = VisionEncoder(LeNetConfig(), processor=_digit_processor()).eval()
    assert enc.from_config and enc.out_features == 500
    batch = enc.collator(train=False)(images)
    assert batch["pixel_values"].shape == (2, 1, 28, 28)
    out = enc(**batch)
    assert out.pooled.shape == (2, 500) and out.hidden.shape == (2, 1, 500) and out.mask is None
    assert VisionEncoder(LeNetConfig(), processor=_digit_processor(), layer=0)(**batch).pooled.shape == (
        2,
        500,
    )
    with pytest.raises(ConfigError, match="encoder.layer"):
        VisionEncoder(LeNetConfig(), processor=_digit_processor(), layer=1)
    # a saved model directory loads like any Hub model (processor included)
    enc.backbone.save_pretrained(tmp_path)
    enc.processor.save_pretrained(tmp_path)
    reloaded = VisionEncoder(str(tmp_path)).eval()
    torch.testing.assert_close(reloaded(**batch).pooled, out.pooled)


@pytest.mark.parametrize("kind", ["speech2text", "whisper"])
def test_audio_encoder_with_speech_model(tmp_path: Path, wavs: list[dict], kind: str):
    layout = "time_mel" if kind == "speech2text" else "mel_time"
    config = SpeechCNNTransformerConfig(**SMALL_SPEECH, input_layout=layout)
    enc = AudioEncoder(config, processor=_extractor(kind), pooling="stats").eval()
    batch = enc.collator(train=False)(wavs)
    frames = batch["attention_mask"].shape[1]
    expected = (2, frames, 40) if kind == "speech2text" else (2, 40, frames)
    assert batch["input_features"].shape == expected and 98 <= frames <= 101  # 1 s of 10 ms frames
    out = enc(**batch)
    assert enc.out_features == 64 and out.pooled.shape == (2, 64)
    assert out.mask.shape == out.hidden.shape[:2] == (2, (frames + 3) // 4)
    valid = out.mask.sum(1)
    assert valid[0] == out.hidden.shape[1] and 0 < valid[1] < valid[0]  # the padded clip has fewer frames
    enc.backbone.save_pretrained(tmp_path)
    enc.processor.save_pretrained(tmp_path)
    reloaded = AudioEncoder(str(tmp_path), pooling="stats").eval()
    torch.testing.assert_close(reloaded(**reloaded.collator(train=False)(wavs)).pooled, out.pooled)


@pytest.mark.parametrize("kind", ["lenet", "speech"])
def test_a_few_sgd_steps_lower_the_loss(kind: str):
    """Two classes that differ in where the signal is (top/bottom half; low/high mel bins)."""
    torch.manual_seed(0)
    labels = torch.arange(32) % 2
    if kind == "lenet":
        x = 0.3 * torch.randn(32, 1, 28, 28)
        x[labels == 0, :, :14] += 1.0
        x[labels == 1, :, 14:] += 1.0
        model, key = LeNetModel(LeNetConfig(hidden_size=32)), "pixel_values"
    else:
        x = 0.3 * torch.randn(32, 40, 24)
        x[labels == 0, :20] += 1.0
        x[labels == 1, 20:] += 1.0
        model, key = SpeechCNNTransformerModel(SpeechCNNTransformerConfig(**SMALL_SPEECH)), "input_features"
    head = torch.nn.Linear(model.config.hidden_size, 2)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)

    def loss() -> torch.Tensor:
        features = model(**{key: x}).last_hidden_state.mean(1)
        return torch.nn.functional.cross_entropy(head(features), labels)

    model.eval()  # no dropout when measuring
    with torch.no_grad():
        before = loss().item()
    model.train()
    for _ in range(8):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.5 * before
