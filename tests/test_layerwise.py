"""Layer-wise learning rates and gradual unfreezing: grouping, optimizer groups, unfreezing steps, resume, DDP."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import base_config, dump, write_text_csv
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from hftl.adapters import Lora
from hftl.cli import main as hftl
from hftl.encoders import AudioEncoder, TextEncoder
from hftl.errors import ConfigError
from hftl.models import Classifier, LinearHead
from hftl.training import LayerwiseConfig, TrainConfig
from hftl.training.builders import build_optimizer
from hftl.training.layerwise import GradualUnfreezer, layer_groups, layer_key

LR = 1e-2


# -- unit ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,key",
    [
        ("encoder.layer.3.attention.self.query.weight", (3,)),  # BERT, ViT
        ("base_model.model.encoder.layer.1.attention.self.query.lora_A.default.weight", (1,)),  # peft
        ("encoder.layers.11.feed_forward.output_dense.bias", (11,)),  # wav2vec2, HuBERT, WavLM
        ("layers.0.self_attn.k_proj.weight", (0,)),  # Whisper encoder
        ("encoder.stages.1.layers.2.dwconv.weight", (1, 2)),  # ConvNeXt, ResNet
        ("h.5.attn.c_attn.weight", (5,)),  # GPT-2
        ("feature_extractor.conv_layers.0.conv.weight", None),  # wav2vec2 CNN: below the layers
        ("embeddings.word_embeddings.weight", None),
        ("encoder.layer.0", None),  # a module path, not a parameter inside the layer
    ],
)
def test_layer_key_reads_the_layer_index_from_parameter_names(name, key):
    assert layer_key(name) == key


class Toy(nn.Module):
    """embeddings → 3 numbered layers → final norm, as transformers names them."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Embedding(5, 4)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.layernorm = nn.LayerNorm(4)


def toy_model() -> tuple[nn.Module, Toy]:
    model = nn.Module()
    model.backbone, model.head = Toy(), nn.Linear(4, 2)
    return model, model.backbone


def test_groups_depths_and_learning_rates_on_a_toy_backbone():
    model, backbone = toy_model()
    groups = layer_groups(model, backbone=backbone, lr_decay=0.5)
    assert [(g["name"], g["depth"], g["lr_scale"]) for g in groups] == [
        ("head", 0, 1.0), ("layer 2", 1, 0.5), ("layer 1", 2, 0.25), ("layer 0", 3, 0.125), ("embeddings", 4, 0.0625),
    ]  # fmt: skip
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in model.head.parameters()}
    top = [
        *backbone.encoder.layer[2].parameters(),
        *backbone.layernorm.parameters(),
    ]  # final norm joins the top
    assert ids[1] == {id(p) for p in top}
    assert ids[4] == {id(backbone.embeddings.weight)}


def test_backbone_without_numbered_layers_is_a_config_error():
    model = nn.Module()
    model.backbone, model.head = nn.Sequential(nn.Linear(4, 4)), nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="found no numbered layers"):
        layer_groups(model, backbone=model.backbone, lr_decay=0.5)


def test_gradual_unfreezer_flips_requires_grad_at_the_configured_steps():
    model, backbone = toy_model()
    backbone.layer_frozen_by_adapter = nn.Linear(1, 1).requires_grad_(False)  # not in the optimizer
    optimizer = torch.optim.SGD(layer_groups(model, backbone=backbone, lr_decay=1.0), lr=LR)
    unfreeze = GradualUnfreezer(optimizer, every_steps=3)
    trained = []
    for step in range(16):
        unfreeze(step)
        trained.append(
            [g["name"] for g in optimizer.param_groups if all(p.requires_grad for p in g["params"])]
        )
    assert trained[0] == trained[2] == ["head"]
    assert trained[3] == trained[5] == ["head", "layer 2"]
    assert trained[6] == ["head", "layer 2", "layer 1"]
    assert trained[9] == ["head", "layer 2", "layer 1", "layer 0"]
    assert trained[12] == trained[15] == ["head", "layer 2", "layer 1", "layer 0", "embeddings"]
    assert unfreeze.fully_unfrozen_at == 12
    assert not any(p.requires_grad for p in backbone.layer_frozen_by_adapter.parameters())
    unfreeze(4)  # a resumed run recomputes the state from the step alone
    assert [g["name"] for g in optimizer.param_groups if g["params"][0].requires_grad] == ["head", "layer 2"]


def test_layerwise_config_is_validated():
    with pytest.raises(ConfigError, match=r"`train.layerwise.lr_decay` must be in \(0, 1\]"):
        TrainConfig(layerwise={"lr_decay": 0.0})
    with pytest.raises(ConfigError, match="both"):
        LayerwiseConfig(unfreeze_every_steps=2, unfreeze_every_epochs=1)
    with pytest.raises(ConfigError, match="did you mean `unfreeze_every_steps`"):
        TrainConfig(layerwise={"unfreeze_every_step": 2})
    assert not TrainConfig().layerwise.active and TrainConfig(layerwise=None).layerwise == LayerwiseConfig()
    assert LayerwiseConfig(unfreeze_every_epochs=2).unfreeze_interval(steps_per_epoch=7) == 14


# -- components: tiny BERT and wav2vec2, full and LoRA ---------------------------------------------------
def classifier(encoder) -> Classifier:
    return Classifier(encoder, LinearHead(in_features=encoder.out_features, num_labels=2), ["a", "b"])


def optimizer_for(model: Classifier, decay: float) -> torch.optim.Optimizer:
    return build_optimizer(
        lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01),
        model,
        backbone=model.encoder.backbone,
        layerwise=LayerwiseConfig(lr_decay=decay),
    )


def names_by_group(model: nn.Module, optimizer) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}


@pytest.mark.parametrize("kind", ["bert", "wav2vec2"])
def test_full_finetune_groups_every_layer_at_its_learning_rate(tiny_models, kind):
    encoder = TextEncoder(tiny_models[kind]) if kind == "bert" else AudioEncoder(tiny_models[kind])
    model = classifier(encoder)
    optimizer = optimizer_for(model, 0.5)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("head", LR), ("layer 1", LR / 2), ("layer 0", LR / 4), ("embeddings", LR / 8),
    ]  # fmt: skip
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)  # the config's other defaults stay
    groups = names_by_group(model, optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set().union(*groups.values()) == trainable  # every trainable weight, once
    assert sum(map(len, groups.values())) == len(trainable)
    layers = "encoder.layer." if kind == "bert" else "encoder.layers."
    for depth_name, index in (("layer 1", 1), ("layer 0", 0)):
        assert {n for n in trainable if f"{layers}{index}." in n} <= groups[depth_name]
    assert groups["head"] == {"head.1.weight", "head.1.bias"}
    if kind == "bert":
        assert {n for n in trainable if ".embeddings." in n} == groups["embeddings"]
        assert "encoder.backbone.pooler.dense.weight" in groups["layer 1"]  # above the top layer
    else:  # the CNN feature encoder is frozen by AudioEncoder; the projection is below the layers
        assert "encoder.backbone.feature_projection.projection.weight" in groups["embeddings"]
        assert not any("feature_extractor" in n for n in trainable)


@pytest.mark.parametrize("kind", ["bert", "wav2vec2"])
def test_lora_matrices_join_their_layer(tiny_models, kind):
    encoder = TextEncoder(tiny_models[kind]) if kind == "bert" else AudioEncoder(tiny_models[kind])
    Lora(r=2).apply(encoder)
    model = classifier(encoder)
    optimizer = optimizer_for(model, 0.8)
    assert [g["name"] for g in optimizer.param_groups] == [
        "head",
        "layer 1",
        "layer 0",
    ]  # no trainable embeddings
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([LR, 0.8 * LR, 0.64 * LR])
    groups = names_by_group(model, optimizer)
    layers = "encoder.layer." if kind == "bert" else "encoder.layers."
    for depth_name, index in (("layer 1", 1), ("layer 0", 0)):
        assert groups[depth_name] and all(
            f"{layers}{index}." in n and "lora_" in n for n in groups[depth_name]
        )
    unfreeze = GradualUnfreezer(optimizer, every_steps=1)
    unfreeze(10)  # everything unfrozen: the base weights LoRA froze stay frozen
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set().union(*groups.values())


# -- recipe: groups as configured, unfreezing at the configured steps, exact resume ---------------------
def finetune_cfg(tmp_path: Path, tiny: str, out: str, **train) -> dict:
    files = {s: str(write_text_csv(tmp_path / f"{s}.csv", n, i)) for i, (s, n) in enumerate(
        [("train", 32), ("validation", 8), ("test", 8)])}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny, "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp_path / out)
    cfg["optimizer"]["lr"] = LR
    cfg["train"].update({"max_steps": 6, "save_every_steps": 1, "keep_last": 10, "warmup_ratio": 0.0,
                         "load_best_at_end": False, "layerwise": {"lr_decay": 0.5, "unfreeze_every_steps": 2}, **train})  # fmt: skip
    return cfg


def run_recording(cfg: dict) -> list[tuple[int, list[str]]]:
    """Runs the finetune recipe in-process; records the trainable groups whenever the engine calls on_step."""
    from hftl.recipes.finetune import FinetuneRecipe

    recipe = FinetuneRecipe(OmegaConf.create(cfg))
    recipe.setup()
    optimizer, hook, seen = recipe.engine.optimizer, recipe.engine.on_step, []
    assert [g["initial_lr"] for g in optimizer.param_groups] == [LR * 0.5**d for d in range(4)]

    def spy(step: int) -> None:
        hook(step)
        seen.append((step, [g["name"] for g in optimizer.param_groups if g["params"][0].requires_grad]))
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs == pytest.approx([lrs[0] * 0.5**d for d in range(4)])  # the schedule keeps the ratios

    recipe.engine.on_step = spy
    recipe.train()
    recipe.save(recipe.evaluate())
    return seen


def test_recipe_unfreezes_at_the_configured_steps_and_resumes_exactly(tmp_path, tiny_models):
    cfg = finetune_cfg(tmp_path, tiny_models["bert"], "full")
    seen = run_recording(cfg)
    top, all_but_embeddings = ["head", "layer 1"], ["head", "layer 1", "layer 0"]
    assert seen == [(0, ["head"]), (1, ["head"]), (2, top), (3, top), (4, all_but_embeddings),
                    (5, all_but_embeddings), (6, [*all_but_embeddings, "embeddings"])]  # fmt: skip
    out = Path(cfg["output_dir"])
    final = load_file(out / "model" / "encoder" / "model.safetensors")
    pretrained = load_file(Path(tiny_models["bert"]) / "model.safetensors")
    # the embeddings unfreeze at step 6, after the last update: untouched (no gradient, no weight decay)
    assert torch.equal(
        final["embeddings.word_embeddings.weight"], pretrained["embeddings.word_embeddings.weight"]
    )
    assert not torch.equal(
        final["encoder.layer.0.output.dense.weight"], pretrained["encoder.layer.0.output.dense.weight"]
    )

    # a run killed after step 3 and re-launched: unfreezing state recomputed, same final weights
    resumed = dict(cfg, output_dir=str(tmp_path / "resumed"))
    shutil.copytree(out / "checkpoints", tmp_path / "resumed" / "checkpoints")
    for step in (4, 5, 6):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / f"step-{step:08d}")
    seen = run_recording(resumed)
    assert seen[0] == (3, top) and seen[-1][0] == 6
    again = load_file(tmp_path / "resumed" / "model" / "encoder" / "model.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def test_unfreeze_every_epochs_through_the_cli(tmp_path, tiny_models, capsys):
    cfg = finetune_cfg(tmp_path, tiny_models["bert"], "epochs", max_steps=None, epochs=2)
    cfg["train"]["layerwise"] = {"lr_decay": 0.9, "unfreeze_every_epochs": 1}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "one depth every 4 steps, all 4 depths train from step 12" in out  # 32 rows / batch 8
    assert "head 1.00e-02, layer 1 9.00e-03, layer 0 8.10e-03, embeddings 7.29e-03" in out


def test_validate_reports_layerwise_problems_before_loading(tmp_path, tiny_models, capsys):
    cfg = finetune_cfg(tmp_path, tiny_models["bert"], "bad")
    cfg["train"]["layerwise"] = {"lr_decay": 1.5, "unfreeze_evry_steps": 2}
    assert hftl(["validate", "--config", dump(cfg, tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "`train.layerwise.unfreeze_evry_steps`: unknown field of LayerwiseConfig" in err


# -- DDP: parameters frozen for a while still synchronize once unfrozen -------------------------------
def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, backbone = toy_model()
    optimizer = torch.optim.SGD(layer_groups(model, backbone=backbone, lr_decay=0.5), lr=0.1)
    unfreeze = GradualUnfreezer(optimizer, every_steps=2)

    class Net(nn.Module):  # wrapped with every parameter trainable, as the recipes do
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            h = backbone.embeddings(x).mean(1)
            for layer in backbone.encoder.layer:
                h = torch.tanh(layer(h))
            return model.head(backbone.layernorm(h))

    ddp = DistributedDataParallel(Net(), find_unused_parameters=True)
    gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for step in range(10):
        unfreeze(step)
        x, y = torch.randint(0, 5, (4, 3), generator=gen), torch.randint(0, 2, (4,), generator=gen)
        nn.functional.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    queue.put((rank, {n: p.detach().numpy().copy() for n, p in model.named_parameters()}))  # by value
    dist.destroy_process_group()


def test_ddp_keeps_replicas_identical_through_gradual_unfreezing():
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # no re-import: seconds, not a minute
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    torch.manual_seed(0)
    initial = dict(toy_model()[0].named_parameters())
    for name, value in results[0].items():
        assert (value == results[1][name]).all(), name  # gradients were all-reduced for every group
        assert not torch.equal(torch.from_numpy(value), initial[name]), name  # and every group did train
