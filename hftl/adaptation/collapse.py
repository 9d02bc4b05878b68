"""The collapse guard: notice, without target labels, that an adaptation run has collapsed, and stop it.

Adversarial adaptation with too strong a transfer term (Blitzer books → kitchen, DANN at
``trade_off: 1.0``: 54.6 %) does not diverge: the loss stays finite while the classifier puts every
target example in one class, or the shared features forget the source task. The guard reads what each
evaluation of the adapt recipe already computes (:func:`hftl.adaptation.scoring.score_checkpoint`) and
calls an evaluation *collapsed* when either

* **the target predictions collapsed onto one class**: the largest predicted class takes at least
  ``collapse_share`` of the room its source prior leaves, ``(share - prior) / (1 - prior)``, *and* the
  entropy of the mean target prediction is at most ``collapse_entropy`` of the source prior's entropy
  (both, so an untrained model whose argmax happens to favour one class while its soft predictions
  are still near uniform does not count); or
* **the source task was lost**: source-validation accuracy fell by at least ``collapse_source_drop``
  of its best earlier value's margin above the majority-class rate, once that best value was at least
  halfway from the majority-class rate to 100 % (the task had been learnt: early, near-chance
  evaluations fluctuate without meaning anything).

Both are relative to the source data (class prior, chance rate), so the same thresholds hold for 2 and
10 classes and for imbalanced priors. The discriminator's accuracy (``train_domain_acc`` of adversarial
methods) is reported beside them: near 0.5 with collapsed predictions, the features carry neither
domain nor class information.

A collapsed evaluation never becomes the selected checkpoint (:data:`hftl.training.engine.SELECTABLE`);
after ``collapse_stop_after`` collapsed evaluations in a row the run stops
(:data:`hftl.training.engine.STOP_TRAINING`) and the Engine restores its best pre-collapse weights.
The guard keeps no state of its own: it reads the run's history, so a resumed run decides the same.

Example:
    >>> import numpy as np
    >>> labels = np.array([0, 1] * 50)  # balanced source validation labels
    >>> collapsed = np.tile([0.97, 0.03], (100, 1))  # every target row confidently in class 0
    >>> s = prediction_signals(collapsed, labels)
    >>> s["target_top_share"], round(s["target_entropy_ratio"], 2)
    (1.0, 0.19)
    >>> guard = CollapseGuard(share=0.8, entropy=0.5, source_drop=0.5, stop_after=2)
    >>> print(*guard.reasons({**s, "source_val_acc": 0.9}, history=[]))
    100% of target predictions are class 0 (source share 50%); entropy of the mean target prediction is 0.19 of the source prior's
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import entr

from hftl.training.engine import SELECTABLE, STOP_TRAINING

# Keys of prediction_signals(); score_checkpoint adds them to every evaluation (history: "eval_" + key).
SIGNALS = (
    "target_top_class",
    "target_top_share",
    "target_top_prior",
    "target_entropy_ratio",
    "source_chance",
)


def prediction_signals(probs_t: Any, labels_s_val: Any) -> dict[str, float]:
    """The target prediction histogram, relative to the source prior.

    Args:
        probs_t: softmax outputs on the unlabelled target rows, shape ``(N_t, C)``.
        labels_s_val: source validation labels, shape ``(N_s,)``: the prior.

    Returns:
        ``target_top_class`` (the most predicted class), ``target_top_share`` (its share of the target
        argmax predictions), ``target_top_prior`` (its share of the source labels),
        ``target_entropy_ratio`` (``H(mean_i p_i) / H(source prior)``, 1 when the prior has one class)
        and ``source_chance`` (the majority-class rate of the source labels).
    """
    probs, labels = np.asarray(probs_t, dtype=np.float64), np.asarray(labels_s_val).astype(int)
    classes = probs.shape[1]
    prior = np.bincount(labels, minlength=classes)[:classes] / max(len(labels), 1)
    counts = np.bincount(probs.argmax(axis=1), minlength=classes)
    top = int(counts.argmax())
    prior_entropy = float(entr(prior).sum())
    mean_entropy = float(entr(probs.mean(axis=0)).sum())
    return {
        "target_top_class": float(top),
        "target_top_share": float(counts[top] / max(len(probs), 1)),
        "target_top_prior": float(prior[top]),
        "target_entropy_ratio": mean_entropy / prior_entropy if prior_entropy > 0 else 1.0,
        "source_chance": float(prior.max()),
    }


class CollapseGuard:
    """Marks collapsed evaluations unselectable and stops a run that stays collapsed.

    Args:
        share: ``(top share - its prior) / (1 - its prior)`` at or above which target predictions count
            as collapsed onto one class (``selection.collapse_share``).
        entropy: ``H(mean target prediction) / H(source prior)`` at or below which (also required).
        source_drop: fraction of the best earlier source-val accuracy's margin above chance whose loss
            counts as collapse (``selection.collapse_source_drop``).
        stop_after: collapsed evaluations in a row that stop the run; 0 never stops.
        name: the run's name in messages; ``fix``: the advice printed with a warning.
        log: prints the warning (e.g. ``accelerator.print``).
    """

    def __init__(
        self, *, share: float, entropy: float, source_drop: float, stop_after: int, name: str = "the method",
        fix: str = "", label_names: Sequence[str] | None = None, log: Callable[[str], Any] = print,
    ):  # fmt: skip
        self.share, self.entropy, self.source_drop, self.stop_after = share, entropy, source_drop, stop_after
        self.name, self.fix, self.label_names, self.log = name, fix, label_names, log

    def _label(self, index: float) -> str:
        i = int(index)
        return repr(self.label_names[i]) if self.label_names and i < len(self.label_names) else str(i)

    def prediction_collapse(self, s: dict[str, float], no_skill: bool = True) -> str | None:
        """Why the target predictions count as collapsed onto one class, or None.

        The argmax of the target predictions sits on one class (the ``share`` rule) and either the soft
        predictions agree (the mean prediction's entropy is at most ``entropy`` of the prior's) or, with
        ``no_skill``, the model has no skill on the labelled source either: source-val accuracy (when
        ``s`` has it) no higher than the majority-class rate. The second is how adversarial text runs
        collapse: every output near uniform, its argmax tipped to one class on both domains (Blitzer
        books -> kitchen, MiniLM + LoRA, DANN at ``trade_off: 1.0``). A model that has not learnt yet
        looks the same, so during training the guard applies it only once an earlier evaluation was
        above the majority-class rate on source validation (the skill was there and is gone).
        """
        top, prior = s["target_top_share"], s["target_top_prior"]
        excess = (top - prior) / (1 - prior) if prior < 1 else 0.0
        if excess < self.share:
            return None
        head = (
            f"{100 * top:.0f}% of target predictions are class {self._label(s['target_top_class'])} "
            f"(source share {100 * prior:.0f}%); "
        )
        if s["target_entropy_ratio"] <= self.entropy:
            return (
                head
                + f"entropy of the mean target prediction is {s['target_entropy_ratio']:.2f} of the source prior's"
            )
        acc = s.get("source_val_acc")
        if no_skill and acc is not None and acc <= s["source_chance"]:
            return head + (
                f"source-val accuracy {100 * acc:.1f}% is no better than the majority-class rate "
                f"{100 * s['source_chance']:.1f}% (outputs without class information)"
            )
        return None

    def reasons(self, scores: dict[str, float], history: list[dict[str, float]]) -> list[str]:
        """Why the evaluation ``scores`` counts as collapsed, given the earlier ``history`` (empty: healthy)."""
        earlier = [h["eval_source_val_acc"] for h in history if not h.get("eval_collapse")]
        had_skill = any(acc > scores["source_chance"] for acc in earlier)  # then lost it, or never had it
        found = [r for r in [self.prediction_collapse(scores, no_skill=had_skill)] if r]
        if earlier:
            best, now, chance = max(earlier), scores["source_val_acc"], scores["source_chance"]
            learnt = best - chance >= 0.5 * (1 - chance)  # halfway from chance to 100 %
            if learnt and best - now >= self.source_drop * (best - chance):
                found.append(
                    f"source-val accuracy fell to {100 * now:.1f}% from its best {100 * best:.1f}% "
                    f"(majority-class rate {100 * chance:.0f}%)"
                )
        return found

    def __call__(
        self, scores: dict[str, float], history: list[dict[str, float]], step: int
    ) -> dict[str, float]:
        """``scores`` with ``collapse`` (0/1) added and, when collapsed, the Engine's keys set."""
        found = self.reasons(scores, history)
        scores = {**scores, "collapse": float(bool(found))}
        if not found:
            return scores
        streak = 1
        for h in reversed(history):
            if not h.get("eval_collapse"):
                break
            streak += 1
        stop = bool(self.stop_after) and streak >= self.stop_after
        disc = scores.get("train_domain_acc")
        disc_s = f"; discriminator accuracy {disc:.2f} (0.5: it cannot tell the domains apart)" if disc is not None else ""  # fmt: skip
        then = "Stopping; the best pre-collapse checkpoint is kept" if stop else "It will not be selected"
        self.log(
            f"WARNING: {self.name} collapsed at step {step} ({streak} evaluation(s) in a row): "
            f"{'; '.join(found)}{disc_s}. {then}. {self.fix}".rstrip()
        )
        scores[SELECTABLE] = 0.0
        if stop:
            scores[STOP_TRAINING] = 1.0
        return scores


def collapse_summary(
    guard: CollapseGuard, history: list[dict[str, float]], *, best_step: int | None, steps: int, total: int
) -> dict[str, Any]:
    """What metrics.json, the report and the card say about a guarded run (from its history)."""
    hit = [h for h in history if h.get("eval_collapse")]
    if not hit:
        return {"collapsed": False}
    first = hit[0]
    signals = {
        k: first[f"eval_{k}"]
        for k in (*SIGNALS, "source_val_acc", "train_domain_acc")
        if f"eval_{k}" in first
    }
    earlier = [h for h in history if h["step"] < first["step"]]
    return {
        "collapsed": True,
        "first_step": first["step"],
        "collapsed_evaluations": len(hit),
        "stopped_early": steps < total,
        "stopped_at": steps,
        "kept_step": best_step,  # None: no evaluation before the collapse; the final weights were kept
        "pre_collapse_checkpoint": best_step is not None,
        "reasons": guard.reasons({k[5:]: v for k, v in first.items() if k.startswith("eval_")}, earlier),
        "signals": signals,
        "fix": guard.fix,
    }


def fix_advice(method: Any) -> str:
    """The likely fix for a collapsed run of ``method`` (its ``trade_off`` and warm-up settings)."""
    trade_off = getattr(method, "trade_off", None)
    advice = f"Likely fix: lower `method.trade_off` (now {trade_off:g}; try {trade_off / 10:g}–{trade_off / 3:.2g})"
    if getattr(method, "warmup", None) == "none":
        advice += ", or warm the transfer weight up (`method.warmup=ganin`)"
    if hasattr(method, "grl_alpha"):
        advice += f", or warm the adversarial term up more slowly (`method.grl_alpha`, now {method.grl_alpha:g}; e.g. 5)"
    return advice + ", or use a non-adversarial method (MCC, CORAL)."
