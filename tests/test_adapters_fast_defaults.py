"""Issue 17's faster defaults: LoRA without dropout, no adapter on the unused pooler, fused AdamW in configs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from hftl.adapters import IA3, Lora
from hftl.config import instantiate, list_shipped_configs, load_config
from hftl.encoders import TextEncoder, VisionEncoder
from hftl.errors import ConfigError

SHIPPED_LORA_TARGETS = [
    "query",
    "key",
    "value",
    "dense",
]  # the text configs' list: `dense` names the pooler too


def _wrapped(encoder, marker: str) -> set[str]:
    """Names of the modules peft wrapped (relative to the transformers model)."""
    return {
        name.removeprefix("base_model.model.").rsplit(f".{marker}", 1)[0]
        for name, _ in encoder.backbone.named_modules()
        if name.endswith(f".{marker}")
    }


def test_default_lora_wraps_query_and_value_of_each_layer_and_no_pooler(tiny_models, recwarn):
    encoder = Lora().apply(TextEncoder(tiny_models["bert"]))
    assert not [w for w in recwarn if "exclude_modules" in str(w.message)]  # no exclusion asked: none needed
    assert sorted(_wrapped(encoder, "lora_A")) == [
        f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")
    ]
    assert hasattr(encoder.backbone.base_model.model, "pooler")  # there is one; it is left alone


@pytest.mark.parametrize(
    ("kind", "adapter", "marker"),
    [
        ("bert", Lora(target_modules=SHIPPED_LORA_TARGETS), "lora_A"),
        ("bert", IA3(target_modules=["key", "value", "dense"], feedforward_modules=["dense"]), "ia3_l"),
        ("vit", Lora(target_modules=["q_proj", "dense"]), "lora_A"),  # transformers 5 ViT: pooler.dense only
        ("bert", Lora(target_modules="all-linear"), "lora_A"),
    ],
)
def test_a_target_list_matching_the_pooler_still_skips_it(tiny_models, kind, adapter, marker):
    """hftl pools token states itself; BERT's and ViT's `pooler.dense` output is never used."""
    encoder = {"bert": TextEncoder, "vit": VisionEncoder}[kind](tiny_models[kind])
    wrapped = _wrapped(adapter.apply(encoder), marker)
    if kind == "bert":
        assert {"encoder.layer.1.intermediate.dense", "encoder.layer.0.attention.output.dense"} <= wrapped
    assert wrapped and not [n for n in wrapped if "pooler" in n]


def test_targets_that_match_only_the_pooler_are_a_config_error(tiny_models):
    with pytest.raises(ConfigError, match=r"\['dense'\] match no module .*\(the pooler is skipped"):
        Lora(target_modules=["dense"]).apply(VisionEncoder(tiny_models["vit"]))


def test_a_config_may_still_wrap_the_pooler_with_its_own_exclude_modules(tiny_models):
    encoder = Lora(target_modules=["dense"], exclude_modules=["intermediate.dense"]).apply(
        TextEncoder(tiny_models["bert"])
    )
    wrapped = _wrapped(encoder, "lora_A")
    assert "pooler.dense" in wrapped and not [n for n in wrapped if "intermediate" in n]


def test_lora_dropout_is_off_by_default_and_explicit_dropout_is_kept(tiny_models):
    assert Lora().peft_config("bert").lora_dropout == 0.0
    for dropout, kind in ((None, torch.nn.Identity), (0.1, torch.nn.Dropout)):
        node = {"_component_": "hftl.adapters.Lora", **({"dropout": dropout} if dropout else {})}
        encoder = instantiate(OmegaConf.create(node)).apply(TextEncoder(tiny_models["bert"]))
        layers = [m for n, m in encoder.backbone.named_modules() if n.endswith("lora_dropout.default")]
        assert layers and all(type(m) is kind for m in layers)
        assert all(m.p == 0.1 for m in layers if kind is torch.nn.Dropout)


def _adamw_nodes() -> list[tuple[str, dict]]:
    nodes = []
    for name in list_shipped_configs():
        node = OmegaConf.to_container(load_config(name), resolve=False).get("optimizer")
        if node and node["_component_"] == "torch.optim.AdamW":
            nodes.append((name, node))
    return nodes


def test_every_shipped_adamw_is_fused_and_builds_on_cpu():
    """Fused AdamW (one kernel per step over all parameters): torch supports it on CPU, CUDA, MPS and XPU."""
    nodes = _adamw_nodes()
    assert len(nodes) >= 15
    assert [name for name, node in nodes if node.get("fused") is not True] == []
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    optimizer = instantiate(OmegaConf.create(nodes[0][1]), params=params)
    for p in params:
        p.grad = torch.ones_like(p)
    before = params[0].detach().clone()
    optimizer.step()
    assert optimizer.param_groups[0]["fused"] is True and not torch.equal(before, params[0])
