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


# -- peft's own config fields pass through ---------------------------------------------------------------
def test_lora_passes_peft_fields_through(tiny_models):
    """`use_dora`, `layers_to_transform`, `modules_to_save` reach peft: DoRA magnitudes on layer 1 only, the
    pooler trained and saved in full."""
    adapter = Lora(r=2, use_dora=True, layers_to_transform=[1], modules_to_save=["pooler.dense"])
    encoder = adapter.apply(TextEncoder(tiny_models["bert"]))
    names = [n for n, _ in encoder.backbone.named_parameters()]
    dora = [n for n in names if "lora_magnitude_vector" in n]
    assert dora and all(".layer.1." in n for n in dora)  # DoRA, and only on the chosen layer
    assert not any(".layer.0." in n and "lora_" in n for n in names)
    saved = [n for n, p in encoder.backbone.named_parameters() if "modules_to_save" in n]
    assert saved and all(p.requires_grad for n, p in encoder.backbone.named_parameters() if n in saved)


def test_ia3_passes_peft_fields_through(tiny_models):
    encoder = IA3(modules_to_save=["pooler.dense"]).apply(TextEncoder(tiny_models["bert"]))
    assert any("modules_to_save" in n for n, _ in encoder.backbone.named_parameters())


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (
            {"use_doraa": True},
            ["`adapter.use_doraa`", "Did you mean `use_dora`", "modules_to_save", "lora_alpha (as `alpha`)"],
        ),
        ({"lora_alpha": 32}, ["`adapter.lora_alpha`", "give only `alpha`"]),
        ({"task_type": "SEQ_CLS"}, ["`adapter.task_type`", "set by hftl"]),
        ({"megatron_core": "os"}, ["`adapter.megatron_core`", "may not import code"]),
        ({"init_lora_weights": "loftq"}, ["peft.LoraConfig rejects", "loftq_config"]),
    ],
)
def test_lora_refuses_unknown_managed_and_invalid_fields(kwargs, fragments):
    with pytest.raises(ConfigError) as err:
        Lora(**kwargs)
    assert all(f in str(err.value) for f in fragments), str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_ia3_rejects_feedforward_modules_outside_targets():
    with pytest.raises(ConfigError, match="feedforward_modules"):
        IA3(target_modules=["key"], feedforward_modules=["value"])  # before any model is built


def test_validate_knows_peft_fields_before_any_weights_load():
    """`hftl validate` checks adapter keys against LoraConfig's fields (the class signature carries them)."""
    from omegaconf import OmegaConf

    from hftl.config import validate_config

    node = {"_component_": "hftl.adapters.Lora", "r": 4, "use_dora": True, "layers_to_transform": [0]}
    validate_config(OmegaConf.create({"adapter": node}))
    with pytest.raises(ConfigError) as err:
        validate_config(OmegaConf.create({"adapter": {**node, "use_doraa": True}}))
    assert "`adapter.use_doraa`: unknown argument of hftl.adapters.Lora; did you mean `use_dora`?" in str(
        err.value
    )


def test_dora_with_modules_to_save_round_trips_through_a_model_directory(tiny_models, tmp_path):
    from omegaconf import OmegaConf

    from hftl.models.io import load_model, save_model

    cfg = OmegaConf.create({
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"]},
        "head": {"_component_": "hftl.models.LinearHead"},
    })  # fmt: skip
    torch.manual_seed(0)
    model = _classifier(Lora(r=2, use_dora=True, modules_to_save=["pooler.dense"]).apply(
        TextEncoder(tiny_models["bert"])
    ))  # fmt: skip
    with torch.no_grad():  # move every trained weight off its initial value, as training would
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = model.encoder.collator(train=False)([{"text": "a good film"}, {"text": "bad"}])
    loaded, _ = load_model(save_model(model.eval(), tmp_path / "model", adapter_kind="peft", config=cfg))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_wrapping_and_loading_a_peft_model_shows_no_deprecation_of_peft_internals(tiny_models, tmp_path):
    """peft reads `is_gradient_checkpointing`, deprecated in transformers 5: not the user's to fix."""
    import warnings

    from omegaconf import OmegaConf

    from hftl.models.io import load_model, save_model

    cfg = OmegaConf.create({
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"]},
        "head": {"_component_": "hftl.models.LinearHead"},
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = _classifier(Lora(r=2).apply(TextEncoder(tiny_models["bert"])))
        load_model(save_model(model.eval(), tmp_path / "model", adapter_kind="peft", config=cfg))
