"""Evaluation: offline ``evaluate`` metrics, classification reports and metrics files."""

from __future__ import annotations

from hftl.evaluation.metrics import classification_report, format_report, load_metric, write_metrics

__all__ = ["classification_report", "format_report", "load_metric", "write_metrics"]
