"""What `data.streaming: true` buys on a large csv: time to the first step, peak memory, datasets cache.

Run:
    python benchmarks/streaming.py --quick      # CPU: 200,000 rows (~80 MB), 50 steps, 2 runs per mode (~6-8 min)
    python benchmarks/streaming.py              # 1,000,000 rows (~410 MB), 200 steps; on a GPU bf16

Builds one csv of real text (`id,text,label`): Blitzer Amazon reviews (books, dvd, electronics, kitchen;
8,000 labelled reviews) interleaved with SST-2 train phrases (60,614), repeated with a running row id until
`--rows` rows. Then trains `hftl run finetune` on it for `--steps` optimizer steps (a tiny random BERT by
default: the data pipeline is what is measured) in three modes: train split in memory
(`data.streaming=false`: datasets converts the csv to an Arrow cache, the recipe checks every row, carves a
stratified validation split and tokenizes every row into a second cached Arrow file), the same without the
up-front tokenization (`encoder.pretokenize=false`: the collator tokenizes each batch), and streamed
(`data.streaming=true`: rows read as training consumes them through a `--shuffle-buffer` rows buffer; the
first `--validation-size` rows are the validation split). All validate once, at the end, on
`--validation-size` rows, and save only their final checkpoint.

Each run is a fresh process with an empty `HF_DATASETS_CACHE` (no run reuses another's Arrow files; a
later in-memory run on the same file would reuse its cache and start faster, see the note in the table).
Measured from outside the process: time from launch to the run summary ("Running training": data,
model and loaders ready), to the first and the last optimizer step (the recipe's progress bar, printed
at every step), total wall time, peak RSS of the process (`os.wait4` rusage; memory-mapped Arrow pages
that were touched count), and the bytes left in its datasets cache folder. Writes
benchmarks/results/streaming.md and streaming.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
from pathlib import Path

from recipe_watch import REPO, dir_bytes, machine, model_path, read_sst2, run_recipe

RESULTS = REPO / "benchmarks" / "results"
BLITZER = ("books", "dvd", "electronics", "kitchen")
# mode -> overrides; "in-memory-raw" skips the up-front tokenization, to show what it costs on its own
MODES = {
    "in-memory": ["data.streaming=false"],
    "in-memory-raw": ["data.streaming=false", "encoder.pretokenize=false"],
    "streamed": ["data.streaming=true"],
}


def build_csv(path: Path, rows: int) -> dict:
    """Writes ``rows`` rows (id, text, label) alternating Blitzer reviews and SST-2 phrases; reused if present."""
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text())["rows"] == rows:
        return json.loads(meta_path.read_text())
    from hftl.data.blitzer import read_blitzer_domain
    from hftl.data.builtin import shared_data_dir

    root = shared_data_dir() / "amazon_mds_raw_bertaad"
    reviews = []
    for domain in BLITZER:
        ds = read_blitzer_domain(root / domain).shuffle(seed=0)  # negatives come first in the files
        reviews += [(" ".join(t.split()), int(y)) for t, y in zip(ds["text"], ds["label"], strict=True)]
    phrases = read_sst2("train.tsv", None)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for i in range(rows):
            text, label = reviews[(i // 2) % len(reviews)] if i % 2 == 0 else phrases[(i // 2) % len(phrases)]
            writer.writerow([i, text, label])
    meta = {"rows": rows, "bytes": path.stat().st_size, "reviews": len(reviews), "phrases": len(phrases)}
    meta_path.write_text(json.dumps(meta))
    return meta


def write_config(path: Path, args: argparse.Namespace, model: str, data: Path) -> Path:
    import yaml

    cfg = {
        "recipe": "finetune",
        "seed": 42,
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": model, "max_length": args.max_length},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.1},
        "data": {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": {"train": str(data)},
                 "input_column": "text", "label_column": "label", "label_names": ["negative", "positive"],
                 "validation_size": args.validation_size, "shuffle_buffer": args.shuffle_buffer},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 5e-4},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "mixed_precision": args.precision,
                  "eval_every_steps": args.steps, "save_every_steps": 10**9, "keep_last": 1,
                  "log_every_steps": 10, "resume": False},
    }  # fmt: skip
    path.write_text(
        f"# Run: hftl run finetune --config {path} data.streaming=true|false\n" + yaml.safe_dump(cfg)
    )
    return path


def run_mode(mode: str, repeat: int, config: Path, workdir: Path, extra: list[str]) -> dict:
    """One fresh process of ``mode``; its timings, peak RSS, datasets cache bytes and validation accuracy."""
    tag = f"{mode}-{repeat}"
    out, cache = workdir / "runs" / tag, workdir / "runs" / f"{tag}.hf_datasets"
    for folder in (out, cache):
        shutil.rmtree(folder, ignore_errors=True)
    overrides = [f"output_dir={out}", *MODES[mode], *extra]
    print(f"{tag}: hftl run finetune --config {config} {' '.join(overrides)}", flush=True)
    run = run_recipe(config, overrides, log_path=workdir / f"{tag}.log", hf_cache=cache, poll_s=0.05)
    metrics = json.loads((out / "metrics.json").read_text())
    row = {
        "mode": mode, "repeat": repeat, "wall_s": run.wall_s, "summary_s": run.summary_s,
        "first_step_s": run.first_step_s, "last_step_s": run.last_step_s, "steps": run.step,
        "train_s": (run.last_step_s or 0) - (run.first_step_s or 0), "peak_rss_mib": run.maxrss_mib,
        "cache_bytes": dir_bytes(cache), "validation_accuracy": metrics["validation"]["accuracy"],
        "validation_rows": metrics["validation"].get("num_samples"),
    }  # fmt: skip
    shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return row


def summarize(rows: list[dict]) -> dict[str, dict]:
    keys = ("summary_s", "first_step_s", "train_s", "wall_s", "peak_rss_mib", "cache_bytes")
    return {
        mode: {k: statistics.median(r[k] for r in rows if r["mode"] == mode) for k in keys} for mode in MODES
    }


def write_report(summary: dict, meta: dict, args: argparse.Namespace, command: str) -> Path:
    mem, raw, st = summary["in-memory"], summary["in-memory-raw"], summary["streamed"]
    mib = 2**20

    def ratio(key: str, base: dict) -> str:
        return f"{st[key] / base[key]:.3f}" if base[key] else "—"

    fields = [
        ("launch → run summary (data + model ready), s", "summary_s", "{:.1f}"),
        ("launch → first optimizer step, s", "first_step_s", "{:.1f}"),
        (f"steps 2..{args.steps}, s", "train_s", "{:.1f}"),
        ("total wall time, s", "wall_s", "{:.1f}"),
        ("peak RSS of the process, MiB", "peak_rss_mib", "{:.0f}"),
        ("datasets cache written, MiB", "cache_bytes", "{:.1f}"),
    ]
    lines = [
        "# Streaming vs in-memory train data (`data.streaming`)", "",
        f"Command: `{command}`  ", f"Machine: {machine()}  ",
        f"Data: one csv of {meta['rows']:,} rows, {meta['bytes'] / mib:.0f} MiB (Blitzer reviews of 4 domains "
        f"interleaved with SST-2 train phrases, repeated with a row id). `hftl run finetune`, model "
        f"{args.model}, {args.steps} optimizer steps of batch {args.batch_size}, max length {args.max_length}, "
        f"validation {args.validation_size:,} rows (in memory: stratified from the whole file; streamed: the "
        f"stream's first rows), shuffle buffer {args.shuffle_buffer:,}, precision `{args.precision}`; each run a "
        f"fresh process with an empty `HF_DATASETS_CACHE`; median of {args.repeats} run(s) per mode"
        f"{' (extra overrides: `' + ' '.join(args.extra) + '`)' if args.extra else ''}.", "",
        "| | in-memory (`data.streaming=false`, default `encoder.pretokenize=true`) | in-memory, "
        "`encoder.pretokenize=false` | streamed (`data.streaming=true`) | streamed / in-memory | "
        "streamed / in-memory without pre-tokenizing |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for label, key, fmt in fields:
        scale = mib if key == "cache_bytes" else 1
        cells = " | ".join(fmt.format(m[key] / scale) for m in (mem, raw, st))
        lines.append(f"| {label} | {cells} | {ratio(key, mem)} | {ratio(key, raw)} |")
    lines += [
        "",
        "Before its first step the in-memory run parses the csv into an Arrow cache, checks every row, "
        "carves the stratified validation split, counts words for length-grouped batches and (by default, "
        "`encoder.pretokenize=true`) tokenizes every row into a second cached Arrow file, which later runs on "
        "the same file reuse; without pre-tokenizing, the collator tokenizes each batch, as the streamed run "
        "does. The streamed run reads its validation rows and fills its shuffle buffer, then reads, "
        "tokenizes and shuffles rows as training consumes them: its set-up does not grow with the file, its "
        "steps cost what tokenizing a batch costs on top.",
        "",
        "Per run: `streaming.jsonl`.",
    ]
    path = RESULTS / "streaming.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU size: 200,000 rows, 50 steps.")
    p.add_argument("--rows", type=int, default=None, help="csv rows (default 1,000,000; quick 200,000)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 200; quick 50)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--model", default="tiny", help="tiny | minilm | a model folder")
    p.add_argument("--validation-size", type=int, default=2000)
    p.add_argument("--shuffle-buffer", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=2, help="runs per mode (alternating order)")
    p.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="auto")
    p.add_argument(
        "--extra", nargs="*", default=[], help="overrides passed to every run, e.g. encoder.pretokenize=false"
    )
    p.add_argument(
        "--workdir", default="/tmp/hftl_streaming", help="csv, runs and caches go here (never the repo)"
    )
    args = p.parse_args(argv)
    args.rows = args.rows or (200_000 if args.quick else 1_000_000)
    args.steps = args.steps or (50 if args.quick else 200)
    import torch

    if args.precision == "auto":
        args.precision = "bf16" if torch.cuda.is_available() else "no"
    workdir = Path(args.workdir)
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    data = workdir / f"rows_{args.rows}.csv"
    meta = build_csv(data, args.rows)
    print(f"{data}: {meta['rows']:,} rows, {meta['bytes'] / 2**20:.0f} MiB", flush=True)
    config = write_config(workdir / "config.yaml", args, model_path(args.model, workdir), data)
    command = "python benchmarks/streaming.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    rows = []
    for repeat in range(args.repeats):
        order = list(MODES) if repeat % 2 == 0 else list(MODES)[::-1]
        rows += [run_mode(mode, repeat, config, workdir, args.extra) for mode in order]
    summary = summarize(rows)
    with (RESULTS / "streaming.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"summary": summary, "data": meta, "args": vars(args), "command": command,
                            "machine": machine()}) + "\n")  # fmt: skip
    print(f"Table written to {write_report(summary, meta, args, command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
