"""``hftl assess``: forecast, before any training, which encoder and which source domain will transfer best.

For every candidate encoder x candidate source domain it extracts frozen pooled features (no gradients,
in batches) of the labelled source data and of the target data, computes the scores of
:mod:`hftl.adaptation.transferability`, ranks the candidates and prints a table with negative-transfer
warnings. The rule behind the ranking and the warnings is documented in ``docs/assess.md``.

Run:
    hftl assess --config assess/amazon_sources [assess.target_labeled=200 ...]

Python:
    >>> rows = score_candidate(f_s, y_s, f_s_val, y_s_val, f_t)          # doctest: +SKIP
    >>> rank(rows_of_all_candidates, rank_by="auto")                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from omegaconf import DictConfig

from hftl.adaptation import transferability as tr
from hftl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

RankBy = Literal["auto", "leep", "nce", "logme", "hscore", "pad", "mmd", "transfer_bound"]
HIGHER_IS_BETTER = {"leep": True, "nce": True, "logme": True, "hscore": True, "pad": False, "mmd": False,
                    "transfer_bound": False}  # fmt: skip
COLUMNS = ("logme", "hscore", "leep", "nce", "pad", "mmd", "source_val_acc", "transfer_bound", "label_shift")


@dataclass
class AssessConfig:
    """The ``assess:`` section of an assess config (every field can be overridden: ``assess.seed=1``)."""

    max_samples: int = field(
        default=1000, metadata={"help": "At most this many examples per domain and split (seeded subset)."}
    )
    target_split: str = field(
        default="train", metadata={"help": "Split of `target` whose inputs are scored."}
    )
    target_labeled: int = field(
        default=0,
        metadata={
            "help": "Labelled target examples (taken from `target_split`) for LEEP, NCE, and LogME/H-score "
            "on the target task; 0 = label-free (only source labels and domain distances are used)."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Examples per forward pass of the frozen encoder."})
    rank_by: RankBy = field(
        default="auto",
        metadata={"help": "Score that ranks the candidates; auto = leep with target labels, else pad."},
    )
    min_leep_gain: float = field(
        default=0.02,
        metadata={
            "help": "Warn when LEEP + H(y_target) (nats) is below this: the source predicts no target labels."
        },
    )
    max_label_shift: float = field(
        default=0.2,
        metadata={
            "help": "Warn when the total-variation distance of source and target class priors exceeds this."
        },
    )
    min_pad: float = field(
        default=0.2, metadata={"help": "Warn when the proxy A-distance is below this: nothing to adapt."}
    )
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "Where the encoders run; auto = cuda when available."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the subsets, the splits of PAD and the classifiers."}
    )
    output: str | None = field(default=None, metadata={"help": "JSON file for the ranked rows (optional)."})

    def __post_init__(self) -> None:
        problems = []
        if self.max_samples < 16:
            problems.append(f"`assess.max_samples` is {self.max_samples}; use at least 16.")
        if self.target_labeled < 0 or (0 < self.target_labeled < 10):
            problems.append(f"`assess.target_labeled` is {self.target_labeled}; use 0 (label-free) or >= 10.")
        if self.batch_size < 1:
            problems.append(f"`assess.batch_size` is {self.batch_size}; use a positive integer.")
        if problems:
            raise ConfigError(problems)


# --- scores of one candidate --------------------------------------------------------------------------


def source_classifier(features: np.ndarray, labels: np.ndarray, *, seed: int = 0):
    """Standardised features + L2 logistic regression (``C=1``): the source-only model the forecast scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    return clf.fit(features, labels)


def score_candidate(
    features_s: Any,
    labels_s: Any,
    features_s_val: Any,
    labels_s_val: Any,
    features_t: Any,
    *,
    features_t_labeled: Any | None = None,
    labels_t: Any | None = None,
    seed: int = 0,
    max_samples: int = 2000,
    mmd_samples: int = 500,
) -> dict[str, float | None]:
    """Every forecast score of one (encoder, source) pair from frozen features.

    ``logme``/``hscore`` score the target task when target labels are given, else the source task.
    ``transfer_bound`` = source validation error + PAD / 2, the two measurable terms of Ben-David et al.'s
    bound on the target error (lower is better). ``label_shift`` is the total-variation distance between
    the source class prior and the target prior (from the target labels, else estimated by BBSE).

    Args:
        features_s: ``(n_s, D)`` labelled source features; labels_s: ``(n_s,)`` ints in ``0..K-1``.
        features_s_val: held-out source features; labels_s_val: their labels.
        features_t: ``(n_t, D)`` unlabelled target features.
        features_t_labeled: optional labelled target features; labels_t: their labels.
        seed: seed of the classifier and PAD splits.
        max_samples: rows per domain used by PAD.
        mmd_samples: rows per domain used by MMD (its kernel matrix is ``2n x 2n``).

    Returns:
        A dict of the :data:`COLUMNS` (``None`` where labels do not allow the score).
    """
    labels_s, labels_s_val = np.asarray(labels_s), np.asarray(labels_s_val)
    clf = source_classifier(np.asarray(features_s), labels_s, seed=seed)
    k = int(max(labels_s.max(), labels_s_val.max())) + 1
    prior_s = np.bincount(labels_s, minlength=k) / len(labels_s)
    pad = tr.proxy_a_distance(features_s, features_t, seed=seed, max_samples=max_samples)
    row: dict[str, float | None] = dict.fromkeys(COLUMNS)
    row["source_val_acc"] = float(np.mean(clf.predict(features_s_val) == labels_s_val))
    row["pad"] = pad
    row["mmd"] = tr.mmd(features_s, features_t, seed=seed, max_samples=mmd_samples)
    row["transfer_bound"] = (1.0 - row["source_val_acc"]) + pad / 2.0
    if labels_t is not None:
        labels_t = np.asarray(labels_t)
        probs = _probs(clf, features_t_labeled, k)
        row["leep"], row["nce"] = tr.leep(probs, labels_t), tr.nce(probs.argmax(axis=1), labels_t)
        row["leep_gain"] = row["leep"] + tr.label_entropy(labels_t)
        row["logme"], row["hscore"] = (
            tr.logme(features_t_labeled, labels_t),
            tr.h_score(features_t_labeled, labels_t, shrinkage=True),
        )
        prior_t = np.bincount(labels_t, minlength=k) / len(labels_t)
    else:
        row["logme"], row["hscore"] = (
            tr.logme(features_s, labels_s),
            tr.h_score(features_s, labels_s, shrinkage=True),
        )
        prior_t = tr.estimate_target_prior(
            _probs(clf, features_s_val, k), labels_s_val, _probs(clf, features_t, k)
        )
    row["label_shift"] = float(0.5 * np.abs(prior_s - prior_t).sum())
    return row


def _probs(clf, features: Any, k: int) -> np.ndarray:
    """Class probabilities with one column per class ``0..k-1`` (a class absent from training gets 0)."""
    probs = np.zeros((len(features), k))
    probs[:, clf.classes_] = clf.predict_proba(features)
    return probs


def resolve_rank_by(rank_by: RankBy, *, labeled: bool) -> str:
    """``auto`` -> ``leep`` with target labels, else ``pad``; label-needing scores checked.

    ``pad`` beat ``transfer_bound`` as the label-free default on benchmarks/forecast_amazon.py (the source
    validation error in the bound is noise next to the domain distance); see docs/assess.md.
    """
    if rank_by == "auto":
        return "leep" if labeled else "pad"
    if rank_by in ("leep", "nce") and not labeled:
        raise ConfigError(
            f"`assess.rank_by` is {rank_by!r}, which needs target labels; set `assess.target_labeled` "
            "(e.g. 200) or rank by a label-free score: pad, mmd, transfer_bound, logme, hscore."
        )
    return rank_by


def rank(rows: list[dict[str, Any]], *, rank_by: str) -> list[dict[str, Any]]:
    """Sorts candidate rows best first by ``rank_by`` and numbers them (``rank`` 1 = best)."""
    sign = -1.0 if HIGHER_IS_BETTER[rank_by] else 1.0
    ordered = sorted(rows, key=lambda r: sign * r[rank_by])
    for i, r in enumerate(ordered, start=1):
        r["rank"] = i
    return ordered


def warnings_for(row: dict[str, Any], cfg: AssessConfig) -> list[str]:
    """The negative-transfer warnings of one candidate (the rule of docs/assess.md)."""
    out = []
    if row.get("leep_gain") is not None and row["leep_gain"] < cfg.min_leep_gain:
        out.append(
            f"no-signal: LEEP + H(y) = {row['leep_gain']:.3f} nats < {cfg.min_leep_gain}: the source classifier "
            "predicts the target labels no better than their prior; transfer from this source is unlikely to help"
        )
    if row["label_shift"] > cfg.max_label_shift:
        out.append(
            f"label-shift: class priors differ by {row['label_shift']:.2f} (TV) > {cfg.max_label_shift}; "
            "aligning feature marginals (DANN, CDAN, DAN, CORAL) can hurt under label shift (Zhao et al. 2019)"
        )
    if row["pad"] < cfg.min_pad:
        out.append(
            f"aligned: PAD {row['pad']:.2f} < {cfg.min_pad}: a linear classifier cannot tell the domains "
            "apart; domain adaptation has little to gain over source-only training"
        )
    return out


# --- the driver ---------------------------------------------------------------------------------------


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def extract_features(encoder: Any, dataset: Any, *, batch_size: int, device: str) -> np.ndarray:
    """Frozen pooled features ``(N, out_features)`` of ``dataset`` (no gradients, eval mode, in order)."""
    import torch

    from hftl.training.builders import build_loader

    loader = build_loader(
        dataset, collate_fn=encoder.collator(train=False), batch_size=batch_size, shuffle=False
    )
    encoder.eval().to(device)
    chunks = []
    with torch.inference_mode():
        for batch in loader:
            batch.pop("labels", None)
            chunks.append(encoder(**{k: v.to(device) for k, v in batch.items()}).pooled.float().cpu())
    return torch.cat(chunks).numpy().astype(np.float64)


def _subset(ds: Any, n: int, seed: int) -> Any:
    return ds.shuffle(seed=seed).select(range(n)) if len(ds) > n else ds


def load_domains(cfg: DictConfig, ac: AssessConfig, *, allow_any: bool) -> dict[str, Any]:
    """Loads the data: ``{"sources": {name: (train, validation)}, "target": ds, "target_labeled": ds | None}``.

    The target split is shuffled (seeded); its first ``target_labeled`` rows form the labelled sample and
    the rest, with the label column removed, the unlabelled target.
    """
    from hftl.config import instantiate

    target_data = instantiate(cfg.target, allow_any=allow_any)
    splits = target_data.load()
    if ac.target_split not in splits:
        raise ConfigError(
            f"`assess.target_split` is {ac.target_split!r}; the target has splits {sorted(splits)}."
        )
    target = splits[ac.target_split].shuffle(seed=ac.seed)
    labeled = None
    if ac.target_labeled:
        if "label" not in target.column_names:
            raise ConfigError(
                f"`assess.target_labeled` is {ac.target_labeled} but target split {ac.target_split!r} has no "
                "labels; set it to 0 (label-free) or give labelled target data."
            )
        if ac.target_labeled >= len(target):
            raise DataError(
                f"`assess.target_labeled` = {ac.target_labeled} leaves no unlabelled rows of the {len(target)} "
                f"in target split {ac.target_split!r}; lower it."
            )
        labeled = target.select(range(ac.target_labeled))
        target = target.select(range(ac.target_labeled, len(target)))
    target = _subset(
        target.remove_columns([c for c in ("label",) if c in target.column_names]), ac.max_samples, ac.seed
    )
    sources = {}
    for name, node in cfg.sources.items():
        data = instantiate(node, allow_any=allow_any)
        s = data.load()
        if "train" not in s or "validation" not in s:
            raise ConfigError(f"`sources.{name}` needs train and validation splits; found {sorted(s)}.")
        if ac.target_labeled and s.label_names != splits.label_names:
            raise ConfigError(
                f"`sources.{name}` labels {s.label_names} differ from the target's {splits.label_names}; "
                "set `label_names` on both to the same list."
            )
        sources[str(name)] = (
            _subset(s["train"], ac.max_samples, ac.seed),
            _subset(s["validation"], ac.max_samples, ac.seed),
        )
    return {"sources": sources, "target": target, "target_labeled": labeled}


def _score_encoder(
    encoder: Any, name: str, domains: dict[str, Any], ac: AssessConfig, device: str
) -> list[dict]:
    """The score rows of one encoder against every source (features extracted once per data set)."""
    feats = partial(extract_features, encoder, batch_size=ac.batch_size, device=device)
    f_t, lab = feats(domains["target"]), domains["target_labeled"]
    f_tl, y_t = (feats(lab), np.asarray(lab["label"])) if lab is not None else (None, None)
    rows = []
    for src_name, (train, val) in domains["sources"].items():
        scores = score_candidate(
            feats(train), np.asarray(train["label"]), feats(val), np.asarray(val["label"]), f_t,
            features_t_labeled=f_tl, labels_t=y_t, seed=ac.seed, max_samples=ac.max_samples,
        )  # fmt: skip
        rows.append({"encoder": name, "source": src_name, **scores})
        logger.info("assessed %s x %s: %s", name, src_name, scores)
    return rows


def assess(cfg: DictConfig, *, allow_any: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """Scores every encoder x source of an assess config.

    Returns:
        The score that ranked them and the candidate rows, best first, each with its ``warnings``.
    """
    from hftl.config import instantiate, to_dataclass

    ac = to_dataclass(AssessConfig, cfg.get("assess"), key="assess")
    rank_by = resolve_rank_by(ac.rank_by, labeled=ac.target_labeled > 0)
    domains = load_domains(cfg, ac, allow_any=allow_any)
    device, rows = _device(ac.device), []
    for enc_name, node in cfg.encoders.items():
        encoder = instantiate(node, allow_any=allow_any)
        rows += _score_encoder(encoder, str(enc_name), domains, ac, device)
        del encoder  # one encoder in memory at a time
    ranked = rank(rows, rank_by=rank_by)
    for r in ranked:
        r["warnings"] = warnings_for(r, ac)
    if ac.output:
        Path(ac.output).parent.mkdir(parents=True, exist_ok=True)
        Path(ac.output).write_text(
            json.dumps({"rank_by": rank_by, "config": asdict(ac), "rows": ranked}, indent=2)
        )
    return rank_by, ranked


def format_table(rows: list[dict[str, Any]], *, rank_by: str) -> str:
    """The ranked table, then the warnings; a closing line when every candidate is warned about."""
    header = f"{'#':>2} {'encoder':<16}{'source':<14}" + "".join(f"{c:>15}" for c in COLUMNS)
    lines = [
        f"Transferability forecast (ranked by {rank_by}, {'higher' if HIGHER_IS_BETTER[rank_by] else 'lower'} is better)",
        header,
    ]
    for r in rows:
        cells = "".join(f"{'-' if r[c] is None else format(r[c], '.4g'):>15}" for c in COLUMNS)
        lines.append(f"{r['rank']:>2} {r['encoder'][:15]:<16}{r['source'][:13]:<14}{cells}")
    for r in rows:
        lines += [f"WARNING ({r['encoder']}, {r['source']}): {w}" for w in r["warnings"]]
    if rows and all(r["warnings"] for r in rows):
        lines.append(
            "WARNING: every candidate carries a negative-transfer warning: adaptation is unlikely to help."
        )
    return "\n".join(lines)


def check_config(config: str, overrides: list[str], *, allow_any: bool = False) -> DictConfig:
    """Loads an assess config and reports every problem at once (also used by ``hftl validate``)."""
    from hftl.config import load_config, resolve_config_path, validate_config

    cfg = load_config(config, overrides)
    validate_config(
        cfg, sections={"assess": AssessConfig}, required=("encoders", "sources", "target"),
        top_level=("recipe", "assess", "encoders", "sources", "target"),
        allow_any=allow_any, source=str(resolve_config_path(config)),
    )  # fmt: skip
    for key in ("encoders", "sources"):
        if not isinstance(cfg[key], DictConfig) or not len(cfg[key]):
            raise ConfigError(
                f"`{key}` must map names to `_component_` nodes, e.g. `{key}: {{name: {{...}}}}`."
            )
    return cfg


def main(config: str, overrides: list[str], *, allow_any: bool = False) -> int:
    """Loads and checks an assess config, scores, prints the table (the ``hftl assess`` command)."""
    cfg = check_config(config, overrides, allow_any=allow_any)
    rank_by, rows = assess(cfg, allow_any=allow_any)
    print(format_table(rows, rank_by=rank_by))
    return 0
