"""Never silently worse: keep the source-only model when adaptation is predicted to hurt.

The adapt recipe trains the ``source_only`` baseline beside the adapted method (``report.baselines``).
With ``selection.fallback: source_only`` (the default whenever that baseline runs) the two final models
are compared without target labels, on the same source-validation and unlabelled target rows:

1. the adapted model's target predictions are collapsed onto one class
   (:meth:`hftl.adaptation.collapse.CollapseGuard.prediction_collapse`), or its run collapsed before
   any selectable evaluation (no pre-collapse checkpoint), while the source-only model's are not; or
2. the selection criterion (``selection.criterion``) scores the source-only model better.

Then the source-only model is the one saved, and metrics.json (``kept``, ``fallback``), the report and
the model card say so and why. How often this call is right on hftl's own benchmark runs, and what its
wrong calls cost, is measured by ``python benchmarks/selection.py`` (the "Fallback" table).

Example:
    >>> results = {"source_only": {"final_scores": {"im": 0.40}}, "dann": {"final_scores": {"im": 0.05}}}
    >>> decide(results, "dann", criterion="im", higher_is_better=True)["kept"]
    'source_only'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def decide(
    results: dict[str, Any], main: str, *, criterion: str, higher_is_better: bool,
    collapsed: Callable[[dict[str, float]], str | None] = lambda scores: None,
) -> dict[str, Any]:  # fmt: skip
    """Which model to keep, ``main`` or ``source_only``, and why.

    Args:
        results: the run's results; ``results[name]["final_scores"]`` holds each final model's label-free
            scores (criteria and :data:`hftl.adaptation.collapse.SIGNALS`), ``results[main]["collapse"]``
            the guard's summary when the guard ran.
        main: the adapted method's name.
        criterion: the selection criterion compared.
        higher_is_better: its direction.
        collapsed: a final model's scores -> why its target predictions count as collapsed, or None.

    Returns:
        ``{"kept": name, "reasons": [...], "criterion": name, "scores": {name: value}}``.
    """
    so, ad = results["source_only"]["final_scores"], results[main]["final_scores"]
    reasons = []
    why = collapsed(ad)
    if why and not collapsed(so):
        reasons.append(f"{main}'s final target predictions collapsed: {why}")
    guard = results[main].get("collapse") or {}
    if guard.get("collapsed") and not guard.get("pre_collapse_checkpoint"):
        reasons.append(
            f"{main} collapsed at its first evaluation (step {guard['first_step']}): no checkpoint to keep"
        )
    s_so, s_ad = so[criterion], ad[criterion]
    if (s_so > s_ad) if higher_is_better else (s_so < s_ad):
        reasons.append(f"source_only scores better by `{criterion}` ({s_so:.4f} vs {main} {s_ad:.4f})")
    return {
        "kept": "source_only" if reasons else main,
        "reasons": reasons,
        "criterion": criterion,
        "scores": {"source_only": s_so, main: s_ad},
    }
