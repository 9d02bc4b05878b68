"""Model cards for trained hftl models: front matter the Hub indexes, results, plots, config, citations.

``render_card(output_dir)`` reads what a run left behind (``model/hftl_model.json``, ``config.yaml``,
``metrics.json``, ``features_<method>.png``), draws the plots into ``model/plots/`` and writes
``model/README.md`` from the recipe family's Jinja template (``hftl/hub/templates/<family>.md.j2``)
through :class:`huggingface_hub.ModelCard`, so the YAML front matter (``base_model``, ``library_name``,
``pipeline_tag``, ``datasets``, ``language``, ``license``, ``tags``, ``model-index``) is the one the Hub
parses.
"""

from __future__ import annotations

import json
import platform
import re
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

from hftl.errors import ModelLoadError
from hftl.hub.plots import write_plots
from hftl.models.io import META_FILE, MODEL_DIRNAME, find_model_dir

Family = Literal["finetune", "adaptation"]
PIPELINE_TAGS = {
    "text": "text-classification",
    "audio": "audio-classification",
    "image": "image-classification",
}
ADAPTER_NAMES = {
    "hftl.adapters.Lora": "lora",
    "hftl.adapters.IA3": "ia3",
    "hftl.adapters.FullFinetune": "full fine-tuning",
    "hftl.adapters.Frozen": "frozen encoder (linear probe)",
}
ADAPTER_TITLES = {"lora": "LoRA adapter", "ia3": "(IA)³ adapter"}
ADAPTER_TAGS = {"peft": None, "full": "full-finetune", "frozen": "linear-probe"}  # peft: the adapter's name
# Shared data sets whose Hub id and language are known: (substring of a data path, Hub id or None, language).
KNOWN_DATA: list[tuple[str, str | None, str]] = [
    ("SST-2", "stanfordnlp/sst2", "en"),
    ("amazon_mds", None, "en"),
    ("fsdd", None, "en"),
    ("spoken_digits", None, "en"),
]
VERSIONED = ("hftl", "torch", "transformers", "peft", "accelerate", "datasets", "huggingface_hub")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def render_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | None = None,
    datasets: list[str] | None = None,
) -> Path:
    """(Re)writes ``README.md`` and ``plots/`` of a run's model directory; returns the README path.

    Args:
        output_dir: the ``output_dir`` of a finished ``hftl run`` (or its ``model/`` folder).
        repo_id: Hub repo the card will live in (used in the loading example); default: the folder name.
        license: license identifier for the front matter (e.g. ``apache-2.0``); default ``unknown``:
            the license of a fine-tuned model follows its base model and data, which hftl cannot know.
        language: language code(s) of text/speech data; default: inferred for the shared data sets.
        datasets: Hub dataset ids trained/evaluated on; default: inferred when the data is a Hub id.

    Raises:
        ModelLoadError: ``output_dir`` holds no hftl model.
    """
    card = build_card(output_dir, repo_id=repo_id, license=license, language=language, datasets=datasets)
    path = find_model_dir(_local(output_dir)) / "README.md"
    card.save(path)
    return path


def build_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | None = None,
    datasets: list[str] | None = None,
):
    """The :class:`huggingface_hub.ModelCard` of a run (plots are written as a side effect)."""
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = find_model_dir(_local(output_dir))
    ctx = card_context(model_dir, repo_id=repo_id)
    hints = [h for node in ctx["data_nodes"] for h in _hints(node)]
    data_ids = datasets if datasets is not None else sorted({h[0] for h in hints if h[0]})
    lang = language or next((h[1] for h in hints if h[1]), None)
    tags = ["hftl", ctx["modality"], ADAPTER_TAGS.get(ctx["adapter_kind"]) or ctx["adapter_name"]]
    if ctx["family"] == "adaptation":
        tags += ["domain-adaptation", ctx["method"]]
    data = ModelCardData(
        base_model=ctx["base_model_id"],
        library_name=ctx["library_name"],
        pipeline_tag=ctx["pipeline_tag"],
        datasets=data_ids or None,
        language=lang,
        license=license or "unknown",
        tags=list(dict.fromkeys(tags)),
        model_name=ctx["model_id"],
        eval_results=_eval_results(ctx) or None,
    )
    template = resources.files("hftl.hub") / "templates" / f"{ctx['family']}.md.j2"
    return ModelCard.from_template(data, template_str=template.read_text(encoding="utf-8"), **ctx)


def card_context(model_dir: Path, *, repo_id: str | None = None) -> dict[str, Any]:
    """Everything a template shows, read from the model directory and its run directory."""
    meta = json.loads((model_dir / META_FILE).read_text())
    cfg = OmegaConf.load(model_dir / "config.yaml")
    run_dir = model_dir.parent if model_dir.name == MODEL_DIRNAME else None
    metrics = _read_json(run_dir / "metrics.json") if run_dir else None
    metrics = metrics or _read_json(model_dir / "metrics.json") or {}
    recipe = str(cfg.get("recipe", "adapt" if "method" in cfg else "finetune"))
    family: Family = "adaptation" if recipe == "adapt" else "finetune"
    if recipe not in ("finetune", "adapt"):
        raise ModelLoadError(
            f"{model_dir / 'config.yaml'}: recipe {recipe!r} has no model card template; templates exist for "
            "`finetune` and `adapt` (hftl/hub/templates/)."
        )
    adapter_target = str(cfg.adapter.get("_component_", ""))
    base = str(meta["base_model"])
    ctx: dict[str, Any] = {
        "family": family,
        "recipe": recipe,
        "model_id": repo_id or (run_dir or model_dir).name,
        "repo_id": repo_id,
        "modality": meta["modality"],
        "pipeline_tag": PIPELINE_TAGS[meta["modality"]],
        "label_names": meta["label_names"],
        "base_model": base,
        "base_model_id": base if HUB_ID.match(base) and not Path(base).exists() else None,
        "adapter_kind": meta["adapter"],
        "library_name": _library(model_dir, meta["adapter"]),
        "adapter_name": ADAPTER_NAMES.get(adapter_target, adapter_target.rsplit(".", 1)[-1]),
        "adapter_args": _args(cfg.adapter),
        "adapter_title": ADAPTER_TITLES.get(ADAPTER_NAMES.get(adapter_target, ""))
        or ADAPTER_NAMES.get(adapter_target, adapter_target.rsplit(".", 1)[-1]),
        "encoder_args": {k: v for k, v in _args(cfg.encoder).items() if k != "model"},
        "head": str(cfg.head.get("_component_", "")).rsplit(".", 1)[-1],
        "head_args": _args(cfg.head),
        "optimizer": str(cfg.optimizer.get("_component_", "")),
        "optimizer_args": _args(cfg.optimizer),
        "train_args": _plain(cfg.get("train")) or {},
        "seed": cfg.get("seed", 42),
        "config_yaml": OmegaConf.to_yaml(cfg).strip(),
        "command": f"hftl run {recipe} --config config.yaml",
        "versions": _versions(),
        "load_path": repo_id or str(run_dir or model_dir),
    }
    ctx["citations"] = [CITATIONS[k] for k in (ctx["adapter_name"],) if k in CITATIONS]
    if family == "finetune":
        ctx.update(_finetune_context(cfg, metrics))
    else:
        ctx.update(_adaptation_context(cfg, metrics, run_dir))
    ctx["citations"] = ctx.pop("method_citations", []) + ctx["citations"]
    ctx["plots"] = write_plots(model_dir, run_dir, ctx)
    return ctx


def _finetune_context(cfg, metrics: dict[str, Any]) -> dict[str, Any]:
    splits = [s for s in ("validation", "test") if isinstance(metrics.get(s), dict)]
    return {
        "data_nodes": [_plain(cfg.data)],
        "data_name": _data_name(_plain(cfg.data)),
        "splits": {s: metrics[s] for s in splits},
        "best_step": metrics.get("best_step"),
        "steps": metrics.get("steps"),
        "history": metrics.get("history") or [],
    }


def _adaptation_context(cfg, metrics: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    method = str(metrics.get("method") or cfg.method._component_.rsplit(".", 1)[-1].lower())
    results = metrics.get("results") or {}
    main = results.get(method, {})
    source_only = results.get("source_only", {}).get("target_test_acc")
    adapted = main.get("target_test_acc", metrics.get("target_test_acc"))
    citations = [CITATIONS[method]] if method in CITATIONS else []
    return {
        "data_nodes": [_plain(cfg.source), _plain(cfg.target)],
        "source_name": _data_name(_plain(cfg.source)),
        "target_name": _data_name(_plain(cfg.target)),
        "method": method,
        "method_component": str(cfg.method._component_),
        "method_args": _args(cfg.method),
        "selection_criterion": metrics.get("selection_criterion"),
        "results": results,
        "adapted_acc": adapted,
        "source_only_acc": source_only,
        "oracle_acc": results.get("target_oracle", {}).get("target_test_acc"),
        "negative_transfer": adapted is not None and source_only is not None and adapted < source_only,
        "history": main.get("history") or [],
        "method_citations": citations,
    }


def _eval_results(ctx: dict[str, Any]) -> list:
    """model-index entries: accuracy (and macro F1) per split for fine-tuning, per domain for adaptation."""
    from huggingface_hub import EvalResult

    rows: list[tuple[dict, str, str, str, str, float]] = []  # (data node, name, split, metric, title, value)
    if ctx["family"] == "finetune":
        node = ctx["data_nodes"][0]
        for split, report in ctx["splits"].items():
            rows.append((node, ctx["data_name"], split, "accuracy", "Accuracy", report["accuracy"]))
            if "macro_f1" in report:
                rows.append((node, ctx["data_name"], split, "f1", "Macro F1", report["macro_f1"]))
    else:
        source, target = ctx["data_nodes"]
        main = ctx["results"].get(ctx["method"], {})
        if ctx["adapted_acc"] is not None:
            name = f"{ctx['target_name']} (target)"
            rows.append((target, name, "test", "accuracy", "Accuracy", ctx["adapted_acc"]))
        if "source_val_acc" in main:
            name = f"{ctx['source_name']} (source)"
            rows.append((source, name, "validation", "accuracy", "Accuracy", main["source_val_acc"]))
    return [
        EvalResult(
            task_type=ctx["pipeline_tag"],
            dataset_type=_hub_path(node)
            or re.sub(r"\W+", "-", name.split(" (")[0]).strip("-").lower()
            or "custom",
            dataset_name=name,
            dataset_split=split,
            metric_type=metric,
            metric_name=title,
            metric_value=round(float(value), 4),
        )
        for node, name, split, metric, title, value in rows
    ]


def _hub_path(node: dict[str, Any]) -> str | None:
    """The data's Hub id when it was loaded by one (then the split names are the Hub's own)."""
    path = str(node.get("path", ""))
    return path if HUB_ID.match(path) and not Path(path).exists() else None


def _library(model_dir: Path, adapter_kind: str) -> str:
    """``peft`` for adapters, ``transformers`` for a native transformers encoder, else ``hftl`` (an hftl
    architecture such as a model trained from scratch, which needs hftl to load)."""
    if adapter_kind == "peft":
        return "peft"
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config = model_dir / "encoder" / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return "transformers" if model_type is None or model_type in CONFIG_MAPPING_NAMES else "hftl"


def _local(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{str(path)!r} does not exist: pass the `output_dir` of a finished `hftl run`.")
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _plain(node: Any) -> Any:
    return (
        OmegaConf.to_container(node, resolve=True) if node is not None and OmegaConf.is_config(node) else node
    )


def _args(node: Any) -> dict[str, Any]:
    return {k: v for k, v in (_plain(node) or {}).items() if k != "_component_"}


def _paths(node: dict[str, Any]) -> list[str]:
    files = node.get("data_files")
    files = list(files.values()) if isinstance(files, dict) else [files] if files else []
    return [str(node.get("path", ""))] + [str(f) for f in files]


def _hints(node: dict[str, Any]) -> list[tuple[str | None, str]]:
    found = [(hub_id, lang) for key, hub_id, lang in KNOWN_DATA if any(key in p for p in _paths(node))]
    if not found and _hub_path(node):
        found.append((_hub_path(node), ""))  # a Hub dataset id: language unknown
    return found


def _data_name(node: dict[str, Any]) -> str:
    """A short readable name: the Hub id, ``hftl:`` data set, or the folder/file the data came from."""
    path = str(node.get("path", ""))
    files = _paths(node)[1:]
    if path.startswith("hftl:"):
        name = path[5:]
    elif files:
        parents = {Path(f).parent.name for f in files}
        name = parents.pop() if len(parents) == 1 else Path(files[0]).stem
    else:
        name = Path(path).stem if Path(path).suffix else Path(path).name or path
    filters = node.get("filters") or {}
    if filters:
        name += " (" + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in filters.items()) + ")"
    return name


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# BibTeX of the papers behind the adaptation methods and adapters, keyed by hftl's short names.
CITATIONS: dict[str, str] = {
    "dann": """@article{ganin2016dann,
  title   = {Domain-Adversarial Training of Neural Networks},
  author  = {Ganin, Yaroslav and Ustinova, Evgeniya and Ajakan, Hana and Germain, Pascal and Larochelle, Hugo and Laviolette, Fran{\\c{c}}ois and Marchand, Mario and Lempitsky, Victor},
  journal = {Journal of Machine Learning Research},
  volume  = {17},
  number  = {59},
  pages   = {1--35},
  year    = {2016}
}""",
    "cdan": """@inproceedings{long2018cdan,
  title     = {Conditional Adversarial Domain Adaptation},
  author    = {Long, Mingsheng and Cao, Zhangjie and Wang, Jianmin and Jordan, Michael I.},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2018}
}""",
    "mdd": """@inproceedings{zhang2019mdd,
  title     = {Bridging Theory and Algorithm for Domain Adaptation},
  author    = {Zhang, Yuchen and Liu, Tianle and Long, Mingsheng and Jordan, Michael I.},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2019}
}""",
    "mcc": """@inproceedings{jin2020mcc,
  title     = {Minimum Class Confusion for Versatile Domain Adaptation},
  author    = {Jin, Ying and Wang, Ximei and Long, Mingsheng and Wang, Jianmin},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2020}
}""",
    "dan": """@inproceedings{long2015dan,
  title     = {Learning Transferable Features with Deep Adaptation Networks},
  author    = {Long, Mingsheng and Cao, Yue and Wang, Jianmin and Jordan, Michael I.},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2015}
}""",
    "jan": """@inproceedings{long2017jan,
  title     = {Deep Transfer Learning with Joint Adaptation Networks},
  author    = {Long, Mingsheng and Zhu, Han and Wang, Jianmin and Jordan, Michael I.},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2017}
}""",
    "coral": """@inproceedings{sun2016deepcoral,
  title     = {Deep {CORAL}: Correlation Alignment for Deep Domain Adaptation},
  author    = {Sun, Baochen and Saenko, Kate},
  booktitle = {European Conference on Computer Vision Workshops (ECCV-W)},
  year      = {2016}
}""",
    "adda": """@inproceedings{tzeng2017adda,
  title     = {Adversarial Discriminative Domain Adaptation},
  author    = {Tzeng, Eric and Hoffman, Judy and Saenko, Kate and Darrell, Trevor},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2017}
}""",
    "lora": """@inproceedings{hu2022lora,
  title     = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author    = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "ia3": """@inproceedings{liu2022ia3,
  title     = {Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning},
  author    = {Liu, Haokun and Tam, Derek and Muqeeth, Mohammed and Mohta, Jay and Huang, Tenghao and Bansal, Mohit and Raffel, Colin},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2022}
}""",
}
