"""SST-2 with all-MiniLM-L6-v2: sentence-level and context-level embedding transfer beside LoRA and a
full fine-tune, with the cached-epoch speedup over a fine-tune epoch (goal >= 50x).

Run (from the repo root, data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/embedding_transfer.py --quick          # CPU: 4,000 training phrases, ~10 min
    python benchmarks/embedding_transfer.py --mixed-precision bf16   # GPU: all 60,614 phrases

All four methods run in this one process on the same machine and the same training examples (test =
GLUE SST-2 dev, 872 sentences; validation = a seeded subset of the ALPS dev split). LoRA and full
fine-tune run through the finetune recipe for one epoch (``text/minilm_lora_sst2`` and
``text/minilm_full_sst2``). The speedup divides the training time of that full fine-tune epoch
(validation and checkpoint writing excluded) by the time of one head epoch on the cached features (the
median epoch; the one-time encoding pass is reported separately). A second sentence-level run shows
the cache being reused. Writes benchmarks/results/embedding_transfer.md and .jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def load_cfg(recipe, config: str, overrides: list[str]):
    from hftl.recipe import load_and_validate

    return load_and_validate(recipe, config, overrides, allow_any=False)


def run_embed(config: str, overrides: list[str], name: str) -> dict:
    from hftl.recipes.embed import EmbedRecipe

    start = time.perf_counter()
    metrics = EmbedRecipe(load_cfg(EmbedRecipe, config, overrides)).run()
    wall = time.perf_counter() - start
    encode = sum(v["seconds"] for v in metrics["features"].values())
    epochs = metrics["epoch_seconds"]
    return {
        "method": name, "config": config, "test_accuracy": metrics["test"]["accuracy"],
        "validation_accuracy": metrics["validation"]["accuracy"], "feature_seconds": round(encode, 2),
        "feature_modes": sorted({v["mode"] for v in metrics["features"].values()}),
        "train_seconds": round(sum(epochs), 3), "epochs": len(epochs),
        "epoch_seconds": round(statistics.median(epochs), 4), "wall_seconds": round(wall, 1),
    }  # fmt: skip


def run_finetune(config: str, overrides: list[str], name: str) -> dict:
    """One fine-tune epoch through the finetune recipe, timing the training steps only."""
    from hftl.recipes.finetune import FinetuneRecipe

    start = time.perf_counter()
    recipe = FinetuneRecipe(load_cfg(FinetuneRecipe, config, overrides))
    recipe.setup()
    excluded = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                excluded[0] += time.perf_counter() - t0

        return wrapper

    engine = recipe.engine
    engine.evaluate, engine.save = timed(engine.evaluate), timed(engine.save)
    t0 = time.perf_counter()
    recipe.train()
    epoch = time.perf_counter() - t0 - excluded[0]
    metrics = recipe.evaluate()
    recipe.accelerator.end_training()
    return {
        "method": name, "config": config, "test_accuracy": metrics["test"]["accuracy"],
        "validation_accuracy": metrics["validation"]["accuracy"], "feature_seconds": 0.0, "feature_modes": [],
        "train_seconds": round(epoch, 2), "epochs": 1, "epoch_seconds": round(epoch, 2),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="CPU subset: 4,000 training phrases, 1,000 validation."
    )
    parser.add_argument(
        "--train-samples", type=int, default=None, help="Training phrases (default: all 60,614)."
    )
    parser.add_argument("--validation-samples", type=int, default=2000)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--sentence-epochs", type=int, default=20)
    parser.add_argument("--context-epochs", type=int, default=8)
    parser.add_argument("--finetune-batch-size", type=int, default=32)
    parser.add_argument("--encode-batch-size", type=int, default=128)
    parser.add_argument("--out", default="outputs/bench_embedding_transfer")
    args = parser.parse_args()
    if args.quick:
        args.train_samples = args.train_samples or 4000
        args.validation_samples = min(args.validation_samples, 1000)
    out = Path(args.out)
    cache = out / "cache"
    if cache.exists():  # time the first encoding pass, not a leftover cache
        import shutil

        shutil.rmtree(cache)
    samples = {"validation": args.validation_samples} | (
        {"train": args.train_samples} if args.train_samples else {}
    )
    common = [f"data.max_samples={json.dumps(samples)}", "seed=42"]
    mp = (
        [f"train.mixed_precision={args.mixed_precision}"] if args.mixed_precision != "no" else []
    )  # YAML reads `no` as false
    embed = [
        *common,
        f"cache.dir={cache}",
        f"cache.encode_batch_size={args.encode_batch_size}",
        *mp,
    ]
    finetune = [*common, "train.epochs=1", "train.resume=false", f"train.batch_size={args.finetune_batch_size}",
                *mp, "train.eval_every_steps=null"]  # fmt: skip
    rows = [
        run_embed("text/minilm_sentence_sst2", [*embed, f"output_dir={out}/sentence", f"train.epochs={args.sentence_epochs}"], "sentence-level (MLP head)"),
        run_embed("text/minilm_sentence_sst2", [*embed, f"output_dir={out}/sentence2", f"train.epochs={args.sentence_epochs}"], "sentence-level, re-run (cache hit)"),
        run_embed("text/minilm_context_sst2", [*embed, f"output_dir={out}/context", f"train.epochs={args.context_epochs}"], "context-level (scalar mix + transformer)"),
        run_finetune("text/minilm_lora_sst2", [*finetune, f"output_dir={out}/lora"], "LoRA r=16, 1 epoch"),
        run_finetune("text/minilm_full_sst2", [*finetune, f"output_dir={out}/full"], "full fine-tune, 1 epoch"),
    ]  # fmt: skip
    ft_epoch = rows[-1]["epoch_seconds"]
    for row in rows:
        row["speedup_vs_finetune_epoch"] = (
            round(ft_epoch / row["epoch_seconds"], 1) if row["epochs"] else None
        )
        row["train_samples"] = args.train_samples or 60614
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    )
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    with open(HERE / "results" / "embedding_transfer.jsonl", "a") as fh:
        for row in rows:
            fh.write(json.dumps({**row, "machine": machine, "argv": sys.argv[1:]}) + "\n")
    n = rows[0]["train_samples"]
    lines = [
        f"# SST-2, all-MiniLM-L6-v2: embedding transfer vs fine-tuning ({n:,} training phrases)",
        "",
        f"Machine: {machine}, OMP_NUM_THREADS={threads}, mixed precision {args.mixed_precision}. "
        f"Command: `python benchmarks/embedding_transfer.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| method | test acc | val acc | features (one-time) | training | epochs | one epoch | speedup vs fine-tune epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        feats = (
            f"{r['feature_seconds']:.1f} s ({', '.join(r['feature_modes'])})" if r["feature_modes"] else "-"
        )
        lines.append(
            f"| {r['method']} | {100 * r['test_accuracy']:.2f} % | {100 * r['validation_accuracy']:.2f} % | {feats} | "
            f"{r['train_seconds']:.2f} s | {r['epochs']} | {r['epoch_seconds']:.3f} s | {r['speedup_vs_finetune_epoch']:,.0f}× |"
        )
    lines += [
        "",
        f"Test = GLUE SST-2 dev (872 sentences); validation = {args.validation_samples:,} phrases of the ALPS dev split "
        "(seeded subset). All rows ran in one process, on the same training phrases, one after the other.",
        '"one epoch": the median time of one pass over the training phrases (embedding rows: the head on cached '
        "features, evaluation excluded; fine-tune rows: the training steps of the finetune recipe's epoch, "
        'validation and checkpoint writing excluded). "features": the frozen-encoder pass over train + validation '
        "+ test (encoded) or reading it back from the on-disk cache (cache). The speedup divides the full fine-tune "
        "epoch by each row's epoch. LoRA and full fine-tune are rerun here for one epoch through `hftl run finetune` "
        "(configs `text/minilm_lora_sst2`, `text/minilm_full_sst2`); their full-data numbers on CPU are in "
        "[sst2_adapters.md](sst2_adapters.md). One seed each.",
        "The context-level epoch is compute, not data handling: its token-level transformer runs forward and "
        "backward over every token of every phrase each epoch; the sentence-level head is one MLP on pooled vectors.",
    ]
    (HERE / "results" / "embedding_transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
