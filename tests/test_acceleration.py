"""The GPU-path options on CPU: `auto` precision, length buckets, and `train.compile` against eager."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hftl.encoders import TextEncoder
from hftl.errors import ConfigError, HftlError, TrainingError
from hftl.models import Classifier
from hftl.models.heads import LinearHead
from hftl.training import Engine, TrainConfig, steps_for
from hftl.training.acceleration import (
    DEFAULT_BUCKETS,
    buckets_for,
    compile_for_training,
    pad_to_bucket,
    resolve_mixed_precision,
    resolve_num_workers,
)
from hftl.training.builders import build_accelerator, build_loader, build_scheduler

os.environ["HF_HUB_OFFLINE"] = "1"


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


# -- precision -----------------------------------------------------------------------------------------
def test_auto_precision_is_fp32_on_cpu_and_written_back(tmp_path: Path) -> None:
    config = TrainConfig(cpu=True)
    assert config.mixed_precision == "auto"  # the default
    accelerator = build_accelerator(config, tmp_path)
    assert accelerator.mixed_precision == "no" and config.mixed_precision == "no"
    assert config.num_workers == 0  # null resolved too: the recipes' loaders read it after this


def test_auto_precision_is_bf16_on_a_cuda_gpu_with_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision(TrainConfig()) == "bf16"
    assert resolve_mixed_precision(TrainConfig(cpu=True)) == "no"  # forced onto the CPU
    assert resolve_mixed_precision(TrainConfig(mixed_precision="no")) == "no"  # an explicit choice stays
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert resolve_mixed_precision(TrainConfig()) == "no"
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # V100, T4: fp32
    assert resolve_mixed_precision(TrainConfig()) == "no"


def test_loader_workers_default_to_two_on_a_cuda_gpu_and_none_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert TrainConfig().num_workers is None  # the default: decided by the device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_num_workers(TrainConfig()) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_num_workers(TrainConfig()) == 2
    assert resolve_num_workers(TrainConfig(cpu=True)) == 0  # forced onto the CPU
    assert resolve_num_workers(TrainConfig(num_workers=0)) == 0  # an explicit choice stays
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert resolve_num_workers(TrainConfig()) == 0
    with pytest.raises(ConfigError, match="train.num_workers` must be >= 0 or null; got -1"):
        TrainConfig(num_workers=-1)


@pytest.mark.parametrize(
    "flag, name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]
)
def test_fsdp_or_deepspeed_on_cpu_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag, name
) -> None:
    """accelerate sets neither up on CPU processes (it trains DDP or one process instead): one clear line."""
    monkeypatch.setenv(flag, "true")
    with pytest.raises(HftlError, match=f"asks for {name} .*on the CPU.*needs CUDA devices.*cpu_2proc.yaml"):
        build_accelerator(TrainConfig(cpu=True), tmp_path)


# -- length buckets ------------------------------------------------------------------------------------
def test_bucket_config_is_checked_and_defaults_only_for_cuda_graphs() -> None:
    with pytest.raises(ConfigError, match="train.length_buckets"):
        TrainConfig(length_buckets=[])
    with pytest.raises(ConfigError, match="train.length_buckets"):
        TrainConfig(length_buckets=[0, 64])
    assert buckets_for(TrainConfig()) is None
    assert buckets_for(TrainConfig(compile=True)) is None  # `default` mode handles any shape
    assert buckets_for(TrainConfig(compile=True, compile_mode="reduce-overhead")) == DEFAULT_BUCKETS
    assert buckets_for(TrainConfig(length_buckets=[64, 16, 64])) == (16, 64)


def test_length_buckets_parse_from_the_command_line() -> None:
    from hftl.config import load_config, to_dataclass

    cfg = load_config("text/minilm_lora_sst2", ["train.length_buckets=[32,64,128]", "train.compile=true"])
    train = to_dataclass(TrainConfig, cfg.train, key="train")
    assert train.length_buckets == [32, 64, 128] and train.compile is True


def test_pad_to_bucket_pads_token_tensors_only() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 7], [5, 6, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([1, 0]),
    }
    padded = pad_to_bucket(batch, (2, 4, 8))
    assert padded["input_ids"].tolist() == [[5, 6, 7, 0], [5, 6, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert padded["labels"] is batch["labels"]  # (B,) class labels are not token-aligned
    mlm = {"input_ids": torch.ones(1, 3, dtype=torch.long), "labels": torch.ones(1, 3, dtype=torch.long)}
    assert pad_to_bucket(mlm, (4,))["labels"].tolist() == [[1, 1, 1, -100]]  # ignored by cross-entropy
    source, target = pad_to_bucket((batch, {"input_ids": torch.ones(2, 5, dtype=torch.long)}), (4, 8))
    assert source["input_ids"].shape == (2, 4) and target["input_ids"].shape == (2, 8)
    assert pad_to_bucket(batch, (2,)) is batch  # longer than every bucket: as it is
    assert pad_to_bucket(batch, None) is batch
    assert pad_to_bucket({"pixel_values": torch.ones(2, 3, 4, 4)}, (8,))["pixel_values"].shape == (2, 3, 4, 4)
    with pytest.raises(TrainingError, match="'word_ids'.*length_buckets=null"):
        pad_to_bucket({**batch, "word_ids": torch.zeros(2, 3, dtype=torch.long)}, (4,))


# -- a tiny BERT classifier without dropout: compiled, bucketed and eager steps compute the same -------
def tiny_classifier(tiny_bert: str) -> Classifier:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    encoder = TextEncoder(config, processor=AutoTokenizer.from_pretrained(tiny_bert), pooling="mean")
    return Classifier(encoder, LinearHead(encoder.out_features, 2, dropout=0.0), ["neg", "pos"])


def text_rows(tokenizer, n: int = 24) -> list[dict]:
    words = "the a movie film good bad great not very book".split()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        picks = torch.randint(0, len(words), (int(torch.randint(2, 12, (1,), generator=gen)),), generator=gen)
        rows.append({"text": " ".join(words[j] for j in picks), "label": i % 2})
    return rows


def train_tiny(tmp_path: Path, tiny_bert: str, **train: object) -> tuple[list[float], dict, list[tuple]]:
    """Per-step losses, final weights and the batch shapes the loss saw, for 4 steps of batch 6."""
    config = TrainConfig(cpu=True, batch_size=6, max_steps=4, lr_scheduler="constant", warmup_ratio=0.0,
                         group_by_length=False, **train)  # fmt: skip
    accelerator = build_accelerator(config, tmp_path)
    model = tiny_classifier(tiny_bert)
    collate = model.encoder.collator(train=True)
    loader = build_loader(text_rows(model.encoder.processor), collate_fn=collate, batch_size=6, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = accelerator.prepare(build_scheduler(config, optimizer, total_steps=4, num_processes=1))
    losses, shapes = [], []

    def loss_fn(step_model, batch, progress):
        shapes.append(tuple(batch["input_ids"].shape))
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(step_model(**batch).logits, labels)
        losses.append(loss.item())
        return loss, {}

    engine = Engine(
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, train_loader=loader,
        config=config, output_dir=tmp_path, total_steps=steps_for(config, len(loader)), loss_fn=loss_fn,
    )  # fmt: skip
    engine.fit()
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, shapes


def test_length_buckets_change_shapes_not_losses(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    losses, weights, shapes = train_tiny(tmp_path / "plain", tiny_models["bert"])
    b_losses, b_weights, b_shapes = train_tiny(
        tmp_path / "bucketed", tiny_models["bert"], length_buckets=[8, 16]
    )
    assert {s[1] for s in b_shapes} <= {8, 16} and len({s[1] for s in shapes}) > 2  # real lengths vary
    assert b_losses == pytest.approx(losses, abs=1e-5)
    for key, value in weights.items():
        torch.testing.assert_close(b_weights[key], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)], ids=["aot_eager", "inductor"]
)
def test_compiled_training_matches_eager(
    tmp_path: Path, tiny_models: dict[str, str], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.compile` on CPU: the same losses and weights as eager steps.

    ``aot_eager`` runs the whole compiled path (TorchDynamo graph capture and AOTAutograd's joint graph,
    through the Engine, the checkpoints and the weight sharing) without generating kernels, in seconds.
    ``inductor`` (the default backend: C++ kernels on CPU) is slow only with a cold compile cache: 14 s warm,
    250 s cold on 2 shared cores; ``pytest -m slow tests/test_acceleration.py`` runs it.
    """
    import hftl.training.acceleration as acceleration

    compile_, modes = torch.compile, []

    def compile_with(model: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
        modes.append(mode)
        return compile_(model, mode=mode, backend=backend)

    monkeypatch.setattr(acceleration.torch, "compile", compile_with)
    losses, weights, _ = train_tiny(tmp_path / "eager", tiny_models["bert"])
    assert modes == []
    c_losses, c_weights, _ = train_tiny(tmp_path / "compiled", tiny_models["bert"], compile=True)
    assert modes == ["default"]  # the Engine trained through torch.compile
    assert c_losses == pytest.approx(losses, abs=1e-4)
    assert c_weights.keys() == weights.keys()  # the eager module is saved: no `_orig_mod.` prefix
    for key, value in weights.items():
        torch.testing.assert_close(c_weights[key], value, atol=1e-4, rtol=1e-3)
    # the checkpoint the Engine wrote holds the same tensor names as an eager run's
    saved = sorted(p.name for p in (tmp_path / "compiled" / "checkpoints").glob("step-*/*"))
    assert saved == sorted(p.name for p in (tmp_path / "eager" / "checkpoints").glob("step-*/*"))


def test_compile_for_training_shares_the_weights() -> None:
    model = torch.nn.Linear(2, 2)
    assert compile_for_training(model, TrainConfig()) is model
    compiled = compile_for_training(model, TrainConfig(compile=True))
    assert compiled is not model and compiled.weight is model.weight
