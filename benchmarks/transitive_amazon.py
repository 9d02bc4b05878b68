"""Transitive transfer through an intermediate domain vs direct adaptation, on Amazon reviews.

Chains ``S->I->T`` (e.g. ``E->D->B``: electronics -> dvd -> books) on the pairs where direct transfer is
weakest (Ganin et al. 2016, Table 1: E->B, K->B, B->E, B->K). Per chain and seed:

- ``NN``: no adaptation, source only (S -> T);
- ``DANN``: direct DANN S -> T;
- ``T-DANN``: stage 1 DANN S -> I (I unlabelled), then stage 2 DANN starting from the stage-1 weights, with
  the source plus intermediate examples pseudo-labelled by the stage-1 model (confidence >= ``--threshold``,
  class-balanced: :func:`hftl.adaptation.transitive.select_pseudo_labels`) -> T;
- ``T-DANN-nopl``: the same without pseudo-labels (stage 2 = DANN S -> T from the stage-1 weights).

``bow`` suite (default, CPU minutes): the shallow DANN of Ganin et al. on their 5000-d BoW files
(``amazon_mds_dann_svmlight``), with the authors' protocol reused from ``ganin_dann_amazon.py`` (model, data
split, SGD, λ = 0.1, early stopping on 10 % source validation; every stage keeps it). Target labels are
never used; intermediate labels only to report the pseudo-labels' accuracy. ``minilm`` suite (GPU):
``hftl run adapt`` with all-MiniLM-L6-v2 + LoRA on the raw reviews (configs
``text/minilm_transitive_*``), whose report carries source-only, direct DANN and transitive DANN.

Run (from the repo root, data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/transitive_amazon.py --quick --workers 6 --batch-size 50   # CPU: E->D->B, K->D->B, 3 seeds
    python benchmarks/transitive_amazon.py --workers 16             # all 6 chains x 3 seeds x 4 methods
    python benchmarks/transitive_amazon.py --suite minilm --extra train.mixed_precision=bf16   # GPU

Writes benchmarks/results/transitive_amazon[_minilm].md and one JSON line per run in the .jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmark's loaders and model

from ganin_dann_amazon import (  # noqa: E402
    DOMAINS,
    PAPER_DANN,
    PairData,
    ShallowNet,
    accuracy,
    data_root,
    load_domain,
    mean_std,
    train_epoch,
)

from hftl.adaptation.transitive import select_pseudo_labels  # noqa: E402
from hftl.errors import ConfigError  # noqa: E402
from hftl.losses import DomainAdversarialLoss  # noqa: E402

CHAINS = ["E->D->B", "K->D->B", "B->D->E", "B->D->K", "B->K->E", "B->E->K"]
METHODS = ["NN", "DANN", "T-DANN", "T-DANN-nopl"]
QUICK = {"chains": ["E->D->B", "K->D->B"], "methods": ["DANN", "T-DANN"]}
MINILM_CONFIGS = {"E->D->B": "text/minilm_transitive_electronics_dvd_books", "K->D->B": "text/minilm_transitive_kitchen_dvd_books"}  # fmt: skip


@dataclass
class ChainData:
    """The authors' split of S and T plus the unlabelled intermediate training file."""

    source_to_target: PairData
    xi: torch.Tensor  # (2000, 5000) {I}_train, unlabelled for training
    yi: torch.Tensor  # its labels: only to report the pseudo-labels' accuracy


def load_chain(root: Path, chain: str) -> ChainData:
    s, i, t = (DOMAINS[k] for k in chain.split("->"))
    xs, ys = load_domain(root, s, "train")
    xi, yi = load_domain(root, i, "train")
    xt, _ = load_domain(root, t, "train")  # target labels are never read
    xtest, ytest = load_domain(root, t, "test")
    n_valid = int(0.1 * len(ys))  # the last 10 % of the source = validation, as experiments_amazon.py
    pair = PairData(xs[:-n_valid], ys[:-n_valid], xs[-n_valid:], ys[-n_valid:], xt, xtest, ytest)
    return ChainData(pair, xi, yi)


def fit(data: PairData, *, lam: float, args: argparse.Namespace, seed: int, init: dict | None = None):
    """``ganin_dann_amazon.fit`` (same SGD, λ and early stopping) that can start from ``init`` weights.

    Returns:
        ``(model, stats)``: the best-validation model and its target test accuracy, epochs, time.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ShallowNet(data.xs.shape[1])
    if init is not None:
        model.load_state_dict(init)
    dann, params = None, list(model.parameters())
    if lam > 0:
        regressor = torch.nn.Linear(model.hidden.out_features, 1)  # a fresh domain regressor per stage
        torch.nn.init.zeros_(regressor.weight), torch.nn.init.zeros_(regressor.bias)
        dann = DomainAdversarialLoss(regressor)
        params += list(dann.parameters())
    optimizer = torch.optim.SGD(params, lr=args.lr * args.batch_size)  # mean loss over B = per-example sum
    best_err, best_epoch, continue_until, best = 2.0, -1, 30, None
    start = time.perf_counter()
    for epoch in range(args.max_epochs):
        train_epoch(model, dann, optimizer, data, lam=lam, batch_size=args.batch_size, generator=generator)
        err = 1.0 - accuracy(model, data.xv, data.yv)
        if err <= best_err:
            best_err, best_epoch = err, epoch
            best = {k: v.clone() for k, v in model.state_dict().items()}
            continue_until = max(continue_until, int(1.5 * epoch))
        elif epoch > continue_until:
            break
    model.load_state_dict(best)
    return model, {
        "test_acc": 100 * accuracy(model, data.xtest, data.ytest),
        "valid_acc": 100 * (1.0 - best_err),
        "best_epoch": best_epoch,
        "epochs": epoch + 1,
        "seconds": round(time.perf_counter() - start, 1),
    }


def pseudo_labelled_source(chain: ChainData, model: ShallowNet, args, seed: int) -> tuple[PairData, dict]:
    """Source + confidently pseudo-labelled intermediate examples (shuffled once: the epochs run in order)."""
    pair = chain.source_to_target
    with torch.no_grad():
        probs = model(chain.xi).softmax(-1).numpy()
    rows, labels = select_pseudo_labels(probs, threshold=args.threshold, balance=not args.no_balance)
    rows_t, labels_t = torch.from_numpy(rows), torch.from_numpy(labels).long()
    xs, ys = torch.cat([pair.xs, chain.xi[rows_t]]), torch.cat([pair.ys, labels_t])
    order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(seed))
    stats = {
        "pseudo_n": int(len(rows)),
        "pseudo_acc": 100 * float((labels_t == chain.yi[rows_t]).float().mean())
        if len(rows)
        else float("nan"),
    }
    return PairData(xs[order], ys[order], pair.xv, pair.yv, pair.xt, pair.xtest, pair.ytest), stats


def run_job(job: tuple[str, int, list[str], argparse.Namespace]) -> list[dict]:
    """Every method of one (chain, seed); the transitive methods share stage 1."""
    chain_name, seed, methods, args = job
    torch.set_num_threads(1)
    chain = load_chain(data_root(), chain_name)
    s, i, t = chain_name.split("->")
    base = {
        "chain": chain_name,
        "pair": f"{s}->{t}",
        "seed": seed,
        "lam": args.lam,
        "threshold": args.threshold,
    }
    rows = []
    for method in [m for m in ("NN", "DANN") if m in methods]:
        _, stats = fit(
            chain.source_to_target, lam=args.lam if method == "DANN" else 0.0, args=args, seed=seed
        )
        rows.append({**base, "method": method, **stats})
    if any(m.startswith("T-") for m in methods):
        pair = chain.source_to_target
        to_intermediate = PairData(pair.xs, pair.ys, pair.xv, pair.yv, chain.xi, pair.xtest, pair.ytest)
        model1, stage1 = fit(to_intermediate, lam=args.lam, args=args, seed=seed)
        init = {k: v.clone() for k, v in model1.state_dict().items()}
        stage1 = {"stage1_test_acc": stage1["test_acc"], "stage1_seconds": stage1["seconds"]}
        for method in [m for m in ("T-DANN", "T-DANN-nopl") if m in methods]:
            data, extra = (
                (pair, {}) if method.endswith("nopl") else pseudo_labelled_source(chain, model1, args, seed)
            )
            _, stats = fit(data, lam=args.lam, args=args, seed=seed, init=init)
            rows.append({**base, "method": method, **stats, **stage1, **extra})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def write_table(rows: list[dict], path: Path, command: str, args: argparse.Namespace) -> str:
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["chain"], r["method"]), []).append(r)
    chains = [c for c in CHAINS if any((c, m) in by for m in METHODS)]
    methods = [m for m in METHODS if any((c, m) in by for c in chains)]

    def cell(chain: str, method: str, key: str = "test_acc") -> str:
        return mean_std([r[key] for r in by.get((chain, method), [])])

    lines = [
        "# Transitive transfer through an intermediate domain vs direct (Amazon reviews, 5000-d BoW, shallow DANN)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"1 thread per run; seeds {args.seeds}; λ {args.lam}, lr {args.lr}/example, batch {args.batch_size}, "
        f"≤ {args.max_epochs} epochs per stage; pseudo-label threshold {args.threshold}"
        f"{'' if args.no_balance else ', class-balanced'}.  ",
        "Target test accuracy (%), mean ± std over seeds; each stage keeps the epoch with the best 10 % "
        "source-validation error (Ganin et al.'s protocol); no target labels. `stage 1 on T`: the S→I model "
        "scored on T. Δ = T-DANN − DANN. Pseudo-labels: intermediate examples added to stage 2 (accuracy "
        "measured with the intermediate labels, which training never reads).",
        "",
        "| chain | paper DANN S→T | "
        + " | ".join(methods)
        + " | stage 1 on T | Δ | pseudo-labels (n, acc) |",
        "|---" * (len(methods) + 5) + "|",
    ]
    deltas = []
    for c in chains:
        s, _, t = c.split("->")
        t_rows = by.get((c, "T-DANN"), []) or by.get((c, "T-DANN-nopl"), [])
        direct = {r["seed"]: r["test_acc"] for r in by.get((c, "DANN"), [])}
        paired = [r["test_acc"] - direct[r["seed"]] for r in by.get((c, "T-DANN"), []) if r["seed"] in direct]
        deltas += paired
        pseudo = [r for r in by.get((c, "T-DANN"), []) if "pseudo_n" in r]
        pl = f"{statistics.mean(r['pseudo_n'] for r in pseudo):.0f}, {mean_std([r['pseudo_acc'] for r in pseudo])}" if pseudo else "–"  # fmt: skip
        lines.append(
            f"| {c} | {PAPER_DANN[f'{s}->{t}']:.1f} | " + " | ".join(cell(c, m) for m in methods)
            + f" | {mean_std([r['stage1_test_acc'] for r in t_rows])} | {mean_std(paired)} | {pl} |"
        )  # fmt: skip
    if deltas:
        wins = sum(d > 0 for d in deltas)
        lines += ["", f"T-DANN − DANN over all {len(deltas)} (chain, seed) runs: {mean_std(deltas)} points; "
                  f"better in {wins} of {len(deltas)}."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def run_bow(args: argparse.Namespace, out: Path, command: str) -> None:
    jsonl = out.with_suffix(".jsonl")
    rows = (
        [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
        if args.resume and jsonl.exists()
        else []
    )
    if not args.resume:
        jsonl.write_text("")
    done = {(r["chain"], r["seed"], r["method"]) for r in rows}
    jobs = []
    for chain in args.chains:
        for seed in args.seeds:
            todo = [m for m in args.methods if (chain, seed, m) not in done]
            if todo:
                jobs.append((chain, seed, todo, args))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for new in pool.map(run_job, jobs):
            rows += new
            with open(jsonl, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in new)
            write_table(rows, out.with_suffix(".md"), command, args)
    print(write_table(rows, out.with_suffix(".md"), command, args))


def run_minilm(args: argparse.Namespace, out: Path, command: str) -> None:
    """One ``hftl run adapt`` per chain; its metrics hold source-only, direct and transitive DANN."""
    out = out.with_name(out.name + "_minilm")
    lines = [
        "# Transitive transfer vs direct with all-MiniLM-L6-v2 + LoRA (DANN, raw Amazon reviews)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.platform()}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; seed 0.  ",
        "Target test accuracy (%), checkpoints chosen by information maximization (no target labels).",
        "",
        "| chain | source only | DANN S→T | stage 1 (S→I) on T | transitive DANN | target oracle | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for chain in [c for c in args.chains if c in MINILM_CONFIGS]:
        run_dir = HERE.parent / "outputs" / "transitive_amazon" / chain.replace("->", "")
        cmd = [
            "hftl",
            "run",
            "adapt",
            "--config",
            MINILM_CONFIGS[chain],
            f"output_dir={run_dir}",
            *args.extra,
        ]
        print(" ".join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        res = json.loads((run_dir / "metrics.json").read_text())["results"]
        with open(out.with_suffix(".jsonl"), "a") as fh:
            fh.write(json.dumps({"chain": chain, "command": " ".join(cmd), "results": res}) + "\n")

        acc = {k: f"{100 * v['target_test_acc']:.1f}" for k, v in res.items()}
        lines.append(
            f"| {chain} | "
            + " | ".join(
                acc.get(k, "–")
                for k in ("source_only", "dann", "dann_stage1", "dann_transitive", "target_oracle")
            )
            + f" | {(time.perf_counter() - start) / 60:.0f} min |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parse_chain(text: str) -> str:
    chain = "->".join(c for c in text.upper() if c.isalpha())
    if (
        chain.count("->") != 2
        or len(set(chain.split("->"))) != 3
        or not set(chain.split("->")) <= set(DOMAINS)
    ):
        raise argparse.ArgumentTypeError(
            f"unknown chain {text!r}; three different letters of B, D, E, K, e.g. EDB"
        )
    return chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["bow", "minilm"], default="bow")
    parser.add_argument(
        "--chains", nargs="+", type=parse_chain, default=CHAINS, help="'E->D->B' (quoted) or EDB"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--quick", action="store_true", help=f"CPU subset: {QUICK}")
    parser.add_argument("--threshold", type=float, default=0.9, help="pseudo-label confidence")
    parser.add_argument("--no-balance", action="store_true", help="do not class-balance the pseudo-labels")
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3, help="per-example SGD learning rate")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="parallel (chain, seed) jobs, one thread each")
    parser.add_argument("--resume", action="store_true", help="keep the runs in the .jsonl, run the rest")
    parser.add_argument("--extra", nargs="*", default=[], help="minilm: overrides for every hftl run")
    parser.add_argument("--out", default=str(HERE / "results" / "transitive_amazon"))
    args = parser.parse_args()
    if args.quick:
        args.chains, args.methods = QUICK["chains"], QUICK["methods"]
    if not 0 <= args.threshold < 1 or args.workers < 1:
        raise ConfigError(
            f"need 0 <= --threshold < 1 and --workers >= 1; got {args.threshold}, {args.workers}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/transitive_amazon.py " + " ".join(a for a in sys.argv[1:] if a != "--resume")
    (run_bow if args.suite == "bow" else run_minilm)(args, out, command)


if __name__ == "__main__":
    main()
