"""Kill-and-resume exactness of the real CLI recipe on a tiny BERT.

A run that is SIGKILLed mid-epoch (twice) and re-launched with the same command must end with weights
that are bit-for-bit those of an uninterrupted run: the data order (epoch-seeded sampler + skipped
batches), the dropout RNG, the optimizer, the LR schedule and the early-stopping state all come back
from the checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ["HF_HUB_OFFLINE"] = "1"

from hftl.training.checkpoint import list_checkpoints  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 12  # 96 train rows / batch 8
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",  # same kernels in every run, and polite on shared CPUs
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}
CONFIG = """\
# Run: hftl run finetune --config {path}
recipe: finetune
output_dir: {output_dir}
seed: 7
encoder:
  _component_: hftl.encoders.TextEncoder
  model: {model}
  pooling: mean
  max_length: 32
adapter:
{adapter}
head:
  _component_: hftl.models.LinearHead
  dropout: 0.1
data:
  _component_: hftl.data.ClassificationData
  path: csv
  data_files:
    train: {data}/train.csv
    validation: {data}/validation.csv
    test: {data}/test.csv
  input_column: text
  label_column: label
  label_names: [negative, positive]
optimizer:
  _component_: torch.optim.AdamW
  lr: 3.0e-3
train:
  epochs: 3
  batch_size: 8
  save_every_steps: 5
  eval_every_steps: 10
  group_by_length: true
  metric_for_best: loss
  log_every_steps: 5
"""
ADAPTERS = {
    "full": "  _component_: hftl.adapters.FullFinetune",
    "lora": "  _component_: hftl.adapters.Lora\n  r: 4\n  alpha: 8\n  dropout: 0.1\n"
    "  target_modules: [query, value]",
}


def _write_split(path: Path, rows: int, rng: random.Random) -> None:
    positive = "good great very good the movie was great a".split()
    negative = "bad not good the film was bad very bad a".split()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = i % 2
            words = [rng.choice(positive if label else negative) for _ in range(rng.randint(2, 14))]
            writer.writerow([" ".join(words), label])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT and a 96 / 32 / 32-row two-label text csv set."""
    from hftl.encoders import save_tiny_encoder

    root = tmp_path_factory.mktemp("resume")
    model = save_tiny_encoder("bert", root / "bert")
    data = root / "data"
    data.mkdir()
    rng = random.Random(0)
    for split, rows in (("train", 96), ("validation", 32), ("test", 32)):
        _write_split(data / f"{split}.csv", rows, rng)
    return {"root": root, "model": model, "data": data}


def _config(workspace: dict[str, Path], name: str, adapter: str) -> Path:
    path = workspace["root"] / f"{name}.yaml"
    path.write_text(
        CONFIG.format(
            path=path,
            output_dir=workspace["root"] / name,
            model=workspace["model"],
            data=workspace["data"],
            adapter=ADAPTERS[adapter],
        )
    )
    return path


def _command(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "hftl.cli", "run", "finetune", "--config", str(config), *overrides]


def _run(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _command(config, *overrides), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"recipe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _checkpoint_steps(output_dir: Path) -> list[int]:
    return [int(path.name.split("-")[1]) for path in list_checkpoints(output_dir)]


def _run_until_killed(
    config: Path, output_dir: Path, *, min_step: int, overrides: tuple[str, ...] = ()
) -> int:
    """Starts the recipe, SIGKILLs it once a complete checkpoint at step >= ``min_step`` exists."""
    proc = subprocess.Popen(
        _command(config, *overrides),
        env=ENV,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            steps = [s for s in _checkpoint_steps(output_dir) if s >= min_step]
            if steps:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return max(steps)
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail(f"the run ended (exit {proc.returncode}) before a checkpoint at step >= {min_step} appeared")


def _assert_same_run(reference: Path, resumed: Path) -> None:
    # head.safetensors and encoder/model.safetensors (full) or encoder/adapter_model.safetensors (LoRA)
    names = sorted(p.relative_to(reference / "model") for p in (reference / "model").rglob("*.safetensors"))
    assert len(names) == 2, names
    for name in names:
        ref, got = load_file(str(reference / "model" / name)), load_file(str(resumed / "model" / name))
        assert ref.keys() == got.keys(), name
        different = [k for k in ref if not torch.equal(ref[k], got[k])]
        assert not different, f"{name}: tensors differ after resume: {different[:5]}"
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    got_metrics = json.loads((resumed / "metrics.json").read_text())
    assert got_metrics["test"]["accuracy"] == ref_metrics["test"]["accuracy"]
    assert got_metrics["test"]["loss"] == ref_metrics["test"]["loss"]
    assert got_metrics["best_step"] == ref_metrics["best_step"]
    assert got_metrics["history"] == ref_metrics["history"]  # every validation score, exactly


@pytest.fixture(scope="module")
def reference_full(workspace: dict[str, Path]) -> Path:
    """An uninterrupted full fine-tuning run (final weights, not the best ones, so the tail counts)."""
    _run(_config(workspace, "reference_full", "full"), "train.load_best_at_end=false")
    return workspace["root"] / "reference_full"


def _kill_twice_and_finish(config: Path, output_dir: Path, *overrides: str) -> None:
    first = _run_until_killed(config, output_dir, min_step=15, overrides=overrides)
    assert first % BATCHES_PER_EPOCH, f"checkpoint {first} is at an epoch boundary; the test wants mid-epoch"
    second = _run_until_killed(config, output_dir, min_step=first + 5, overrides=overrides)
    assert second % BATCHES_PER_EPOCH
    out = _run(config, *overrides).stdout
    assert f"Resumed from {output_dir / 'checkpoints'}" in out, out[-2000:]


def test_full_finetune_resume_is_exact(workspace: dict[str, Path], reference_full: Path) -> None:
    output_dir = workspace["root"] / "killed_full"
    config = _config(workspace, "killed_full", "full")
    _kill_twice_and_finish(config, output_dir, "train.load_best_at_end=false")
    _assert_same_run(reference_full, output_dir)


# Same engine path as the full fine-tuning test with peft's LoRA weights (and LoRA dropout) in the state;
# ~35 s of three more recipe launches, so it runs with `-m slow` to keep the default suite short.
@pytest.mark.slow
def test_lora_resume_is_exact(workspace: dict[str, Path]) -> None:
    _run(_config(workspace, "reference_lora", "lora"))
    output_dir = workspace["root"] / "killed_lora"
    config = _config(workspace, "killed_lora", "lora")
    first = _run_until_killed(config, output_dir, min_step=15)
    assert first % BATCHES_PER_EPOCH
    assert "Resumed from" in _run(config).stdout
    _assert_same_run(workspace["root"] / "reference_lora", output_dir)


def test_streamed_resume_is_exact(workspace: dict[str, Path]) -> None:
    """The same with the train split streamed: the shuffle buffer is reseeded per epoch and a resumed run
    re-reads the skipped part of the epoch's stream, so the weights still match bit for bit."""
    streamed = ("data.streaming=true", "data.shuffle_buffer=16", "train.max_steps=36")
    overrides = (*streamed, "train.load_best_at_end=false")
    _run(_config(workspace, "reference_stream", "full"), *overrides)
    output_dir = workspace["root"] / "killed_stream"
    _kill_twice_and_finish(_config(workspace, "killed_stream", "full"), output_dir, *overrides)
    _assert_same_run(workspace["root"] / "reference_stream", output_dir)


def test_corrupt_newest_checkpoint_falls_back(workspace: dict[str, Path], reference_full: Path) -> None:
    """A byte flipped in the newest checkpoint (same size: only its sha256 shows it) makes the same command
    resume from the previous checkpoint, with a warning, and still end bit-identical to the reference."""
    output_dir = workspace["root"] / "corrupt"
    shutil.copytree(reference_full, output_dir)  # the run marker comes along: the same run, moved
    steps = _checkpoint_steps(output_dir)
    assert steps == [35, 36], steps  # keep_last 2: the step-35 save and the final one
    weights = output_dir / "checkpoints" / "step-00000036" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert _checkpoint_steps(output_dir) == [35, 36]  # sizes unchanged: only the content hash catches it

    proc = _run(_config(workspace, "corrupt", "full"), "train.load_best_at_end=false")
    assert f"Resumed from {output_dir / 'checkpoints' / 'step-00000035'} (step 35" in proc.stdout, proc.stdout
    assert "step-00000036" in proc.stderr and "sha256" in proc.stderr  # the skip is reported with its reason
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["steps"] == 36
    # the validations stored in the step-35 checkpoint, then the final one at step 36, as in the reference
    assert [h["step"] for h in metrics["history"]] == [10, 20, 30, 36]
    _assert_same_run(reference_full, output_dir)
