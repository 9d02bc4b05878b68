"""Model cards for trained hftl models: front matter the Hub indexes, results, plots, config, citations.

``render_card(output_dir)`` reads what a run left behind (``model/hftl_model.json``, ``config.yaml``,
``metrics.json``, ``tasks.json``, ``features_<method>.png``), draws the plots into ``model/plots/`` and
writes ``model/README.md`` from the recipe family's Jinja template (``hftl/hub/templates/<family>.md.j2``,
which imports the pieces every card shares from ``_macros.md.j2``). Every recipe has a family: ``finetune``,
``adapt`` (template ``adaptation``), ``embed``, ``distill``, ``multitask``, ``fewshot`` and ``meta``; what
each shows is read by :mod:`hftl.hub.card_contexts` (with the readers of :mod:`hftl.hub.run_files`; BibTeX
in :mod:`hftl.hub.citations`). The YAML front matter is
:class:`huggingface_hub.ModelCardData` (``base_model``, ``library_name``, ``pipeline_tag``, ``datasets``,
``language``, ``license``, ``tags``, ``model-index``), so it is the one the Hub parses.

A card is rendered into a temporary folder first and installed into ``model/`` only when complete;
``model/.hftl_card.json`` records the hash of the README hftl wrote and the plots it drew
(:mod:`hftl.hub.card_files`). A README that
differs from that hash (or that hftl did not write) is the user's: ``hftl card`` refuses to replace it
without ``--force`` and ``hftl push`` uploads it unchanged. Every value a template shows is escaped for
Markdown and HTML (:mod:`hftl.hub.markdown`); config values are read with environment interpolations
kept as text (:func:`hftl.config.record_config`), so no secret from the environment reaches a card.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from markupsafe import Markup
from omegaconf import OmegaConf

from hftl.errors import HftlError, ModelLoadError
from hftl.hub.card_contexts import BUILDERS, infer_recipe
from hftl.hub.card_files import CARD_FILE, CardEditedError, card_state, install_card
from hftl.hub.citations import CITATIONS
from hftl.hub.markdown import environment
from hftl.hub.plots import PLOTS_DIRNAME, plot_confusion_matrix, safe_stem, write_plots
from hftl.hub.run_files import (
    ADAPTER_NAMES,
    HUB_ID,
    RunFiles,
    adapter_title,
    args_of,
    data_paths,
    hub_path,
    plain,
    read_config,
    read_json,
)
from hftl.models.io import META_FILE, MODEL_DIRNAME, find_model_dir

PIPELINE_TAGS = {
    "text": "text-classification",
    "audio": "audio-classification",
    "image": "image-classification",
}
ADAPTER_TAGS = {"peft": None, "full": "full-finetune", "frozen": "linear-probe"}  # peft: the adapter's name
# The adapter a saved model implies when its config names none (``init_from`` models, embed's frozen encoder).
KIND_ADAPTERS = {"full": "hftl.adapters.FullFinetune", "frozen": "hftl.adapters.Frozen"}
PEFT_ADAPTERS = {"LORA": "hftl.adapters.Lora", "IA3": "hftl.adapters.IA3"}
# Shared data sets whose Hub id and language are known: (substring of a data path, Hub id or None, language).
KNOWN_DATA: list[tuple[str, str | None, str]] = [
    ("SST-2", "stanfordnlp/sst2", "en"),
    ("amazon_mds", None, "en"),
    ("fsdd", None, "en"),
    ("spoken_digits", None, "en"),
]
VERSIONED = ("hftl", "torch", "transformers", "peft", "accelerate", "datasets", "huggingface_hub")


def render_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | None = None,
    datasets: list[str] | None = None,
    force: bool = False,
) -> Path:
    """(Re)writes ``README.md`` and ``plots/`` of a run's model directory; returns the README path.

    Args:
        output_dir: the ``output_dir`` of a finished ``hftl run`` (or its ``model/`` folder).
        repo_id: Hub repo the card will live in (used in the loading example); default: the folder name.
        license: license identifier for the front matter (e.g. ``apache-2.0``); default ``unknown``:
            the license of a fine-tuned model follows its base model and data, which hftl cannot know.
        language: language code(s) of text/speech data; default: inferred for the shared data sets.
        datasets: Hub dataset ids trained/evaluated on; default: inferred when the data is a Hub id.
        force: replace a ``README.md`` that was edited after hftl wrote it (or that hftl did not write).

    Raises:
        ModelLoadError: ``output_dir`` holds no hftl model, or one written by a recipe without a card.
        CardEditedError: ``README.md`` is the user's and ``force`` is not set.
    """
    model_dir = find_model_dir(_local(output_dir))
    if card_state(model_dir) == "edited" and not force:
        raise CardEditedError(
            f"{model_dir / CARD_FILE} was edited after hftl wrote it (or hftl did not write it), so `hftl card` "
            "keeps it. Pass --force to replace it with a freshly rendered card (your edits are lost), or move "
            "it out of the folder first."
        )
    with tempfile.TemporaryDirectory(prefix="hftl-card-") as staged:
        stage_card(
            model_dir, Path(staged), repo_id=repo_id, license=license, language=language, datasets=datasets
        )
        install_card(Path(staged), model_dir)
    return model_dir / CARD_FILE


def stage_card(model_dir: Path, dest: Path, **card_args: Any) -> list[str]:
    """Renders the card of ``model_dir`` into the empty folder ``dest``: ``README.md`` and ``plots/``.

    Args:
        model_dir: an hftl model directory.
        dest: where to write; ``model_dir`` itself is never written.
        card_args: ``repo_id``, ``license``, ``language``, ``datasets`` of :func:`render_card`.

    Returns:
        The files written, relative to ``dest`` (``README.md`` first).
    """
    card = build_card(model_dir, plots_dir=dest, **card_args)
    (dest / CARD_FILE).write_text(str(card), encoding="utf-8")
    plots = sorted((dest / PLOTS_DIRNAME).iterdir()) if (dest / PLOTS_DIRNAME).is_dir() else []
    return [CARD_FILE, *(f"{PLOTS_DIRNAME}/{p.name}" for p in plots)]


def build_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    language: str | None = None,
    datasets: list[str] | None = None,
    plots_dir: Path | None = None,
):
    """The :class:`huggingface_hub.ModelCard` of a run; plots are drawn into ``plots_dir/plots`` when given."""
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = find_model_dir(_local(output_dir))
    ctx = card_context(model_dir, repo_id=repo_id, plots_dir=plots_dir)
    hints = [h for node in ctx["data_nodes"] for h in _hints(node)]
    data_ids = datasets if datasets is not None else sorted({h[0] for h in hints if h[0]})
    data = ModelCardData(
        base_model=ctx["base_model_id"],
        library_name=ctx["library_name"],
        pipeline_tag=ctx["pipeline_tag"],
        datasets=data_ids or None,
        language=language or next((h[1] for h in hints if h[1]), None),
        license=license or "unknown",
        tags=list(dict.fromkeys(t for t in ["hftl", ctx["modality"], *ctx["tags"]] if t)),
        model_name=ctx["model_id"],
        eval_results=_eval_results(ctx) or None,
    )
    # What ModelCard.from_template does, through hftl's escaping environment (templates import the shared
    # `_macros.md.j2`). The front matter is huggingface_hub's YAML: marked safe, then parsed back below.
    template = environment().get_template(f"{ctx['family']}.md.j2")
    card = ModelCard(template.render(**(data.to_dict() | ctx), card_data=Markup(data.to_yaml())))
    if card.data.to_dict() != ModelCard(f"---\n{data.to_yaml()}\n---\n").data.to_dict():
        raise HftlError(  # the body cannot reach the front matter; this guards the templates themselves
            f"Internal error: the card of {model_dir} changed its own front matter; please report it."
        )
    return card


def card_context(
    model_dir: Path, *, repo_id: str | None = None, plots_dir: Path | None = None
) -> dict[str, Any]:
    """Everything a template shows, read from the model directory and its run directory.

    Plots are drawn into ``plots_dir/plots`` (never into ``model_dir``); ``None`` draws none.
    """
    meta = json.loads((model_dir / META_FILE).read_text())
    cfg = read_config(model_dir / "config.yaml")
    run_dir = model_dir.parent if model_dir.name == MODEL_DIRNAME else None
    metrics = read_json(run_dir / "metrics.json") if run_dir else None
    metrics = metrics or read_json(model_dir / "metrics.json") or {}
    recipe = infer_recipe(cfg, metrics)
    if recipe not in BUILDERS:
        raise ModelLoadError(
            f"{model_dir / 'config.yaml'}: recipe {recipe!r} has no model card template; templates exist for "
            f"the recipes {', '.join(f'`{r}`' for r in BUILDERS)} (hftl/hub/templates/). Set `recipe:` in "
            "config.yaml to the recipe that trained the model."
        )
    template, builder = BUILDERS[recipe]
    adapter_target, adapter_args = _adapter(cfg, meta, model_dir)
    adapter_name = ADAPTER_NAMES.get(adapter_target, adapter_target.rsplit(".", 1)[-1])
    base = str(meta["base_model"])
    ctx: dict[str, Any] = {
        "family": template,
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
        "adapter_name": adapter_name,
        "adapter_args": adapter_args,
        "adapter_title": adapter_title(adapter_target),
        "adapter_tag": ADAPTER_TAGS.get(meta["adapter"]) or adapter_name,
        "encoder_args": {k: v for k, v in args_of(cfg.encoder).items() if k != "model"},
        "head": str((cfg.get("head") or {}).get("_component_", "")).rsplit(".", 1)[-1],
        "head_args": args_of(cfg.get("head")),
        "optimizer": str(cfg.optimizer.get("_component_", "")),
        "optimizer_args": args_of(cfg.optimizer),
        "train_args": plain(cfg.get("train")) or {},
        "seed": cfg.get("seed", 42),
        "config_yaml": OmegaConf.to_yaml(cfg, resolve=True).strip(),  # ${oc.env:...} kept as text
        "command": _command(recipe, cfg),
        "versions": _versions(),
        # Hub ids load only with hf://
        "load_path": f"hf://{repo_id}" if repo_id else str(run_dir or model_dir),
    }
    run = RunFiles(model_dir=model_dir, run_dir=run_dir, cfg=cfg, meta=meta, metrics=metrics, recipe=recipe)
    ctx.update(builder(run, ctx))
    keys = [*ctx["citations"], adapter_name]  # the method's paper(s) first, then the adapter's
    ctx["citations"] = [Markup(CITATIONS[k]) for k in dict.fromkeys(keys) if k in CITATIONS]  # hftl's own
    ctx["plots"] = write_plots(plots_dir, run_dir, ctx) if plots_dir is not None else {}
    if plots_dir is not None:
        ctx["plots"].update(_confusion_plots(plots_dir, ctx.get("confusions") or []))
    return ctx


def _adapter(cfg: Any, meta: dict[str, Any], model_dir: Path) -> tuple[str, dict[str, Any]]:
    """The adapter's component and arguments: the config's, else the one the saved encoder implies."""
    if cfg.get("adapter") is not None:
        return str(cfg.adapter.get("_component_", "")), args_of(cfg.adapter)
    if meta["adapter"] == "peft":
        peft = read_json(model_dir / "encoder" / "adapter_config.json") or {}
        kind = str(peft.get("peft_type", "peft"))
        return PEFT_ADAPTERS.get(kind, kind.lower()), {"r": peft["r"]} if "r" in peft else {}
    return KIND_ADAPTERS.get(meta["adapter"], meta["adapter"]), {}


# Nodes a recipe adds to the saved config.yaml only so that `hftl.load` rebuilds its model like a finetune
# output (the save steps of recipes/distill.py and recipes/multitask.py); the recipe itself does not read
# them, so the re-run command deletes them. tests/test_card.py validates that command on a saved config.
LOADING_NODES = {"distill": ("encoder", "adapter", "head"), "multitask": ("head",)}


def _command(recipe: str, cfg: Any) -> str:
    """The command that re-runs the saved config: the nodes the recipe added for loading are dropped."""
    drop = [k for k in LOADING_NODES.get(recipe, ()) if k in cfg]
    if recipe == "multitask" and cfg.get("init_from"):
        drop.append("encoder")  # the encoder comes from `init_from`
    return f"hftl run {recipe} --config config.yaml" + "".join(
        f" {shlex.quote(f'~{k}')}" for k in sorted(set(drop))
    )


def _confusion_plots(dest: Path, confusions: list[tuple[str, str, list, list[str]]]) -> dict[str, str]:
    """Extra confusion matrices (one per task of a multi-task model) next to :func:`write_plots`' ones.

    File names come from task names, which a config chose: :func:`safe_stem` keeps them inside ``plots/``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return {}
    plots: dict[str, str] = {}
    for i, (title, stem, matrix, labels) in enumerate(confusions):
        name = f"{safe_stem(stem)}.png"
        if (dest / PLOTS_DIRNAME / name).exists():  # two task names that differ only in unsafe characters
            name = f"{safe_stem(stem)}_{i}.png"
        (dest / PLOTS_DIRNAME).mkdir(exist_ok=True)
        plot_confusion_matrix(matrix, labels, dest / PLOTS_DIRNAME / name, title=title)
        plots[title] = f"{PLOTS_DIRNAME}/{name}"
    return plots


def _eval_results(ctx: dict[str, Any]) -> list:
    """model-index entries from the family's ``eval_rows``."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=PIPELINE_TAGS[ctx["modality"]],
            dataset_type=hub_path(row.node)
            or re.sub(r"\W+", "-", row.name.split(" (")[0]).strip("-").lower()
            or "custom",
            dataset_name=row.name,
            dataset_config=row.config,
            dataset_split=row.split,
            metric_type=row.metric,
            metric_name=row.title,
            metric_value=round(float(row.value), 4),
        )
        for row in ctx["eval_rows"]
    ]


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


def _hints(node: dict[str, Any]) -> list[tuple[str | None, str]]:
    found = [(hub_id, lang) for key, hub_id, lang in KNOWN_DATA if any(key in p for p in data_paths(node))]
    if not found and hub_path(node):
        found.append((hub_path(node), ""))  # a Hub dataset id: language unknown
    return found


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
