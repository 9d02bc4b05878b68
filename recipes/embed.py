"""Embedding transfer: train heads on cached features of a frozen encoder (sentence or context level).

Run:
    hftl run embed --config text/minilm_sentence_sst2 [key=value ...]
    hftl run embed --config text/minilm_context_sst2
    python recipes/embed.py --config recipes/configs/text/minilm_sentence_sst2.yaml   # same code

* **Sentence level** (``encoder: hftl.encoders.TextEncoder | AudioEncoder``): every example is encoded
  once into its pooled vector; the vectors are cached on disk (``cache:``) and the head trains on them.
* **Context level** (``encoder: hftl.embeddings.ContextTextEncoder | ContextAudioEncoder``): every
  layer's token/frame states are cached (when they fit in ``cache.max_states_gb``; otherwise the frozen
  encoder runs under ``no_grad`` at every step) and a scalar mix + token-level head + classifier train.
* **Shallow domain adaptation**: an optional ``method:`` (``hftl.adaptation.DANN``, ``CORAL``, ``DAN``...)
  with unlabelled ``target:`` data aligns the head's hidden features; a source-only head trains in the
  same run for comparison, and the checkpoint is chosen without target labels (``selection:``).

The output directory is an ordinary hftl model directory: ``hftl.load`` / ``hftl predict`` run the
encoder and the trained head on raw inputs.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig
from torch import nn

from hftl.adaptation.config import SelectionConfig
from hftl.adaptation.selection import CRITERIA, score
from hftl.adapters import Frozen
from hftl.config import get_component, instantiate, to_dataclass
from hftl.embeddings.cache import FeatureCache, cached_pooled, cached_states, default_cache_dir
from hftl.embeddings.config import CacheConfig, HeadTrainConfig
from hftl.embeddings.features import LiveStates, PooledFeatures, TokenStates, labels_of
from hftl.embeddings.train import EmbeddingModel, fit, predict
from hftl.errors import ConfigError, HftlError
from hftl.evaluation import classification_report, format_report, write_metrics
from hftl.models import Classifier, count_parameters
from hftl.models.io import MODEL_DIRNAME, save_model
from hftl.recipe import recipe_main
from hftl.training import TrainConfig
from hftl.training.builders import build_accelerator, build_scheduler, print_summary


class EmbedRecipe:
    """Heads on frozen-encoder features, cached on disk, with optional shallow domain adaptation."""

    RUNTIME_ARGS = {
        "head": {"in_features", "num_labels"},
        "optimizer": {"params"},
        "method": {"in_features", "num_classes"},
        "target": {"unlabeled_splits"},
    }
    SECTIONS = {"train": HeadTrainConfig, "cache": CacheConfig, "selection": SelectionConfig}
    REQUIRED = ("output_dir", "encoder", "head", "data", "optimizer")
    OPTIONAL = ("method", "target")  # top-level keys read when present (shallow domain adaptation)

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.train_cfg = to_dataclass(HeadTrainConfig, cfg.get("train"), key="train")
        self.cache_cfg = to_dataclass(CacheConfig, cfg.get("cache"), key="cache")
        self.selection = to_dataclass(SelectionConfig, cfg.get("selection"), key="selection")
        self.output_dir = Path(cfg.output_dir)
        self.seed = int(cfg.get("seed", 42))
        if "method" in cfg and "target" not in cfg:
            raise ConfigError(
                "`method` needs unlabelled target data: add a `target:` data node (train split)"
            )

    def _build(self, node: Any, **runtime: Any) -> Any:
        return instantiate(node, allow_any=self.allow_any, **runtime)

    # -- setup: data → encoder → features ---------------------------------------------------------
    def setup(self) -> None:
        tc = self.train_cfg
        self.accelerator = build_accelerator(
            TrainConfig(mixed_precision=tc.mixed_precision, cpu=tc.cpu), self.output_dir
        )
        if self.accelerator.num_processes > 1:
            raise HftlError("The embed recipe trains heads in one process; run it without --num-processes.")
        self.device = self.accelerator.device
        set_seed(self.seed)
        self.data = self._build(self.cfg.data)
        self.splits = self.data.load()
        if "train" not in self.splits:
            raise ConfigError(
                f"`data` has no train split (found {sorted(self.splits)}); map one with `data.splits`"
            )
        self.label_names = self.splits.label_names
        self.target = None
        if "target" in self.cfg:
            target = self._build(self.cfg.target, unlabeled_splits=["train"])
            self.target = target.load()
            if self.target.label_names != self.label_names:
                raise ConfigError(
                    f"`data` labels {self.label_names} differ from `target` labels {self.target.label_names}; "
                    "set `label_names` on both to the same list"
                )
        self.encoder = self._build(self.cfg.encoder)
        Frozen().apply(self.encoder)
        if self.encoder.modality != self.splits.modality:
            raise ConfigError(
                f"`encoder` is a {self.encoder.modality} encoder but `data` holds {self.splits.modality}; pick a matching encoder"
            )
        self.level = "states" if hasattr(self.encoder, "encode_states") else "pooled"
        if self.level == "pooled" and self.encoder.pool.method == "attention":
            raise ConfigError(
                "`encoder.pooling: attention` is trainable and cannot be cached; use cls, mean or stats, or the "
                "context level (`encoder._component_: hftl.embeddings.ContextTextEncoder`, `token_head: attention`)"
            )
        self.cache = FeatureCache(default_cache_dir(self.cache_cfg.dir))
        self.states_budget = self.cache_cfg.max_states_gb * 1e9
        self.feature_info: dict[str, dict[str, Any]] = {}
        self.sources = {f"source_{k}": self._source(f"source_{k}", ds) for k, ds in self.splits.items()}
        for name, ds in (self.target or {}).items():
            self.sources[f"target_{name}"] = self._source(f"target_{name}", ds)

    def _source(self, name: str, ds: Any) -> Any:
        """The features of one split: read from the cache, or encoded once (and cached), or live."""
        cc, enc, autocast = self.cache_cfg, self.encoder, self.accelerator.autocast
        start = time.perf_counter()
        kw = dict(
            cache=self.cache if cc.enabled else None, revision=self.cfg.encoder.get("revision"),
            precision=self.train_cfg.mixed_precision, device=self.device, batch_size=cc.encode_batch_size,
            autocast=autocast, num_workers=cc.num_workers,
        )  # fmt: skip
        if self.level == "pooled":
            features, hit = cached_pooled(enc, ds, **kw)
            source = PooledFeatures(features, labels_of(ds), device=self.device)
        else:
            states, hit = cached_states(enc, ds, dtype=cc.states_dtype, max_bytes=self.states_budget, **kw)
            if states is None:
                source = LiveStates(enc.to(self.device), ds, device=self.device, autocast=autocast)
            else:
                self.states_budget -= states[0].numel() * states[0].element_size()
                source = TokenStates(*states, labels_of(ds), device=self.device)
        mode = "cache" if hit else "live" if isinstance(source, LiveStates) else "encoded"
        seconds = round(time.perf_counter() - start, 3)
        self.feature_info[name] = {"examples": len(ds), "mode": mode, "seconds": seconds}
        self.accelerator.print(f"features {name}: {len(ds):,} examples, {mode} ({seconds:.1f} s)")
        return source

    # -- one head -----------------------------------------------------------------------------------
    def _model(self, method_node: Any | None) -> EmbeddingModel:
        set_seed(self.seed)
        head = self._build(
            self.cfg.head, in_features=self.encoder.out_features, num_labels=len(self.label_names)
        )
        pooler = copy.deepcopy(self.initial_pooler) if self.level == "states" else None
        method = None
        if method_node is not None:
            probe = EmbeddingModel(head, pooler=pooler)
            width = probe.bottleneck.eval()(torch.zeros(2, self.encoder.out_features)).shape[-1]
            if pooler is None and not any(p.requires_grad for p in probe.bottleneck.parameters()):
                raise ConfigError(
                    "`method` aligns trainable features, but on cached sentence embeddings a LinearHead has none: "
                    "use `head._component_: hftl.models.MLPHead` (its hidden layer is aligned) or a context-level encoder"
                )
            method = self._build(method_node, in_features=width, num_classes=len(self.label_names))
            if getattr(method, "two_stage", False) or getattr(method, "uses_target_labels", False):
                raise ConfigError(
                    f"`method` {type(method).__name__} is not available on cached features; use DANN, CDAN, MDD, MCC, DAN, JAN, CORAL or SelfTraining"
                )
        return EmbeddingModel(head, pooler=pooler, method=method).to(self.device)

    def _report(self, model: EmbeddingModel, name: str) -> dict[str, Any]:
        source = self.sources[name]
        _, logits = predict(model, source, batch_size=self.train_cfg.eval_batch_size)
        report = classification_report(
            logits.argmax(-1).cpu().numpy(), source.labels.cpu().numpy(), self.label_names
        )
        return {**report, "loss": float(nn.functional.cross_entropy(logits, source.labels))}

    def _adaptation_scores(self, model: EmbeddingModel) -> dict[str, float]:
        """Every label-free selection criterion, plus target test accuracy (reported, never used to select)."""
        bs = self.train_cfg.eval_batch_size
        f_val, z_val = predict(model, self.sources["source_validation"], batch_size=bs)
        f_tr, _ = predict(model, self.sources["source_train"], batch_size=bs, indices=self.subsets["source"])
        f_t, z_t = predict(model, self.sources["target_train"], batch_size=bs, indices=self.subsets["target"])
        y_val = self.sources["source_validation"].labels
        inputs = {
            "probs_s_val": z_val.softmax(-1), "labels_s_val": y_val, "probs_t": z_t.softmax(-1), "features_t": f_t,
            "features_s_train": f_tr, "features_s_val": f_val,
            "losses_s_val": nn.functional.cross_entropy(z_val, y_val, reduction="none"),
        }  # fmt: skip
        scores = {name: score(inputs, name) for name in CRITERIA}
        if "target_test" in self.sources:
            scores["target_test_acc"] = self._report(model, "target_test")["accuracy"]
        return scores

    def train_one(self, name: str, method_node: Any | None) -> tuple[EmbeddingModel, dict[str, Any]]:
        tc = self.train_cfg
        model = self._model(method_node)
        optimizer = self._build(self.cfg.optimizer, params=[p for p in model.parameters() if p.requires_grad])
        total = tc.max_steps or tc.epochs * -(-len(self.sources["source_train"]) // tc.batch_size)
        scheduler = build_scheduler(tc, optimizer, total_steps=total, num_processes=1)
        adapting = method_node is not None
        if adapting:
            evaluate, metric = (lambda: self._adaptation_scores(model)), self.selection.criterion
            higher = CRITERIA[metric].higher_is_better
        elif "source_validation" in self.sources:
            keys = ("accuracy", "macro_f1", "loss")
            evaluate = lambda: {k: self._report(model, "source_validation")[k] for k in keys}  # noqa: E731
            metric, higher = tc.metric_for_best, tc.metric_for_best != "loss"
        else:
            evaluate, metric, higher = None, tc.metric_for_best, True
        trainable, _ = count_parameters(model)
        self.accelerator.print(
            f"***** Training {name}: {trainable:,} trainable parameters, {total} steps *****"
        )
        result = fit(
            model, self.sources["source_train"], optimizer=optimizer, scheduler=scheduler, config=tc,
            evaluate=evaluate, metric=metric, higher_is_better=higher,
            target=self.sources.get("target_train") if adapting else None, seed=self.seed, log=self.accelerator.print,
        )  # fmt: skip
        out: dict[str, Any] = {
            "steps": result.steps, "best_step": result.best_step, "selection": {metric: result.best_metric},
            "epoch_seconds": [round(s, 4) for s in result.epoch_seconds], "epoch_examples": result.epoch_examples,
            "history": result.history,
        }  # fmt: skip
        for split in ("validation", "test"):
            if f"source_{split}" in self.sources:
                out[split] = self._report(model, f"source_{split}")
        if "target_test" in self.sources:
            out["target_test_acc"] = self._report(model, "target_test")["accuracy"]
        return model, out

    # -- run ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.setup()
        self.initial_pooler = copy.deepcopy(self.encoder.pool) if self.level == "states" else None
        trainable = "scalar mix + token head + head" if self.level == "states" else "head"
        print_summary(self.accelerator, "Embedding transfer", {
            "Encoder": f"{self.encoder.name_or_path} ({self.encoder.modality}, frozen)",
            "Level": "context (all layers, token-level head)" if self.level == "states" else f"sentence (pooling {self.encoder.pool.method}, layer {self.encoder.layer})",
            "Trained": trainable,
            "Examples": ", ".join(f"{k} {len(v):,}" for k, v in self.sources.items()),
            "Epochs / batch size": f"{self.train_cfg.epochs} / {self.train_cfg.batch_size}",
            "Device / cache": f"{self.device} / {self.cache.root}",
        })  # fmt: skip
        metrics: dict[str, Any] = {
            "level": "context" if self.level == "states" else "sentence",
            "features": self.feature_info,
        }
        if "method" in self.cfg:
            metrics |= self._run_adaptation()
        else:
            self.model, result = self.train_one("head", None)
            metrics |= result
            for split in ("validation", "test"):
                if split in result:
                    self.accelerator.print(
                        format_report(result[split], title=f"{split} ({len(self.splits[split])} examples)")
                    )
        self.save(metrics)
        return metrics

    def _run_adaptation(self) -> dict[str, Any]:
        if "source_validation" not in self.sources:
            raise ConfigError(
                "`method` selects checkpoints on source validation data: give `data` a validation split"
            )
        rng = np.random.default_rng(self.seed)
        self.subsets = {
            side: torch.as_tensor(np.sort(rng.choice(len(src), size=min(cap, len(src)), replace=False)))
            for side, src, cap in (
                ("source", self.sources["source_train"], self.selection.max_source_samples),
                ("target", self.sources["target_train"], self.selection.max_target_samples),
            )
        }
        _, source_only = self.train_one("source_only", None)
        method_name = get_component(self.cfg.method._component_, allow_any=self.allow_any).name
        self.model, adapted = self.train_one(method_name, self.cfg.method)
        results = {"source_only": source_only, method_name: adapted}
        lines = [f"***** Shallow adaptation on frozen features (selection: {self.selection.criterion}) *****"]
        for name, r in results.items():
            lines.append(f"{name:<16} target test acc {100 * r.get('target_test_acc', float('nan')):6.2f} %   "
                         f"source val acc {100 * r['validation']['accuracy']:6.2f} %")  # fmt: skip
        if adapted.get("target_test_acc", 1.0) < source_only.get("target_test_acc", 0.0):
            lines.append(
                f"WARNING: negative transfer: {method_name} is below source-only on the target test set."
            )
        self.accelerator.print("\n".join(lines))
        return {"method": method_name, "results": results, "target_test_acc": adapted.get("target_test_acc")}

    def save(self, metrics: dict[str, Any]) -> None:
        encoder = self.encoder.cpu()
        if self.level == "states":
            encoder.pool = self.model.pooler
        classifier = Classifier(encoder, self.model.head, self.label_names).cpu()
        path = save_model(
            classifier,
            self.output_dir / MODEL_DIRNAME,
            adapter_kind="frozen",
            config=self.cfg,
            metrics=metrics,
        )
        write_metrics(self.output_dir / "metrics.json", metrics)
        self.accelerator.print(f"Model written to {path}; metrics in {self.output_dir / 'metrics.json'}")
        self.accelerator.end_training()


RECIPE = EmbedRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(EmbedRecipe, argv, prog="hftl run embed")


if __name__ == "__main__":
    raise SystemExit(main())
