"""Forecast quality of ``hftl assess`` on the 12 Amazon pairs: does the forecast rank the sources right?

For each target domain (books, dvd, electronics, kitchen) the three other domains are candidate sources.
Every forecast score of :func:`hftl.assess.score_candidate` ranks them; the benchmark reports the Spearman
correlation between that ranking and the *measured* transfer accuracy, per target (3 sources), its mean
over the 4 targets, and pooled over the 12 pairs (which also compares pairs of different targets).

Two feature sets:

* ``bow`` - Ganin et al.'s 5000-d bag-of-words files (``amazon_mds_dann_svmlight``). Source = ``{S}_train``
  (first 1800 rows; last 200 = source validation), unlabelled target = ``{T}_train``; the labelled target
  sample for LEEP/NCE/LogME = the first ``--target-labeled`` rows of ``{T}_train``. Measured: the NN
  (source-only) and DANN target-test accuracies of ``benchmarks/results/ganin_dann_amazon.jsonl`` (mean of 3
  seeds, the real reproduction), and a logistic regression trained on the source, scored on ``{T}_test``.
* ``minilm`` - mean-pooled all-MiniLM-L6-v2 embeddings (128 tokens) of the raw reviews
  (``amazon_mds_raw_bertaad``, cached under ``--cache``). Each target domain is split in half (seeded):
  one half is the unlabelled target (the labelled sample comes from it), the other the test half.
  Measured: a logistic regression trained on all 2000 source reviews, accuracy on the target test half.

The labelled target sample is always disjoint from the examples the measured accuracy is computed on.

Run:
    python benchmarks/forecast_amazon.py                    # both feature sets (MiniLM: ~5 min on 1 CPU thread)
    python benchmarks/forecast_amazon.py --features bow     # BoW only (~2 min)

Writes benchmarks/results/forecast_amazon.md and .jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from hftl.assess import COLUMNS, HIGHER_IS_BETTER, score_candidate, source_classifier

HERE = Path(__file__).resolve().parent
DOMAINS = {"B": "books", "D": "dvd", "E": "electronics", "K": "kitchen"}
SCORES = ("leep", "nce", "logme", "hscore", "pad", "mmd", "transfer_bound", "source_val_acc")
USES = {
    "leep": "source + target sample",
    "nce": "source + target sample",
    "logme": "target sample only",
    "hscore": "target sample only",
}  # fmt: skip  (the others: source labels, no target labels)


def data_dir() -> Path:
    return Path(os.environ.get("HFTL_DATA_DIR") or HERE.parents[1] / "shared" / "data")


# --- feature sets -------------------------------------------------------------------------------------


def bow_domains(n_labeled: int) -> dict[str, dict[str, np.ndarray]]:
    """Ganin's BoW files: per domain, source train/val, unlabelled target, labelled sample, test."""
    from sklearn.datasets import load_svmlight_file

    out = {}
    for key, name in DOMAINS.items():
        parts = {}
        for split in ("train", "test"):
            x, y = load_svmlight_file(
                str(data_dir() / "amazon_mds_dann_svmlight" / f"{name}_{split}.svmlight"), n_features=5000
            )
            parts[split] = (x.toarray(), (y > 0).astype(np.int64))
        (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
        out[key] = {"xs": xtr[:-200], "ys": ytr[:-200],
                    "xv": xtr[-200:], "yv": ytr[-200:], "xt": xtr, "xl": xtr[:n_labeled], "yl": ytr[:n_labeled],
                    "xtest": xte, "ytest": yte}  # fmt: skip
    return out


def minilm_features(
    cache: Path, *, batch_size: int, max_length: int, per_domain: int | None, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean-pooled MiniLM embeddings of the labelled reviews (a seeded subset of ``per_domain``), cached."""
    import torch

    from hftl.assess import extract_features
    from hftl.data.blitzer import read_blitzer_domain
    from hftl.encoders import TextEncoder

    cache.mkdir(parents=True, exist_ok=True)
    out, encoder = {}, None
    for key, name in DOMAINS.items():
        ds = read_blitzer_domain(data_dir() / "amazon_mds_raw_bertaad" / name)
        rows = np.arange(len(ds))
        if per_domain and per_domain < len(ds):
            rows = np.sort(np.random.default_rng(seed).permutation(len(ds))[:per_domain])
        full = cache / f"minilm_{name}_{max_length}.npz"  # every review of the domain, in file order
        path = full if len(rows) == len(ds) else cache / f"minilm_{name}_{max_length}_{len(rows)}_{seed}.npz"
        if full.is_file():
            data = np.load(full)
            out[key] = (data["x"][rows], data["y"][rows])
            continue
        if not path.is_file():
            encoder = encoder or TextEncoder(
                "sentence-transformers/all-MiniLM-L6-v2", pooling="mean", max_length=max_length
            )
            start = time.perf_counter()
            device = "cuda" if torch.cuda.is_available() else "cpu"
            x = extract_features(encoder, ds.select(rows), batch_size=batch_size, device=device)
            print(f"embedded {len(rows)} {name} reviews in {time.perf_counter() - start:.0f} s", flush=True)
            np.savez(path, x=x, y=np.asarray(ds["label"])[rows])
        data = np.load(path)
        out[key] = (data["x"], data["y"])
    return out


def minilm_domains(feats: dict, n_labeled: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for key, (x, y) in feats.items():
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y))
        n_val = len(y) // 10
        src_val = order[-n_val:]  # as a source: 90 % train / 10 % validation
        half, rest = order[: len(y) // 2], order[len(y) // 2 :]  # as a target: unlabelled half / test half
        out[key] = {"xs": x[order[:-n_val]], "ys": y[order[:-n_val]], "xv": x[src_val], "yv": y[src_val],
                    "xt": x[half], "xl": x[half[:n_labeled]], "yl": y[half[:n_labeled]],
                    "xtest": x[rest], "ytest": y[rest]}  # fmt: skip
    return out


# --- scoring ------------------------------------------------------------------------------------------


def ganin_accuracies() -> dict[tuple[str, str], float]:
    """Mean target-test accuracy (%) per (pair, method) of the Ganin reproduction."""
    rows = [
        json.loads(line)
        for line in (HERE / "results" / "ganin_dann_amazon.jsonl").read_text().splitlines()
        if line
    ]
    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        acc.setdefault((r["pair"], r["method"]), []).append(r["test_acc"])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def score_pairs(domains: dict, *, seed: int, max_samples: int) -> list[dict]:
    rows = []
    for t in DOMAINS:
        for s in DOMAINS:
            if s == t:
                continue
            src, tgt = domains[s], domains[t]
            start = time.perf_counter()
            row = score_candidate(
                src["xs"], src["ys"], src["xv"], src["yv"], tgt["xt"],
                features_t_labeled=tgt["xl"], labels_t=tgt["yl"], seed=seed, max_samples=max_samples,
            )  # fmt: skip
            clf = source_classifier(src["xs"], src["ys"], seed=seed)
            row["lr_acc"] = 100 * float(np.mean(clf.predict(tgt["xtest"]) == tgt["ytest"]))
            row.update(pair=f"{s}->{t}", source=s, target=t, seconds=round(time.perf_counter() - start, 1))
            print(json.dumps({k: v for k, v in row.items() if k in ("pair", "lr_acc", *COLUMNS)}), flush=True)
            rows.append(row)
    return rows


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def spearman_summary(rows: list[dict], measured: str) -> dict[str, dict[str, float]]:
    """Per score: Spearman per target, their mean, and pooled over all pairs (sign: higher = better forecast)."""
    out = {}
    for score in SCORES:
        sign = 1.0 if HIGHER_IS_BETTER.get(score, True) else -1.0
        per_target: dict[str, float] = {}
        for t in DOMAINS:
            sub = [r for r in rows if r["target"] == t and r.get(score) is not None]
            forecast = [sign * r[score] for r in sub]
            constant = len(set(forecast)) == 1  # logme/hscore of the target sample: the same for every source
            per_target[t] = (
                math.nan if constant else float(spearmanr(forecast, [r[measured] for r in sub]).statistic)
            )
        pooled = [r for r in rows if r.get(score) is not None]
        out[score] = {**per_target, "mean": _nanmean(list(per_target.values())),
                      "pooled": float(spearmanr([sign * r[score] for r in pooled], [r[measured] for r in pooled]).statistic)}  # fmt: skip
    return out


def _fmt(rho: float) -> str:
    return "n/a" if np.isnan(rho) else f"{rho:+.2f}"  # n/a: the score is the same for every source


def table(rows: list[dict], measures: list[str], title: str) -> list[str]:
    lines = [f"### {title}", "", "| pair | " + " | ".join(measures) + " | " + " | ".join(SCORES) + " |",
             "|---" * (1 + len(measures) + len(SCORES)) + "|"]  # fmt: skip
    for r in rows:
        cells = [f"{r[m]:.1f}" for m in measures] + [f"{r[s]:.4g}" for s in SCORES]
        lines.append(f"| {r['pair']} | " + " | ".join(cells) + " |")
    for m in measures:
        summary = spearman_summary(rows, m)
        lines += ["", f"Spearman correlation of each forecast score with **{m}** (per target over its 3 sources; "
                  "mean over the 4 targets; pooled over the 12 pairs):", "",
                  "| score | labels used | B | D | E | K | mean (4 targets) | pooled (12 pairs) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for score, s in summary.items():
            used = USES.get(score, "no target labels")
            lines.append(
                f"| {score} | {used} | " + " | ".join(_fmt(s[k]) for k in (*DOMAINS, "mean", "pooled")) + " |"
            )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", default=["bow", "minilm"], choices=["bow", "minilm"])
    parser.add_argument(
        "--target-labeled", type=int, default=200, help="Labelled target rows for LEEP/NCE/LogME."
    )
    parser.add_argument("--max-samples", type=int, default=2000, help="Rows per domain for PAD and MMD.")
    parser.add_argument("--batch-size", type=int, default=64, help="MiniLM embedding batch size.")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--per-domain",
        type=int,
        default=None,
        help="MiniLM: embed a seeded subset of this many reviews per domain.",
    )
    parser.add_argument(
        "--cache", default="/tmp/hftl_forecast_cache", help="Where MiniLM embeddings are cached."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "forecast_amazon"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    command = "python benchmarks/forecast_amazon.py " + " ".join(sys.argv[1:])
    lines = ["# Transferability forecast on the 12 Amazon pairs (`hftl assess` scores)", "",
             f"Command: `{command.strip()}`  ", f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {args.threads} thread(s); seed {args.seed}; labelled target sample "
             f"{args.target_labeled}; PAD/MMD on ≤ {args.max_samples} rows per domain.  ",
             "Sign convention: PAD, MMD and transfer_bound are negated (lower distance = better forecast) before "
             "correlating; a Spearman of +1 means the forecast orders the three sources exactly like the measured "
             "accuracy. With 3 sources per target the per-target Spearman takes only the values ±1 and ±0.5.", ""]  # fmt: skip
    jsonl = []
    if "bow" in args.features:
        rows = score_pairs(bow_domains(args.target_labeled), seed=args.seed, max_samples=args.max_samples)
        for r in rows:
            ganin = ganin_accuracies()
            r["ganin_nn_acc"], r["ganin_dann_acc"] = ganin[(r["pair"], "NN")], ganin[(r["pair"], "DANN")]
        lines += table(
            rows, ["ganin_nn_acc", "ganin_dann_acc", "lr_acc"], "Ganin BoW features (5000-d counts)"
        )
        jsonl += [{"features": "bow", **r} for r in rows]
    if "minilm" in args.features:
        feats = minilm_features(
            Path(args.cache), batch_size=args.batch_size, max_length=args.max_length,
            per_domain=args.per_domain, seed=args.seed,
        )  # fmt: skip
        rows = score_pairs(
            minilm_domains(feats, args.target_labeled, args.seed),
            seed=args.seed,
            max_samples=args.max_samples,
        )
        lines += table(rows, ["lr_acc"], "all-MiniLM-L6-v2 mean-pooled embeddings (384-d, 128 tokens)")
        jsonl += [{"features": "minilm", **r} for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
