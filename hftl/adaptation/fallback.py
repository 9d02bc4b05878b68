"""Never silently worse: keep the source-only model when adaptation is predicted to hurt.

The adapt recipe trains the ``source_only`` baseline beside the adapted method (``report.baselines``).
With ``selection.fallback: source_only`` (the default whenever that baseline runs) the two final models
are compared without target labels, on the same source-validation and unlabelled target rows:

1. the adapted model's target predictions are collapsed onto one class
   (:meth:`hftl.adaptation.collapse.CollapseGuard.prediction_collapse`), or its run collapsed before
   any selectable evaluation (no pre-collapse checkpoint), while the source-only model's are not; or
2. the selection criterion (``selection.criterion``) scores the source-only model better, and the
   confirming validator (``selection.fallback_confirm``, source-validation accuracy by default) does too.
   The criterion alone is a biased judge: ``im`` rewards what information maximization and MCC optimise,
   so against other methods it falls back on adapted models that are better (docs/selection.md).

Then the source-only model is the one saved, and metrics.json (``kept``, ``fallback``), the report and
the model card say so and why. How often this call is right on hftl's own benchmark runs, and what its
wrong calls cost, is measured by ``python benchmarks/selection.py`` (the "Fallback" table).

Example:
    >>> results = {
    ...     "source_only": {"final_scores": {"im": 0.40, "source_val_acc": 0.90}},
    ...     "dann": {"final_scores": {"im": 0.05, "source_val_acc": 0.80}},
    ... }
    >>> decide(results, "dann", criterion="im", confirm="source_val_acc")["kept"]
    'source_only'
    >>> results["dann"]["final_scores"]["source_val_acc"] = 0.95  # not confirmed: the adapted model stays
    >>> decide(results, "dann", criterion="im", confirm="source_val_acc")["kept"]
    'dann'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hftl.adaptation.selection import CRITERIA


def decide(
    results: dict[str, Any], main: str, *, criterion: str, confirm: str | None = None,
    collapsed: Callable[[dict[str, float]], str | None] = lambda scores: None,
) -> dict[str, Any]:  # fmt: skip
    """Which model to keep, ``main`` or ``source_only``, and why.

    Args:
        results: the run's results; ``results[name]["final_scores"]`` holds each final model's label-free
            scores (criteria and :data:`hftl.adaptation.collapse.SIGNALS`), ``results[main]["collapse"]``
            the guard's summary when the guard ran.
        main: the adapted method's name.
        criterion: the selection criterion compared (a :data:`~hftl.adaptation.selection.CRITERIA` name).
        confirm: a second criterion that must also score source-only better; ``None``: the criterion alone.
        collapsed: a final model's scores -> why its target predictions count as collapsed, or None.

    Returns:
        ``{"kept", "reasons", "overruled", "criterion", "scores", "confirm", "confirm_scores"}``:
        ``reasons`` says why source-only is kept (empty when it is not), ``overruled`` why a worse
        criterion did not make it so; ``scores``/``confirm_scores`` map each model's name to its value.
    """
    so, ad = results["source_only"]["final_scores"], results[main]["final_scores"]
    reasons, overruled = [], []
    why = collapsed(ad)
    if why and not collapsed(so):
        reasons.append(f"{main}'s final target predictions collapsed: {why}")
    guard = results[main].get("collapse") or {}
    if guard.get("collapsed") and not guard.get("pre_collapse_checkpoint"):
        reasons.append(
            f"{main} collapsed at its first evaluation (step {guard['first_step']}): no checkpoint to keep"
        )
    if _better(criterion, so, ad):
        worse = (
            f"source_only scores better by `{criterion}` ({so[criterion]:.4f} vs {main} {ad[criterion]:.4f})"
        )
        if confirm is None or _better(confirm, so, ad):
            confirmed = f" and by `{confirm}` ({so[confirm]:.4f} vs {ad[confirm]:.4f})" if confirm else ""
            reasons.append(worse + confirmed)
        else:
            overruled.append(f"{worse}, but not by `{confirm}` ({so[confirm]:.4f} vs {ad[confirm]:.4f})")
    return {
        "kept": "source_only" if reasons else main,
        "reasons": reasons,
        "overruled": overruled,
        "criterion": criterion,
        "scores": {"source_only": so[criterion], main: ad[criterion]},
        "confirm": confirm,
        "confirm_scores": {"source_only": so[confirm], main: ad[confirm]} if confirm else {},
    }


def _better(criterion: str, so: dict[str, float], ad: dict[str, float]) -> bool:
    """Does ``criterion`` score the source-only model (``so``) strictly better than the adapted one?"""
    higher = CRITERIA[criterion].higher_is_better
    return so[criterion] > ad[criterion] if higher else so[criterion] < ad[criterion]
