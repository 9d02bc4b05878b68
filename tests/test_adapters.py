"""Component tests of hftl.adapters on tiny random models: which weights train, and the errors."""

from __future__ import annotations

import pytest
import torch
import transformers

from hftl.adapters import IA3, Frozen, FullFinetune, Lora, default_target_modules
from hftl.encoders import AudioEncoder, TextEncoder, VisionEncoder
from hftl.errors import ConfigError
from hftl.models import Classifier, LinearHead, count_parameters

ENCODERS = {"bert": TextEncoder, "vit": VisionEncoder, "wav2vec2": AudioEncoder, "hubert": AudioEncoder}


def _classifier(encoder) -> Classifier:
    return Classifier(encoder, LinearHead(encoder.out_features, 3), ["a", "b", "c"])


@pytest.mark.parametrize("kind", list(ENCODERS))
@pytest.mark.parametrize(("adapter", "marker"), [(Lora, "lora_A"), (IA3, "ia3_l")])
def test_peft_default_targets_train_only_adapter_and_head(tiny_models, kind, adapter, marker):
    encoder = adapter().apply(ENCODERS[kind](tiny_models[kind]))
    wrapped = {
        name.rsplit(f".{marker}", 1)[0] for name, _ in encoder.backbone.named_modules() if marker in name
    }
    assert len(wrapped) >= 4  # two layers, at least two modules each
    model = _classifier(encoder)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(marker in n or "lora_B" in n or n.startswith("head.") for n in trainable)
    peft_trainable, _ = encoder.backbone.get_nb_trainable_parameters()
    head = sum(p.numel() for p in model.head.parameters())
    assert count_parameters(model)[0] == peft_trainable + head
    assert 0 < peft_trainable < count_parameters(model)[1] // 10


def test_lora_r_and_targets(tiny_models):
    encoder = Lora(r=2, target_modules=["query"]).apply(TextEncoder(tiny_models["bert"]))
    lora_a = [p for n, p in encoder.backbone.named_parameters() if "lora_A" in n]
    assert len(lora_a) == 2 and all(p.shape == (2, 32) for p in lora_a)  # one query per layer, r x in
    assert not any("value.lora_A" in n for n, _ in encoder.backbone.named_parameters())


def test_default_target_modules():
    assert default_target_modules("bert") == ["query", "value"]
    assert default_target_modules("vit") == ["q_proj", "v_proj"]
    assert "feed_forward.output_dense" in default_target_modules("wav2vec2", "ia3")
    with pytest.raises(ConfigError, match="adapter.target_modules"):
        default_target_modules("resnet")


def test_frozen_trains_only_head_and_keeps_backbone_in_eval(tiny_models):
    model = _classifier(Frozen().apply(TextEncoder(tiny_models["bert"], pooling="attention")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "encoder.pool.scorer.weight",
        "encoder.pool.scorer.bias",
        "head.1.weight",
        "head.1.bias",
    }
    model.train()
    assert not model.encoder.backbone.training and model.head.training
    batch = model.encoder.collator(train=True)([{"text": "a good film"}, {"text": "not good"}])
    torch.testing.assert_close(model(**batch).features, model(**batch).features)  # no dropout in the backbone


def test_full_finetune_trains_everything(tiny_models):
    model = _classifier(FullFinetune().apply(TextEncoder(tiny_models["bert"])))
    trainable, total = count_parameters(model)
    assert trainable == total


@pytest.mark.parametrize("adapter", [Lora, IA3])
def test_unknown_model_type_without_targets(adapter):
    resnet = transformers.ResNetModel(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic")
    )
    encoder = VisionEncoder(resnet, processor=transformers.ViTImageProcessor())  # a built model, not a config
    with pytest.raises(ConfigError, match="adapter.target_modules") as err:
        adapter().apply(encoder)
    assert "'resnet'" in str(err.value)


def test_peft_on_random_init_encoder_is_config_error():
    config = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
    )
    encoder = VisionEncoder(config, processor=transformers.ViTImageProcessor())
    for adapter in (Lora(), IA3()):
        with pytest.raises(ConfigError, match="FullFinetune"):
            adapter.apply(encoder)


def test_lora_rank_must_be_positive():
    with pytest.raises(ConfigError, match="adapter.r"):
        Lora(r=0)
