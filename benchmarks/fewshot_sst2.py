"""Few-shot SST-2 with all-MiniLM-L6-v2: SetFit-style metric transfer vs plain fine-tuning vs frozen probe.

Run (from the repo root, data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/fewshot_sst2.py                  # 8 and 64 per class, 5 seeds, 872 test sentences
    python benchmarks/fewshot_sst2.py --quick          # CPU subset: 8/class, 2 seeds, 200 test, 5 rounds
    python benchmarks/fewshot_sst2.py --extra train.mixed_precision=bf16    # on a GPU

For every (shots per class K, seed) the script draws K labelled sentences per class from the SST-2 train
split (seeded; only rows with at least ``--min-words`` words, because GLUE's train split is mostly
phrases while SetFit's SST-2 holds sentences), writes them to a tsv, and runs three methods on exactly
those examples, each through its recipe:

* ``setfit``: ``hftl run fewshot --config text/minilm_setfit_sst2`` (cosine pair loss, 20 rounds of pairs,
  full fine-tuning of the encoder, then a logistic-regression head);
* ``triplet`` (with ``--methods ... triplet``): the same with ``hftl.losses.TripletLoss`` (cosine distance);
* ``finetune``: ``hftl run finetune --config text/minilm_full_sst2`` on the K-shot tsv (cross-entropy,
  linear head, no validation split: the final weights are scored);
* ``probe``: ``hftl run fewshot`` with ``fewshot.num_iterations=0`` and a frozen encoder (logistic
  regression on the pretrained embeddings).

Test = GLUE SST-2 dev (872 sentences, ``test.tsv`` of sst2_agnews_alps), or a seeded subset with
``--test-size``. Writes benchmarks/results/fewshot_sst2.md (mean ± std per method and K) and one JSON line
per run to benchmarks/results/fewshot_sst2.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hftl.data import ClassificationData, sample_per_class
from hftl.data.builtin import shared_data_dir

HERE = Path(__file__).resolve().parent
SETFIT = ["hftl", "run", "fewshot", "--config", "text/minilm_setfit_sst2"]
METHODS = {
    "setfit": [*SETFIT, "fewshot.shots_per_class=null"],
    "triplet": [
        *SETFIT, "fewshot.shots_per_class=null", "loss._component_=hftl.losses.TripletLoss",
        "loss.distance=cosine", "loss.margin=0.25",
    ],
    "finetune": [
        "hftl", "run", "finetune", "--config", "text/minilm_full_sst2", "~data.data_files.validation",
        "data.validation_size=0", "~data.max_samples",
    ],
    "probe": [
        *SETFIT, "fewshot.shots_per_class=null", "fewshot.num_iterations=0",
        "adapter._component_=hftl.adapters.Frozen",
    ],
}  # fmt: skip


def write_shots(pool: dict, shots: int, seed: int, path: Path) -> Path:
    """Writes ``shots`` sentences per class of ``pool`` (seeded pick) as a tsv laid out like SST-2's own."""
    idx = sample_per_class(pool["label"], shots, seed=seed, num_classes=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel", *(f"{pool['text'][i]}\t{int(pool['label'][i])}" for i in idx)]
    path.write_text("\n".join(lines) + "\n")
    return path


def finetune_budget(args: argparse.Namespace) -> list[str]:
    """Plain fine-tuning: ``--finetune-epochs`` passes over the 2K examples, batch 8, no checkpoints mid-run."""
    return [
        f"train.epochs={args.finetune_epochs}", "train.batch_size=8", f"optimizer.lr={args.finetune_lr}",
        "train.lr_scheduler=linear", "train.warmup_ratio=0.1", "train.eval_every_steps=100000",
    ]  # fmt: skip


def run(method: str, shots: int, seed: int, train_file: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [*METHODS[method], f"output_dir={out}", f"seed={seed}", "train.resume=false"]
    cmd += [f"data.data_files.train={train_file}"]
    if method in ("setfit", "triplet"):
        cmd += [f"fewshot.num_iterations={args.num_iterations}"]
    if args.test_size:
        cmd += [f"data.max_samples={{test: {args.test_size}}}"]
    if method == "finetune":
        cmd += finetune_budget(args)
    cmd += args.extra
    print("$", " ".join(cmd), flush=True)
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{method} K={shots} seed={seed} failed (exit {code}); see {log}")
    metrics = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # resumable state: not needed, 3x the model size
    return {
        "method": method,
        "shots_per_class": shots,
        "seed": seed,
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["macro_f1"],
        "test_samples": metrics["test"]["num_samples"],
        "steps": metrics["steps"],
        "wall_seconds": round(seconds, 1),
        "command": " ".join(cmd),
    }


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    )
    test = (
        f"{args.test_size} seeded GLUE-dev sentences" if args.test_size else "GLUE SST-2 dev, 872 sentences"
    )
    lines = [
        "# Few-shot SST-2, all-MiniLM-L6-v2",
        "",
        f"Machine: {machine}. Command: `python benchmarks/fewshot_sst2.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Test: {test}. Seeds: {args.seeds}. Rounds of pairs (setfit/triplet): {args.num_iterations}; "
        f"plain fine-tuning: {args.finetune_epochs} epochs, batch 8, lr {args.finetune_lr}. Few-shot pool: SST-2 train rows with >= {args.min_words} words. "
        "Cells: test accuracy, mean ± std over seeds (%); macro-F1 and wall time per run below.",
        "",
        "| method | " + " | ".join(f"K = {k} / class" for k in args.shots) + " |",
        "|---|" + "---|" * len(args.shots),
    ]
    for method in args.methods:
        cells = []
        for k in args.shots:
            accs = [r["test_accuracy"] for r in rows if r["method"] == method and r["shots_per_class"] == k]
            cells.append(mean_std(accs) if accs else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | K | seed | test acc | test macro-F1 | steps | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['shots_per_class']} | {r['seed']} | {100 * r['test_accuracy']:.2f} % | "
            f"{100 * r['test_macro_f1']:.2f} % | {r['steps']} | {r['wall_seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 64], help="Labelled examples per class.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--methods", nargs="+", default=["setfit", "finetune", "probe"], choices=list(METHODS)
    )
    parser.add_argument("--test-size", type=int, default=None, help="Seeded test subset (default: all 872).")
    parser.add_argument(
        "--min-words", type=int, default=8, help="Few-shot pool: train rows with this many words."
    )
    parser.add_argument(
        "--num-iterations", type=int, default=20, help="SetFit rounds of pairs (setfit, triplet)."
    )
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CPU subset: 8 per class, seeds 0 1, 200 test sentences, 5 rounds of pairs.",
    )
    parser.add_argument("--out", default="outputs/bench_fewshot_sst2")
    parser.add_argument("--extra", nargs="*", default=[], help="Overrides passed to every run.")
    args = parser.parse_args()
    if args.quick:
        # 5 rounds: 160 pairs = 320 texts per pass, the same as plain fine-tuning's 20 epochs x 16 examples
        args.shots, args.seeds, args.test_size, args.num_iterations = [8], [0, 1], args.test_size or 200, 5

    data = ClassificationData(
        path=str(shared_data_dir() / "sst2_agnews_alps" / "SST-2" / "train.tsv"), input_column="sentence",
        validation_size=0,
    ).load()["train"]  # fmt: skip
    texts, labels = data["text"], np.asarray(data["label"])
    keep = [i for i, t in enumerate(texts) if len(t.split()) >= args.min_words]
    pool = {"text": [texts[i] for i in keep], "label": labels[keep]}
    print(
        f"Few-shot pool: {len(keep):,} of {len(texts):,} train rows with >= {args.min_words} words",
        flush=True,
    )

    out, rows = Path(args.out), []
    for shots in args.shots:
        for seed in args.seeds:
            train_file = write_shots(pool, shots, seed, out / "data" / f"k{shots}_seed{seed}.tsv")
            for method in args.methods:
                row = run(method, shots, seed, train_file, out / f"{method}_k{shots}_seed{seed}", args)
                rows.append(row)
                with open(HERE / "results" / "fewshot_sst2.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    text = table(rows, args)
    (HERE / "results" / "fewshot_sst2.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
