"""PNG plots for model cards (matplotlib, Agg backend): training curves, confusion matrix, feature plot.

Plots go to ``plots/`` beside the card (a staging folder first, see :func:`hftl.hub.card.stage_card`) and
the card links them by relative path, so they are files of the Hub repo and render on the model page.
File names made from names a config or metrics file chose (task names, method names) go through
:func:`safe_stem`, and label names are drawn as plain text (no matplotlib mathtext).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
PLOTS_DIRNAME = "plots"
# Every file name write_plots and the card's per-task confusion matrices can produce (what push uploads).
PLOT_FILE = re.compile(r"(training_curves|confusion_matrix|confusion_[\w.-]+|features_[\w-]+)\.png")


def safe_stem(name: str) -> str:
    """``name`` as a file name stem: letters, digits, ``_``, ``-`` and ``.`` only, not starting with a dot."""
    return re.sub(r"[^\w.-]", "_", name).lstrip(".")[:100] or "_"


def _text(label: object) -> str:
    """A label as matplotlib draws it literally: ``$`` would start mathtext (and a bad formula raises)."""
    return str(label).replace("$", r"\$")


def write_plots(dest: Path, run_dir: Path | None, ctx: dict[str, Any]) -> dict[str, str]:
    """Draws every plot the run's metrics allow into ``dest/plots``; returns ``{title: path relative to dest}``.

    Missing matplotlib (``pip install hftl[plots]``) gives a card without plots, not an error.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'hftl[plots]'): the card will have no plots")
        return {}
    out = dest / PLOTS_DIRNAME
    out.mkdir(exist_ok=True)
    plots: dict[str, str] = {}
    if plot_history(ctx.get("history") or [], out / "training_curves.png", title=ctx["model_id"]):
        plots["Validation metrics during training"] = f"{PLOTS_DIRNAME}/training_curves.png"
    test = (ctx.get("splits") or {}).get("test") or (ctx.get("splits") or {}).get("validation")
    if test and test.get("confusion_matrix"):
        split = "test" if "test" in ctx["splits"] else "validation"
        plot_confusion_matrix(
            test["confusion_matrix"], ctx["label_names"], out / "confusion_matrix.png",
            title=f"Confusion matrix ({split} split)",
        )  # fmt: skip
        plots[f"Confusion matrix ({split})"] = f"{PLOTS_DIRNAME}/confusion_matrix.png"
    method = str(ctx.get("method") or "")
    features = run_dir / f"features_{method}.png" if run_dir and re.fullmatch(r"[\w-]+", method) else None
    if features is not None and features.is_file() and not features.is_symlink():
        shutil.copyfile(features, out / features.name)
        plots["Source vs target features after adaptation"] = f"{PLOTS_DIRNAME}/{features.name}"
    if not plots and not any(out.iterdir()):
        out.rmdir()
    return plots


def plot_history(history: list[dict[str, Any]], path: Path, *, title: str = "") -> Path | None:
    """Validation metrics against optimizer steps: accuracies/F1 on the left axis, the rest on the right.

    Returns ``None`` (and draws nothing) when the history holds no numeric metric.
    """
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("eval_") and key != "eval_num_samples" and isinstance(value, int | float):
                series.setdefault(key[5:], []).append((int(row["step"]), float(value)))
    if not series:
        return None
    scores = {k: v for k, v in series.items() if "acc" in k or "f1" in k}
    others = {k: v for k, v in series.items() if k not in scores}
    panels = [(p, name) for p, name in ((scores, "accuracy / F1"), (others, "other metrics")) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (panel, ylabel) in zip(axes[0], panels, strict=True):
        for key, points in panel.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=_text(key))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_text(title) or "validation metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, *, title: str = "") -> Path:
    """Counts per (true, predicted) class, annotated when there are at most 20 classes."""
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix)
    size = min(2.0 + 0.5 * len(labels), 12.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = range(len(labels))
    names = [_text(name) for name in labels]
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 20:
        for (i, j), value in np.ndenumerate(counts):
            color = "white" if value > counts.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=8)
    ax.set_title(_text(title))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
