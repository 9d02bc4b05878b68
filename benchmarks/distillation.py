"""SST-2 distillation: LoRA MiniLM-L6 teacher → cut-down MiniLM students, accuracy kept and speedup.

Run (from the repo root, data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/distillation.py --quick           # CPU subset (~10-20 min on 2 busy cores): 2k train phrases
    python benchmarks/distillation.py                   # full: 60,614 phrases (meant for a GPU)
    python benchmarks/distillation.py --teacher outputs/minilm_lora_sst2   # reuse a trained teacher

Steps: (1) the teacher, ``hftl run finetune --config text/minilm_lora_sst2`` (skipped with ``--teacher``);
(2) one ``hftl run distill --config text/minilm_distill_sst2`` per student layer set (default ``0,5``: a
2-layer student from the teacher's first and last layer, KD T=2, α=0.5, teacher logits cached). Test =
GLUE SST-2 dev (872 sentences). Speed = median forward time of one batch of test sentences, same batch,
same machine, against the teacher with its LoRA weights merged (its fastest form) and as ``hftl.load``
runs it (LoRA unmerged). Writes benchmarks/results/distillation.md and appends to distillation.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from hftl.data.builtin import shared_data_dir

HERE = Path(__file__).resolve().parent
QUICK = {"train": 2000, "validation": 300}


def hftl_run(recipe: str, config: str, out: Path, overrides: list[str]) -> float:
    """Runs one recipe to completion; returns its wall seconds."""
    cmd = ["hftl", "run", recipe, "--config", config, f"output_dir={out}", "train.resume=false", *overrides]
    print("$", " ".join(cmd), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as fh:
        code = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    if code != 0:
        raise SystemExit(f"{recipe} {config} failed (exit {code}); see {out.with_suffix('.log')}")
    return time.perf_counter() - start


def unlabeled_node(rows: int) -> list[str]:
    """The ``unlabeled:`` override: ``rows`` seeded SST-2 train phrases, labels dropped (target-domain KD)."""
    if not rows:
        return []
    node = (
        "{_component_: hftl.data.ClassificationData, path: csv, input_column: sentence, validation_size: 0, "
        f"data_files: {{train: '{shared_data_dir() / 'sst2_agnews_alps/SST-2/train.tsv'}'}}, "
        f"max_samples: {{train: {rows}}}, seed: 7}}"
    )
    return [f"unlabeled={node}"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"CPU subset: {QUICK} examples, 1 student epoch.")
    p.add_argument(
        "--teacher", help="A trained teacher (hftl model dir); default: train text/minilm_lora_sst2."
    )
    p.add_argument("--students", nargs="+", default=["0,5"], help="Student layer sets, e.g. 0,5 0 0,2,5.")
    p.add_argument("--epochs", type=int, default=None, help="Student epochs (default 3, quick 1).")
    p.add_argument("--batch-size", type=int, default=None, help="Student batch size (default 64, quick 32).")
    p.add_argument("--lr", type=float, default=None, help="Student learning rate (default 1e-4; quick 2e-4).")
    p.add_argument(
        "--unlabeled", type=int, default=0,
        help="Also distil on this many SST-2 train phrases with their labels dropped (soft loss only).",
    )  # fmt: skip
    p.add_argument("--speed-batch", type=int, default=64, help="Sentences in the timed batch.")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--out", default="outputs/bench_distill")
    p.add_argument("--table-from", help="Write the table from the rows of this .jsonl (no training).")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.table_from:  # rebuild the table from earlier runs' rows (e.g. one student per command)
        rows = [json.loads(line) for line in Path(args.table_from).read_text().splitlines() if line.strip()]
        write_table([r for r in rows if r["quick"] == args.quick], args)
        return
    out = Path(args.out) / ("quick" if args.quick else "full")
    subset = (
        [f"data.max_samples={{train: {QUICK['train']}, validation: {QUICK['validation']}}}"]
        if args.quick
        else []
    )
    # (YAML reads a bare `no` as false: the config's default precision is `no` already)
    common = [
        *([f"train.mixed_precision={args.mixed_precision}"] if args.mixed_precision != "no" else []),
        *subset,
    ]
    teacher, teacher_s = args.teacher, None
    if teacher is None:
        teacher = str(out / "teacher")
        extra = ["train.eval_every_steps=100"] if args.quick else []
        teacher_s = hftl_run("finetune", "text/minilm_lora_sst2", Path(teacher), [*common, *extra])
    epochs = args.epochs or (1 if args.quick else 3)
    bs = args.batch_size or (32 if args.quick else 64)
    lr = args.lr or (2e-4 if args.quick else 1e-4)
    rows = []
    for layers in args.students:
        run_dir = out / f"student_{layers.replace(',', '_')}"
        seconds = hftl_run("distill", "text/minilm_distill_sst2", run_dir, [
            *common, f"teacher.path={teacher}", "~teacher.finetune_config", f"distill.student_layers=[{layers}]",
            f"train.epochs={epochs}", f"train.batch_size={bs}", f"optimizer.lr={lr}",
            f"distill.speed_batch_size={args.speed_batch}", "train.eval_every_steps=" + ("100" if args.quick else "500"),
            *unlabeled_node(args.unlabeled),
        ])  # fmt: skip
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.append({
            "student_layers": layers, "quick": args.quick, "teacher": teacher,
            "teacher_test_accuracy": m["teacher"]["test"]["accuracy"], "test_accuracy": m["test"]["accuracy"],
            "accuracy_retained": m["accuracy_retained"], "speed": m["speed"], "parameters": m["parameters"],
            "student_seconds": round(seconds, 1), "teacher_seconds": round(teacher_s, 1) if teacher_s else None,
            "steps": m["steps"], "unlabeled": args.unlabeled, "command": " ".join(sys.argv),
        })  # fmt: skip
        with open(HERE / "results" / "distillation.jsonl", "a") as fh:
            fh.write(json.dumps(rows[-1]) + "\n")
    write_table(rows, args)


def write_table(rows: list[dict], args: argparse.Namespace) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {device}"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    r0 = rows[0]
    lines = [
        "# SST-2 distillation: LoRA MiniLM-L6 teacher → MiniLM students (test = GLUE dev, 872 sentences)",
        "",
        f"Machine: {machine} (OMP_NUM_THREADS={threads}). Command: `python benchmarks/distillation.py "
        f"{' '.join(sys.argv[1:])}`".rstrip(),
        "",
        ("**Quick CPU subset**: teacher and students trained on 2,000 of the 60,614 training phrases "
         "(validation 300); numbers are far below the full run's." if args.quick else
         "Full run: all 60,614 training phrases.")
        + " Unlabelled: extra SST-2 train phrases the student distils on with their labels dropped (teacher "
          "soft labels only).",
        "",
        "| model | layers | unlabelled | parameters | test acc | % of teacher | ms / batch of "
        f"{r0['speed']['batch_size']} ({r0['speed']['device']}) | speedup vs merged teacher | vs teacher as loaded (LoRA) | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| teacher (LoRA r=16, merged for timing) | 6 | – | {r0['parameters']['teacher']:,} | "
        f"{100 * r0['teacher_test_accuracy']:.2f} % | 100 % | {r0['speed']['teacher_merged_ms']:.2f} "
        f"(as loaded {r0['speed']['teacher_ms']:.2f}) | 1.00× | – | "
        + (f"{r0['teacher_seconds'] / 60:.1f} min |" if r0["teacher_seconds"] else "given |"),
    ]  # fmt: skip
    for r in rows:
        s = r["speed"]
        lines.append(
            f"| student (KD, init from teacher layers {r['student_layers']}) | {len(r['student_layers'].split(','))} | "
            f"{r.get('unlabeled', 0):,} | {r['parameters']['student']:,} | {100 * r['test_accuracy']:.2f} % | {100 * r['accuracy_retained']:.1f} % | "
            f"{s['student_ms']:.2f} | {s['speedup']:.2f}× | {s['speedup_vs_loaded_teacher']:.2f}× | "
            f"{r['student_seconds'] / 60:.1f} min ({r['steps']} steps) |"
        )
    lines += ["", "Goal (issue #5): student ≥ 3× faster than the teacher, keeping ≥ 97 % of its accuracy."]
    commands = sorted({r["command"] for r in rows})
    if len(commands) > 1:  # a table merged from several runs (--table-from)
        lines += ["", "Rows from these commands (teacher timings: the first row's run):",
                  *(f"- `python {c}`" for c in commands)]  # fmt: skip
    name = "distillation_quick.md" if args.quick else "distillation.md"
    (HERE / "results" / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
