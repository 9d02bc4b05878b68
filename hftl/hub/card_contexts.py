"""What each recipe family's model card shows, read from the files its run wrote.

One builder per recipe (``finetune``, ``adapt``, ``embed``, ``distill``, ``multitask``, ``fewshot``,
``meta``) turns a run's ``config.yaml``, ``metrics.json`` and model files into the variables of its template
(``hftl/hub/templates/<template>.md.j2``). Every builder returns, besides its own variables:

* ``data_nodes``: the data config nodes (for the front matter's datasets and language);
* ``tags``: the family's tags (``hftl`` and the modality are added by :func:`hftl.hub.card.build_card`);
* ``eval_rows``: ``(data node, dataset name, split, metric type, metric name, value)`` for ``model-index``;
* ``citations``: keys of :data:`hftl.hub.citations.CITATIONS`;
* ``history`` / ``splits``: what :func:`hftl.hub.plots.write_plots` draws (validation curves, confusion matrix).

Nothing is estimated: a number the run did not record is left out of the card, and config values the user
did not write are the recipe's own defaults, read from its config dataclasses and components' signatures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hftl.hub.run_files import (
    Row,
    RunFiles,
    adapter_title,
    args_of,
    data_name,
    defaults_of,
    model_config,
    plain,
    read_config,
    read_json,
    split_rows,
)
from hftl.models.io import META_FILE


def finetune_context(run: RunFiles, base: dict[str, Any]) -> dict[str, Any]:
    node, metrics = plain(run.cfg.data), run.metrics
    splits = {s: metrics[s] for s in ("validation", "test") if isinstance(metrics.get(s), dict)}
    name = data_name(node)
    return {
        "data_nodes": [node],
        "data_name": name,
        "splits": splits,
        "best_step": metrics.get("best_step"),
        "steps": metrics.get("steps"),
        "history": metrics.get("history") or [],
        "tags": [base["adapter_tag"]],
        "eval_rows": split_rows(node, name, splits),
        "citations": [],
    }


def adapt_context(run: RunFiles, base: dict[str, Any]) -> dict[str, Any]:
    cfg, metrics = run.cfg, run.metrics
    method = str(metrics.get("method") or cfg.method._component_.rsplit(".", 1)[-1].lower())
    source, target = plain(cfg.source), plain(cfg.target)
    ctx = {
        "data_nodes": [source, target],
        "source_name": data_name(source),
        "target_name": data_name(target),
        "method_component": str(cfg.method._component_),
        "method_args": args_of(cfg.method),
        "tags": [base["adapter_tag"], "domain-adaptation", method],
    }
    return ctx | _adaptation_results(metrics, method, source, target, ctx)


def _adaptation_results(
    metrics: dict[str, Any], method: str, source: dict, target: dict, names: dict[str, Any]
) -> dict[str, Any]:
    """The adapted model beside its source-only baseline (``adapt``, and ``embed`` with a ``method``)."""
    results = metrics.get("results") or {}
    kept = metrics.get("kept") or method  # adapt's `selection.fallback` may keep the source-only model
    main = results.get(kept, {})
    source_only = results.get("source_only", {}).get("target_test_acc")
    adapted = main.get("target_test_acc", metrics.get("target_test_acc"))
    rows: list[Row] = []
    if adapted is not None:
        rows.append(Row(target, f"{names['target_name']} (target)", "test", "accuracy", "Accuracy", adapted))
    source_val = main.get("source_val_acc", (main.get("validation") or {}).get("accuracy"))
    if source_val is not None:
        rows.append(Row(source, f"{names['source_name']} (source)", "validation", "accuracy", "Accuracy", source_val))  # fmt: skip
    return {
        "method": method,
        "kept": kept,
        "fallback": metrics.get("fallback"),
        "selection_criterion": metrics.get("selection_criterion"),
        "results": results,
        "adapted_acc": adapted,
        "source_only_acc": source_only,
        "oracle_acc": results.get("target_oracle", {}).get("target_test_acc"),
        "negative_transfer": adapted is not None and source_only is not None and adapted < source_only,
        "history": main.get("history") or [],
        "splits": {},
        "eval_rows": rows,
        "citations": [method],
    }


def embed_context(run: RunFiles, base: dict[str, Any]) -> dict[str, Any]:
    cfg, metrics = run.cfg, run.metrics
    component = str(cfg.encoder.get("_component_", ""))
    level = metrics.get("level") or ("context" if "Context" in component else "sentence")
    encoder = defaults_of(cfg.encoder) | args_of(cfg.encoder)
    keys = ("token_head", "hidden_features", "num_heads", "layer_norm") if level == "context" else ("pooling", "layer")  # fmt: skip
    node, seconds = plain(cfg.data), metrics.get("epoch_seconds") or []
    ctx = {
        "level": level,
        "encoder_component": component.rsplit(".", 1)[-1],
        "level_args": {k: encoder[k] for k in keys if k in encoder},
        "layer_weights": _scalar_mix(run.model_dir) if level == "context" else None,
        "cache": run.section("cache"),
        "features": metrics.get("features") or {},
        "head_seconds": round(sum(seconds), 3) if seconds else None,
        "epochs_run": len(seconds),
        "data_nodes": [node],
        "data_name": data_name(node),
        "best_step": metrics.get("best_step"),
        "steps": metrics.get("steps"),
        "tags": ["frozen-encoder", "embedding-transfer", f"{level}-embeddings"],
        "citations": ["scalar_mix"] if level == "context" else [],
    }
    if "method" in cfg:
        target = plain(cfg.target)
        ctx |= {"source_name": ctx["data_name"], "target_name": data_name(target)}
        ctx |= _adaptation_results(metrics, str(metrics.get("method")), node, target, ctx)
        ctx["data_nodes"].append(target)
        ctx["selection_criterion"] = run.section("selection").criterion
        ctx |= {"method_component": str(cfg.method._component_), "method_args": args_of(cfg.method)}
        ctx["tags"] += ["domain-adaptation", ctx["method"]]
        return ctx
    splits = {s: metrics[s] for s in ("validation", "test") if isinstance(metrics.get(s), dict)}
    # the head's validation scores per evaluation, named like the Engine's so the curves plot
    history = [{"step": h["step"], **{f"eval_{k}": v for k, v in h.items() if k != "step"}} for h in metrics.get("history") or []]  # fmt: skip
    return ctx | {
        "splits": splits,
        "history": history,
        "eval_rows": split_rows(node, ctx["data_name"], splits),
    }


def _scalar_mix(model_dir: Path) -> dict[str, Any] | None:
    """The learned layer weights (softmax) and scale γ of a context-level pooler, from ``head.safetensors``."""
    from safetensors import safe_open

    path = model_dir / "head.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if "encoder.pool.mix.weights" not in keys:
            return None
        weights = f.get_tensor("encoder.pool.mix.weights").float().softmax(-1).tolist()
        gamma = f.get_tensor("encoder.pool.mix.gamma").item() if "encoder.pool.mix.gamma" in keys else None
    return {"weights": weights, "gamma": gamma}


def distill_context(run: RunFiles, base: dict[str, Any]) -> dict[str, Any]:
    cfg, metrics = run.cfg, run.metrics
    teacher_path = str(cfg.teacher.path)
    teacher = _teacher(Path(teacher_path))
    node = plain(cfg.data)
    splits = {s: metrics[s] for s in ("validation", "test") if isinstance(metrics.get(s), dict)}
    hints = args_of(cfg.hints) if "hints" in cfg else None
    ctx = {
        "teacher_path": teacher_path,
        "teacher": teacher,
        "teacher_splits": metrics.get("teacher") or {},
        "student_config": model_config(run.model_dir / "encoder") or model_config(run.meta["base_model"]),
        "parameters": metrics.get("parameters"),
        "distill": run.section("distill"),
        "loss_component": str(cfg.loss._component_),
        "loss_args": defaults_of(cfg.loss) | args_of(cfg.loss),
        "hints_component": str(cfg.hints._component_) if hints is not None else None,
        "hints_args": defaults_of(cfg.hints) | hints if hints is not None else None,
        "unlabeled_name": data_name(plain(cfg.unlabeled)) if "unlabeled" in cfg else None,
        "speed": metrics.get("speed"),
        "accuracy_retained": metrics.get("accuracy_retained"),
        "data_nodes": [node] + ([plain(cfg.unlabeled)] if "unlabeled" in cfg else []),
        "data_name": data_name(node),
        "splits": splits,
        "best_step": metrics.get("best_step"),
        "steps": metrics.get("steps"),
        "history": metrics.get("history") or [],
        "tags": ["knowledge-distillation", base["adapter_tag"]] + (["fitnets"] if hints is not None else []),
        "eval_rows": split_rows(node, data_name(node), splits),
        "citations": ["kd"] + (["fitnets"] if hints is not None else []),
    }
    return ctx


def _teacher(path: Path) -> dict[str, Any] | None:
    """The teacher's saved description (base model, adapter, encoder config) when its directory is here."""
    model_dir = next((p for p in (path, path / "model") if (p / META_FILE).is_file()), None)
    if model_dir is None:
        return None
    meta = json.loads((model_dir / META_FILE).read_text())
    adapter = read_config(model_dir / "config.yaml").get("adapter") or {}
    encoder = model_dir / "encoder" if meta["adapter"] == "full" else meta["base_model"]
    return {
        "base_model": meta["base_model"],
        "adapter": adapter_title(str(adapter.get("_component_", meta["adapter"]))),
        "adapter_args": args_of(adapter),
        "config": model_config(encoder),
    }


def multitask_context(run: RunFiles, base: dict[str, Any]) -> dict[str, Any]:
    cfg, metrics = run.cfg, run.metrics
    saved = read_json(run.model_dir / "tasks.json") or {"tasks": []}
    lwf = run.section("lwf") if cfg.get("init_from") else None
    tasks, rows, nodes = [], [], []
    for entry in saved["tasks"]:
        name = entry["name"]
        node = plain(cfg.tasks[name].data) if name in cfg.tasks else None
        if node is None and lwf is not None and "old_task_data" in cfg:
            node = plain(cfg.old_task_data)  # the kept task: scored on `old_task_data`
        splits = (metrics.get("tasks") or {}).get(name) or {}
        label = f"{data_name(node)} (task {name})" if node else name
        rows += split_rows(node, label, splits, config=name) if node else []
        nodes += [node] if node else []
        tasks.append({
            "name": name, "label_names": entry["label_names"], "data_name": data_name(node) if node else None,
            "head": _head_name(entry.get("head")), "splits": splits,
            "weight": float(cfg.tasks[name].get("weight", 1.0)) if name in cfg.tasks else None,
        })  # fmt: skip
    old = metrics.get("old_task")
    if old is not None and "old_task_data" in cfg:
        node = plain(cfg.old_task_data)
        rows.append(Row(node, f"{data_name(node)} (task {old['task']})", "test", "accuracy", "Accuracy", old["accuracy_after"], old["task"]))  # fmt: skip
    return {
        "tasks": tasks,
        "default_task": tasks[0]["name"] if tasks else None,
        "sampling": run.section("multitask").sampling,
        "init_from": str(cfg.init_from) if cfg.get("init_from") else None,
        "lwf": lwf,
        "old_task": old,
        "plain_finetune": metrics.get("plain_finetune"),
        "best_step": metrics.get("best_step"),
        "steps": metrics.get("steps"),
        "history": metrics.get("history") or [],
        "splits": {},
        "confusions": [
            (
                f"Confusion matrix, task {t['name']} ({s})",
                f"confusion_{t['name']}",
                t["splits"][s]["confusion_matrix"],
                t["label_names"],
            )
            for t in tasks
            for s in [next((s for s in ("test", "validation") if s in t["splits"]), None)]
            if s and t["splits"][s].get("confusion_matrix")
        ],
        "data_nodes": nodes,
        "tags": ["multi-task", base["adapter_tag"]] + (["lwf", "continual-learning"] if lwf else []),
        "eval_rows": rows,
        "citations": ["lwf"] if lwf else [],
    }


def _head_name(head: Any) -> str:
    """A task head's class name from ``tasks.json``: a spec (``class``) or a config node (``_component_``)."""
    head = head if isinstance(head, dict) else {}
    return str(head.get("class") or head.get("_component_") or "").rsplit(".", 1)[-1]


def fewshot_context(run: RunFiles, base: dict[str, Any]) -> dict[str, Any]:
    cfg, metrics = run.cfg, run.metrics
    node = plain(cfg.data)
    splits = {s: metrics[s] for s in ("validation", "test") if isinstance(metrics.get(s), dict)}
    return {
        "fewshot": run.section("fewshot"),
        "record": metrics.get("fewshot") or {},
        "loss_component": str(cfg.loss._component_),
        "loss_args": defaults_of(cfg.loss) | args_of(cfg.loss),
        "steps": metrics.get("steps"),
        "history": metrics.get("history") or [],
        "splits": splits,
        "data_nodes": [node],
        "data_name": data_name(node),
        "tags": ["few-shot", "metric-learning", base["adapter_tag"]],
        "eval_rows": split_rows(node, data_name(node), splits),
        "citations": ["setfit"],
    }


def meta_context(run: RunFiles, base: dict[str, Any]) -> dict[str, Any]:
    cfg, metrics = run.cfg, run.metrics
    settings, episodes = run.section("meta"), run.section("episodes")
    results = metrics.get("results") or {}
    if not results and "query_acc" in metrics:  # only the model directory's summary is here
        results = {settings.algorithm: metrics}
    main = results.get(settings.algorithm, {})
    node = plain(cfg.data)
    test_node = plain(cfg.test_data) if cfg.get("test_data") is not None else node
    shape = f"{episodes.n_way}-way {episodes.k_shot}-shot"
    rows: list[Row] = []
    if "query_acc" in main:
        name = f"{data_name(test_node)} (meta-test, {shape} episodes)"
        rows.append(Row(test_node, name, "+".join(episodes.test_splits), "accuracy", f"Query accuracy ({shape})", main["query_acc"]))  # fmt: skip
    return {
        "meta": settings,
        "episodes": episodes,
        "shape": shape,
        "algorithm": settings.algorithm,
        "results": results,
        "main": main,
        "data_name": data_name(node),
        "test_name": data_name(test_node) if cfg.get("test_data") is not None else None,
        "encoder_path": str(run.model_dir / "encoder"),
        "pipeline_tag": None,  # an initialization to adapt, not a ready classifier
        "history": [],
        "splits": {},
        "data_nodes": [node] + ([test_node] if cfg.get("test_data") is not None else []),
        "tags": ["meta-learning", "few-shot", settings.algorithm, base["adapter_tag"]],
        "eval_rows": rows,
        "citations": [a for a in ("fomaml", "reptile") if a in results],
    }


BUILDERS: dict[str, tuple[str, Callable[[RunFiles, dict[str, Any]], dict[str, Any]]]] = {
    "finetune": ("finetune", finetune_context),
    "adapt": ("adaptation", adapt_context),
    "embed": ("embed", embed_context),
    "distill": ("distill", distill_context),
    "multitask": ("multitask", multitask_context),
    "fewshot": ("fewshot", fewshot_context),
    "meta": ("meta", meta_context),
}  # recipe -> (template name, context builder)


def infer_recipe(cfg: DictConfig, metrics: dict[str, Any]) -> str:
    """The recipe that wrote a run: its config's ``recipe:`` key, else recognised by its sections."""
    if cfg.get("recipe"):
        return str(cfg.recipe)
    checks = [
        ("distill", "teacher" in cfg and "student" in cfg),
        ("multitask", "tasks" in cfg),
        ("meta", "episodes" in cfg or "meta" in cfg or "n_way" in metrics),
        ("fewshot", "fewshot" in cfg or "fewshot" in metrics),
        ("embed", "cache" in cfg or "level" in metrics),
        ("adapt", "source" in cfg and "method" in cfg),
    ]
    return next((name for name, found in checks if found), "finetune")
