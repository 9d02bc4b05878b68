"""FSDD few-shot on held-out speakers: MAML / Reptile initializations vs plain pretraining.

Run (from the repo root; data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/fewshot_fsdd.py                       # full: 5-way 1- and 5-shot, meant for a GPU (not timed yet)
    python benchmarks/fewshot_fsdd.py --quick               # CPU subset: fewer steps, episodes and queries
    python benchmarks/fewshot_fsdd.py --shots 5 --algorithms fomaml   # one cell (rows merge into the table)

Protocol (the configs `audio/fsdd_maml` and `audio/fsdd_reptile`): the small speech CNN-transformer
is trained from scratch on episodes from four speakers (george, jackson, lucas, yweweler); test
episodes come from the two others (nicolas, theo), never seen in training. Classes are the digits,
5 of 10 per episode. Every method starts each test episode from its trained encoder and a zero 5-way
head, takes the same `eval_inner_steps` SGD steps on the support set and is scored on the query set;
all methods see the same test episodes (paired). `fomaml` / `reptile` are meta-trained per shot count;
`pretrain` (supervised 10-way training on the four speakers, the same number of optimizer steps) and
`scratch` (random init) are trained once and scored at every shot count.

Writes benchmarks/results/fewshot_fsdd[_quick].md (table, command, machine) and one JSON line per
(shot, algorithm) in the .jsonl next to it; rows of an earlier run of the same mode are kept unless
re-measured, so the cells can be run as separate commands (e.g. under a 10-minute limit per command).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {"fomaml": "audio/fsdd_maml", "reptile": "audio/fsdd_reptile", "pretrain": "audio/fsdd_maml",
           "scratch": "audio/fsdd_maml"}  # fmt: skip
ALGORITHMS = ["fomaml", "reptile", "pretrain", "scratch"]


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}"


def overrides(args: argparse.Namespace, shot: int) -> list[str]:
    return [
        f"output_dir={args.output_dir}", f"episodes.k_shot={shot}", f"episodes.q_queries={args.q_queries}",
        f"episodes.test_episodes={args.test_episodes}", f"episodes.num_workers={args.num_workers}",
        f"meta.outer_steps={args.outer_steps}", f"meta.meta_batch_size={args.meta_batch_size}",
        f"meta.pretrain_batch_size={args.pretrain_batch_size}",
        f"meta.log_every={max(1, args.outer_steps // 10)}", "meta.baselines=[]", f"seed={args.seed}",
    ] + ([f"meta.mixed_precision={args.mixed_precision}"] if args.mixed_precision != "no" else [])  # fmt: skip


def recipe_for(algorithm: str, args: argparse.Namespace, shot: int):
    from hftl.recipes.meta import MetaRecipe

    from hftl.recipe import load_and_validate

    extra = [f"meta.algorithm={algorithm}"]
    cfg = load_and_validate(MetaRecipe, CONFIGS[algorithm], overrides(args, shot) + extra, allow_any=False)
    recipe = MetaRecipe(cfg)
    recipe.setup()
    return recipe


def measure(algorithm: str, args: argparse.Namespace) -> list[dict]:
    """Trains ``algorithm`` (once, or once per shot for the meta-learners) and scores every shot."""
    rows = []
    if algorithm in ("fomaml", "reptile"):  # meta-trained for the shot count it is scored at
        plan = [(shot, [shot]) for shot in args.shots]
    else:  # shot-independent training, scored at every shot count
        plan = [(args.shots[0], args.shots)]
    for train_shot, eval_shots in plan:
        recipe = recipe_for(algorithm, args, train_shot)
        model, record = recipe.train(algorithm)
        for shot in eval_shots:
            recipe.ep = dataclasses.replace(recipe.ep, k_shot=shot)
            score = recipe.score(model)
            row = {"shot": shot, "algorithm": algorithm, **score, "train_seconds": record["train_seconds"],
                   "outer_steps": args.outer_steps, "meta_batch_size": args.meta_batch_size,
                   "q_queries": args.q_queries, "eval_inner_steps": recipe.meta.eval_inner_steps,
                   "inner_lr": recipe.meta.inner_lr, "mixed_precision": args.mixed_precision,
                   "last_train_log": record["history"][-1] if record["history"] else None}  # fmt: skip
            print(
                f"== {shot}-shot {algorithm}: {100 * row['query_acc']:.2f} ± {100 * row['ci95']:.2f} %",
                flush=True,
            )
            rows.append(row)
    return rows


def write_table(rows: list[dict], path: Path, command: str, args: argparse.Namespace) -> None:
    shots = sorted({r["shot"] for r in rows})
    by = {(r["shot"], r["algorithm"]): r for r in rows}
    lines = [
        "# FSDD few-shot on held-out speakers (5-way)",
        "",
        "Query accuracy (%) mean ± 95 % CI over the test episodes; meta-train speakers george, jackson,",
        "lucas, yweweler; test speakers nicolas, theo (unseen). Every method: zero 5-way head, "
        f"{rows[0]['eval_inner_steps']} SGD steps (lr {rows[0]['inner_lr']}) on the support set, then the query set.",
        "",
        "| method | " + " | ".join(f"{s}-shot" for s in shots) + " | train time (s) |",
        "|---|" + "---|" * len(shots) + "---|",
    ]
    names = {"fomaml": "FOMAML init", "reptile": "Reptile init", "pretrain": "plain pretraining",
             "scratch": "random init (no training)"}  # fmt: skip
    for algo in ALGORITHMS:
        cells = [by.get((s, algo)) for s in shots]
        if not any(cells):
            continue
        acc = [f"{100 * c['query_acc']:.1f} ± {100 * c['ci95']:.1f}" if c else "-" for c in cells]
        secs = " / ".join(f"{c['train_seconds']:.0f}" for c in cells if c)
        lines.append(f"| {names[algo]} | " + " | ".join(acc) + f" | {secs} |")
    r0 = rows[0]
    lines += [
        "",
        f"Budget: {r0['outer_steps']} outer steps × {r0['meta_batch_size']} episodes (meta-learners, per shot), "
        f"{r0['outer_steps']} steps of plain pretraining; {r0['q_queries']} queries per class; "
        f"{r0['episodes']} test episodes; mixed precision {r0['mixed_precision']}. Train time: wall seconds "
        "(per shot count for the meta-learners); on a shared machine they include other jobs' load.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU subset (see --help defaults below)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=ALGORITHMS)
    p.add_argument("--outer-steps", type=int, help="default 2000 (quick 100)")
    p.add_argument("--meta-batch-size", type=int, help="default 4 (quick 2)")
    p.add_argument("--pretrain-batch-size", type=int, default=64)
    p.add_argument("--q-queries", type=int, help="default 15 (quick 5)")
    p.add_argument("--test-episodes", type=int, help="default 600 (quick 100)")
    p.add_argument("--num-workers", type=int, help="episode-collating workers; default 8 with a GPU, else 0")
    p.add_argument("--mixed-precision", choices=["no", "bf16"], help="default bf16 with a GPU, else no")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="outputs/fewshot_fsdd")
    args = p.parse_args()
    import datasets
    import torch

    datasets.disable_progress_bars()
    gpu = torch.cuda.is_available()
    for name, full, quick in (("outer_steps", 2000, 100), ("meta_batch_size", 4, 2), ("q_queries", 15, 5),
                              ("test_episodes", 600, 100)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.num_workers = (8 if gpu else 0) if args.num_workers is None else args.num_workers
    args.mixed_precision = args.mixed_precision or ("bf16" if gpu else "no")
    stem = "fewshot_fsdd_quick" if args.quick else "fewshot_fsdd"
    jsonl = HERE / "results" / f"{stem}.jsonl"
    kept = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    start, new = time.perf_counter(), []
    for algorithm in args.algorithms:
        new += measure(algorithm, args)
    fresh = {(r["shot"], r["algorithm"]) for r in new}
    rows = [r for r in kept if (r["shot"], r["algorithm"]) not in fresh] + new
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    command = "python benchmarks/fewshot_fsdd.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_table(rows, HERE / "results" / f"{stem}.md", command.strip(), args)
    print(f"Wrote {HERE / 'results' / stem}.md ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
