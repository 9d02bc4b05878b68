"""``hftl export --onnx`` on the model every shipped config produces: exported or refused, and the parity.

One command::

    python benchmarks/export_configs.py

For each shipped config (``hftl ls``) the model its recipe saves is built from the config's own nodes
(encoder class, pooling or token head, adapter, head, multi-task heads, distilled student layers) and saved
as a model directory with moved-off-init weights; Hub encoders are replaced by hftl's tiny random
encoders of the same architecture (all-MiniLM-L6-v2 → tiny BERT, wav2vec2-base → tiny wav2vec2) so the
run needs no download and little CPU; encoders built from a config (the speech CNN-transformer, ResNet,
LeNet) keep their real sizes. Configs that give the same model structure are exported once. The table
(config, model, exporter, max |logit difference|) goes to ``benchmarks/results/export_configs.md``;
``benchmarks/inference.py`` exports the real MiniLM and speech models.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
HUB_SUBSTITUTES = {"sentence-transformers/all-MiniLM-L6-v2": "bert", "facebook/wav2vec2-base": "wav2vec2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export_configs.md")
    parser.add_argument("--configs", nargs="*", help="Only these shipped configs (default: all).")
    args = parser.parse_args()
    from hftl.config import list_shipped_configs, load_config
    from hftl.encoders import save_tiny_encoder

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="hftl-export-configs-"))
    tiny = {
        kind: str(save_tiny_encoder(kind, work / "tiny" / kind)) for kind in set(HUB_SUBSTITUTES.values())
    }
    done: dict[str, dict[str, Any]] = {}
    rows = []
    for name in args.configs or list_shipped_configs():
        cfg = load_config(name)
        recipe = str(cfg.get("recipe", "finetune"))
        if recipe == "assess":
            continue  # ranks encoders, trains no model
        model = model_nodes(cfg, recipe, tiny)
        key = json.dumps(model, sort_keys=True)
        if key not in done:
            done[key] = export_one(model, work / f"m{len(done)}")
        rows.append({"config": name, "recipe": recipe, **done[key]})
        print(json.dumps(rows[-1]), flush=True)
    write(args.out, rows)


def model_nodes(cfg: Any, recipe: str, tiny: dict[str, str]) -> dict[str, Any]:
    """The encoder, adapter, heads and student layers of the model ``recipe`` saves, as plain data."""
    from hftl.config import load_config

    plain = OmegaConf.to_container(cfg, resolve=False)
    heads = {t: node["head"] for t, node in (plain.get("tasks") or {}).items()}
    if "encoder" not in plain and "init_from" in plain:  # LwF: the kept task's model, plus the new heads
        base = OmegaConf.to_container(load_config("text/minilm_lora_sst2"), resolve=False)
        plain = {**plain, "encoder": base["encoder"], "adapter": base["adapter"]}
        heads = {plain["lwf"]["task"]: base["head"], **heads}
    encoder = plain["student"]["encoder"] if recipe == "distill" else plain["encoder"]
    head = plain["student"]["head"] if recipe == "distill" else plain.get("head")
    head = head or {"_component_": "hftl.models.LinearHead", "dropout": 0.0}  # meta: a zero-ready N-way head
    encoder = dict(encoder)
    if isinstance(encoder["model"], str):
        encoder["model"] = tiny[HUB_SUBSTITUTES[encoder["model"]]]
    adapter = plain.get("adapter") or {
        "_component_": "hftl.adapters.Frozen" if recipe == "embed" else "hftl.adapters.FullFinetune"
    }
    if recipe == "distill":
        adapter = {"_component_": "hftl.adapters.FullFinetune"}
    labels = (plain.get("data") or plain.get("source") or {}).get("label_names") or ["0", "1"]
    return {
        "encoder": encoder,
        "adapter": adapter,
        "heads": heads or {"main": head},
        "labels": [str(x) for x in labels],
        "student_layers": [0] if recipe == "distill" else None,  # a 1-layer cut of the 2-layer tiny BERT
    }


def export_one(nodes: dict[str, Any], root: Path) -> dict[str, Any]:
    from hftl.config import instantiate
    from hftl.export.exporter import OnnxExportError, export_onnx
    from hftl.models.compress import keep_layers
    from hftl.models.io import save_model
    from hftl.models.multitask import MultiTaskClassifier, save_tasks

    torch.manual_seed(0)
    encoder = instantiate(OmegaConf.create(nodes["encoder"]))
    if nodes["student_layers"]:
        keep_layers(encoder, nodes["student_layers"])
    adapter = instantiate(OmegaConf.create(nodes["adapter"]))
    encoder = adapter.apply(encoder)
    heads = {
        task: instantiate(
            OmegaConf.create(head), in_features=encoder.out_features, num_labels=len(nodes["labels"])
        )
        for task, head in nodes["heads"].items()
    }
    model = MultiTaskClassifier(encoder, heads, {task: nodes["labels"] for task in heads})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    first = next(iter(heads))
    config = OmegaConf.create({"encoder": nodes["encoder"], "head": nodes["heads"][first]})
    path = save_model(model.task_classifier(first), root / "model", adapter_kind=adapter.kind, config=config)
    if len(heads) > 1:
        save_tasks(model, path, head_configs=nodes["heads"])
    start = time.perf_counter()
    try:
        spec = export_onnx(root, root / "onnx")
    except OnnxExportError as err:
        return {"model": describe(nodes, adapter.kind), "exported": f"refused: {err}", "seconds": 0.0}
    parity = spec["export"]["parity"]
    return {
        "model": describe(nodes, adapter.kind),
        "exported": f"yes ({spec['export']['exporter']})",
        "max_abs_diff": parity["max_abs_diff"],
        "failed": spec["export"]["failed_exporters"],
        "outputs": len(spec["outputs"]),
        "seconds": round(time.perf_counter() - start, 1),
    }


def describe(nodes: dict[str, Any], kind: str) -> str:
    enc = nodes["encoder"]
    model = enc["model"] if isinstance(enc["model"], str) else enc["model"]["_component_"].rsplit(".", 1)[-1]
    model = "tiny " + Path(model).name if isinstance(enc["model"], str) else model
    pooling = enc.get("token_head", enc.get("pooling", "mean"))
    heads = ", ".join(h["_component_"].rsplit(".", 1)[-1] for h in nodes["heads"].values())
    extra = f", {len(nodes['heads'])} task heads" if len(nodes["heads"]) > 1 else ""
    extra += ", 1-layer student" if nodes["student_layers"] else ""
    return f"{enc['_component_'].rsplit('.', 1)[-1]}({model}, {pooling}) + {kind} + {heads}{extra}"


def write(out: Path, rows: list[dict[str, Any]]) -> None:
    refusals = list(dict.fromkeys(r["exported"].split(": ", 1)[1] for r in rows if "max_abs_diff" not in r))
    lines = [
        "# `hftl export --onnx` on every shipped config's model",
        "",
        f"Command: `python benchmarks/export_configs.py` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}). "
        "Each config's model structure, built from its own nodes with Hub encoders replaced by tiny random "
        "ones of the same architecture (see the script's docstring); the parity check compares onnxruntime with "
        "the PyTorch model on synthetic inputs of varied lengths, padded and single-row batches (atol 1e-4). "
        "Configs that give the same structure share one export (its time is shown on each). The real "
        "all-MiniLM-L6-v2 and speech models, with real rows, are in `inference.md`.",
        "",
        "| config | recipe | model (encoder, pooling / token head, adapter, head) | exported | exporter "
        "| max abs diff | export s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "max_abs_diff" in r:
            exported, exporter = "yes", r["exported"].removeprefix("yes (").rstrip(")")
            diff, seconds = f"{r['max_abs_diff']:.1e}", f"{r['seconds']:.0f}"
        else:
            note = refusals.index(r["exported"].split(": ", 1)[1]) + 1
            exported, exporter, diff, seconds = f"refused ({note})", "-", "-", "-"
        lines.append(
            f"| `{r['config']}` | {r['recipe']} | {r['model']} | {exported} | {exporter} | {diff} | {seconds} |"
        )
    lines += ["", *(f"({i}) {reason}" for i, reason in enumerate(refusals, 1))]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
