"""Unsupervised domain adaptation: labelled source + unlabelled target → a classifier for the target.

Run:
    hftl run adapt --config text/minilm_lora_dann_books_kitchen [key=value ...]
    hftl run adapt --config ... method._component_=hftl.adaptation.CORAL     # switch the method in one line
    python recipes/adapt.py --config recipes/configs/...                       # same code

One run trains the configured ``method`` and the ``report.baselines`` (``source_only``: no adaptation;
``target_oracle``: trained on labelled target data, the upper bound) with the same encoder, adapter and
budget, and prints the adapted number beside both. With an ``intermediate:`` data node the run is
transitive (``hftl.adaptation.transitive``): source → intermediate, then from those weights → target,
reported beside the direct source → target run. Target *training* data is loaded without its label
column (dropped at load time); only the final evaluator reads target test labels. The checkpoint is
chosen by a label-free criterion (``selection.criterion``), never by target labels.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hftl.adaptation.config import ReportConfig, SelectionConfig
from hftl.adaptation.diagnostics import plot_domains, proxy_a_distance
from hftl.adaptation.selection import CRITERIA, score
from hftl.adaptation.transitive import TransitiveConfig, label_counts, pseudo_labelled
from hftl.config import instantiate, to_dataclass
from hftl.data.paired import PairedLoader
from hftl.data.streaming import is_stream
from hftl.data.tokenized import pretokenize
from hftl.errors import ConfigError
from hftl.evaluation import write_metrics
from hftl.models import Classifier, count_parameters
from hftl.models.io import save_model
from hftl.recipe import recipe_main
from hftl.training import Engine, LayerwiseConfig, TrainConfig, steps_for
from hftl.training.builders import (
    batches_per_epoch,
    build_accelerator,
    build_loader,
    build_optimizer,
    build_scheduler,
    build_unfreezer,
    describe_layerwise,
    describe_splits,
    print_summary,
    train_lengths,
)
from hftl.training.run_dir import record_output

BASELINES = {"source_only": "hftl.adaptation.SourceOnly", "target_oracle": "hftl.adaptation.TargetOracle"}


class AdaptModel(nn.Module):
    """The classifier plus the method's own modules (discriminator, adversarial head), trained together.

    Two-stage methods (ADDA) also hold a frozen ``source_encoder``: a copy of the encoder taken when
    stage 2 starts. It lives in the model so checkpoints (and resume) carry it.
    """

    def __init__(self, classifier: Classifier, method: nn.Module):
        super().__init__()
        self.classifier, self.method = classifier, method
        self.source_encoder: nn.Module | None = None
        if getattr(method, "two_stage", False):
            self.source_encoder = copy.deepcopy(classifier.encoder).requires_grad_(False).eval()
            self.register_buffer("stage2_started", torch.zeros((), dtype=torch.bool))

    def forward(self, **inputs: torch.Tensor):
        return self.classifier(**inputs)

    def start_stage2(self) -> None:
        """ADDA stage 2: freeze the source encoder at its stage-1 weights and the head; the encoder goes on
        training as the *target* encoder. Idempotent, re-applied after a resume."""
        if not bool(self.stage2_started):
            self.source_encoder.load_state_dict(self.classifier.encoder.state_dict())
            self.stage2_started.fill_(True)
        self.classifier.head.requires_grad_(False)
        self.source_encoder.eval()


def adda_step(model: AdaptModel, xs: dict, xt: dict, *, progress: float) -> Any:
    """Stage-2 ADDA loss: discriminator vs target encoder, source features from the frozen copy."""
    with torch.no_grad():
        f_s = model.source_encoder(**xs).pooled
    out_t = model(**xt)
    return model.method(f_s=f_s, f_t=out_t.features, logits_s=None, logits_t=out_t.logits, progress=progress)


class AdaptRecipe:
    """Source → target adaptation with a configurable method, baselines and label-free selection."""

    RUNTIME_ARGS = {
        "head": {"in_features", "num_labels"},
        "optimizer": {"params"},
        "method": {"in_features", "num_classes"},
        "target": {"unlabeled_splits"},
        "intermediate": {"unlabeled_splits"},
    }
    SECTIONS = {
        "train": TrainConfig, "train.layerwise": LayerwiseConfig, "selection": SelectionConfig,
        "report": ReportConfig, "transitive": TransitiveConfig,
    }  # fmt: skip
    REQUIRED = ("output_dir", "encoder", "adapter", "head", "source", "target", "method", "optimizer")
    OPTIONAL = ("intermediate", "push_to_hub")  # top-level keys read when present
    STREAMING = True  # `data.streaming: true` (train splits read lazily) is supported

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.train_cfg = to_dataclass(TrainConfig, cfg.get("train"), key="train")
        self.selection = to_dataclass(SelectionConfig, cfg.get("selection"), key="selection")
        self.report = to_dataclass(ReportConfig, cfg.get("report"), key="report")
        self.transitive = to_dataclass(TransitiveConfig, cfg.get("transitive"), key="transitive")
        self.output_dir = Path(cfg.output_dir)
        self.seed = int(cfg.get("seed", 42))

    def _build(self, node: Any, **runtime: Any) -> Any:
        return instantiate(node, allow_any=self.allow_any, **runtime)

    # -- data --------------------------------------------------------------------------------------
    def _target(self, *, labelled: bool, key: str = "target"):
        node = self.cfg[key]
        defaults = {"validation_size": 0} if key == "target" else {"validation_size": 0, "test_size": 0}
        extra = {k: v for k, v in defaults.items() if k not in node}
        data = self._build(node, unlabeled_splits=[] if labelled else ["train"], **extra)
        return data, data.load()

    def load_data(self) -> None:
        self.source_data = self._build(self.cfg.source)
        self.source = self.source_data.load()
        self.target_data, self.target = self._target(labelled=False)  # label column dropped at load time
        self.label_names = self.source.label_names
        self.intermediate = None  # transitive transfer: unlabelled like the target
        if self.cfg.get("intermediate") is not None:
            data, self.intermediate = self._target(labelled=False, key="intermediate")
            if any(is_stream(d["train"]) for d in (self.source, self.target, self.intermediate)):
                raise ConfigError(
                    "Transitive transfer (`intermediate:`) pseudo-labels whole train splits, which streamed "
                    "data does not allow; set `streaming: false` in `source`, `intermediate` and `target`."
                )
            if self.intermediate.label_names and self.intermediate.label_names != self.label_names:
                raise ConfigError(
                    f"`intermediate` labels {self.intermediate.label_names} differ from `source` labels {self.label_names}; "
                    "set `label_names` on both to the same list"
                )
        if self.target.label_names != self.label_names:
            raise ConfigError(
                f"`source` labels {self.label_names} differ from `target` labels "
                f"{self.target.label_names}; set `label_names` on both to the same list"
            )
        checks = [
            ("source", self.source, ("train", "validation")),
            ("target", self.target, ("train", "test")),
        ]
        if self.intermediate is not None:
            checks.append(("intermediate", self.intermediate, ("train",)))
        for name, splits, needed in checks:
            missing = [s for s in needed if s not in splits]
            if missing:
                raise ConfigError(
                    f"`{name}` data lacks split(s) {missing}; found {sorted(splits)}. Map them with `{name}.splits`."
                )

    # -- one method --------------------------------------------------------------------------------
    def _loaders(self, encoder, method, source: dict, target: dict) -> tuple[Any, dict[str, Any]]:
        """Training batches and the evaluation loaders; ``target`` is the domain adapted to (the
        intermediate in stage 1 of a transitive run), the test split is always the final target's."""
        tc, acc = self.train_cfg, self.accelerator

        def loader(ds, *, train: bool, shuffle: bool, seed: int = self.seed):
            if getattr(encoder, "pretokenize", False):  # text: tokenized once, cached across runs
                with acc.main_process_first():
                    ds = pretokenize(ds, encoder.processor, max_length=encoder.max_length)
            return acc.prepare(build_loader(
                ds, collate_fn=encoder.collator(train=train), batch_size=tc.batch_size if train else tc.eval_batch_size or 2 * tc.batch_size,
                shuffle=shuffle, seed=seed, num_workers=tc.num_workers,
                lengths=train_lengths(ds, encoder, tc) if train and shuffle else None,
            ))  # fmt: skip

        if method.uses_target_labels:
            train = loader(self._target(labelled=True)[1]["train"], train=True, shuffle=True)
        elif method.uses_target:
            train = PairedLoader(
                loader(source["train"], train=True, shuffle=True),
                loader(target["train"], train=True, shuffle=True, seed=self.seed + 1),
            )
        else:
            train = loader(source["train"], train=True, shuffle=True)
        rng = np.random.default_rng(self.seed)

        def subset(ds, n):  # a stream's first n rows (of its epoch-0 shuffle)
            if is_stream(ds):
                return datasets.Dataset.from_list(list(ds.take(n)))
            return ds.select(sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False)))

        evals = {
            "source_val": loader(source["validation"], train=False, shuffle=False),
            "source_train": loader(
                subset(source["train"], self.selection.max_source_samples), train=False, shuffle=False
            ),
            "target_train": loader(
                subset(target["train"], self.selection.max_target_samples), train=False, shuffle=False
            ),
            "target_test": loader(self.target["test"], train=False, shuffle=False),
        }
        return train, evals

    @torch.no_grad()
    def _outputs(self, model: nn.Module, loader) -> dict[str, np.ndarray]:
        """Pooled features, probabilities and (when labelled) labels and per-example losses."""
        model.eval()
        feats, probs, labels, losses = [], [], [], []
        for batch in loader:
            y = batch.pop("labels", None)
            out = model(**batch)
            logits = out.logits.float()
            f, p = self.accelerator.gather_for_metrics((out.features.float(), logits.softmax(-1)))
            feats.append(f.cpu()), probs.append(p.cpu())
            if y is not None:
                ce = nn.functional.cross_entropy(logits, y, reduction="none")
                y, ce = self.accelerator.gather_for_metrics((y, ce))
                labels.append(y.cpu()), losses.append(ce.cpu())
        model.train()
        out = {"features": torch.cat(feats).numpy(), "probs": torch.cat(probs).numpy()}
        if labels:
            out["labels"], out["losses"] = torch.cat(labels).numpy(), torch.cat(losses).numpy()
        return out

    def _score(
        self, model: nn.Module, evals: dict[str, Any], running: dict[str, list[float]]
    ) -> dict[str, float]:
        """Every selection criterion (none reads target labels) + target test accuracy for the report only."""
        o = {name: self._outputs(model, loader) for name, loader in evals.items()}
        inputs = {
            "probs_s_val": o["source_val"]["probs"], "labels_s_val": o["source_val"]["labels"],
            "probs_t": o["target_train"]["probs"], "features_t": o["target_train"]["features"],
            "features_s_train": o["source_train"]["features"], "features_s_val": o["source_val"]["features"],
            "losses_s_val": o["source_val"]["losses"],
        }  # fmt: skip
        scores = {name: score(inputs, name) for name in CRITERIA}
        scores["target_test_acc"] = float(
            (o["target_test"]["probs"].argmax(-1) == o["target_test"]["labels"]).mean()
        )
        for k, v in running.items():
            if v:
                scores[f"train_{k}"] = float(np.mean(v))
            v.clear()
        return scores

    def run_method(
        self, name: str, node: Any, *, source: dict | None = None, target: dict | None = None,
        init: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Trains one method (defaults: ``self.source`` → ``self.target``, from the pretrained encoder;
        ``init``: classifier weights to start from)."""
        tc, acc = self.train_cfg, self.accelerator
        source, target = source or self.source, target or self.target
        set_seed(self.seed)
        encoder = self._build(self.cfg.encoder)
        self._build(self.cfg.adapter).apply(encoder)
        head = self._build(self.cfg.head, in_features=encoder.out_features, num_labels=len(self.label_names))
        method = self._build(node, in_features=encoder.out_features, num_classes=len(self.label_names))
        model = AdaptModel(Classifier(encoder, head, self.label_names), method)
        if init is not None:
            model.classifier.load_state_dict(init)
        optimizer = build_optimizer(
            lambda params: self._build(self.cfg.optimizer, params=params), model,
            backbone=encoder.backbone, layerwise=tc.layerwise,
        )  # fmt: skip
        train_loader, evals = self._loaders(encoder, method, source, target)
        model, optimizer = acc.prepare(model, optimizer)
        per_epoch = batches_per_epoch(train_loader)  # None: streamed data
        total = steps_for(tc, per_epoch)
        scheduler = acc.prepare(
            build_scheduler(tc, optimizer, total_steps=total, num_processes=acc.num_processes)
        )
        unfreezer = build_unfreezer(tc, optimizer, batches_per_epoch=per_epoch)
        running: dict[str, list[float]] = {}
        engine: Engine | None = None

        stage1 = round(total * (1 - method.stage2_fraction)) if getattr(method, "two_stage", False) else None

        def step(m: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
            xs, xt = batch if isinstance(batch, tuple) else (batch, None)
            ys = xs.pop("labels")
            xt = {k: v for k, v in xt.items() if k != "labels"} if xt is not None else None
            inner, progress = acc.unwrap_model(m), engine.state.step / total
            if stage1 is not None and engine.state.step >= stage1:  # ADDA stage 2: no source labels used
                inner.start_stage2()
                r = adda_step(inner, xs, xt, progress=progress)
                loss = r.loss
            else:
                out_s = m(**xs)
                loss = nn.functional.cross_entropy(out_s.logits, ys)
                if xt is None or stage1 is not None:  # source-only, oracle, or ADDA stage 1
                    return loss, {}
                out_t = m(**xt)
                r = inner.method(
                    f_s=out_s.features, f_t=out_t.features, logits_s=out_s.logits, logits_t=out_t.logits,
                    progress=progress,
                )  # fmt: skip
                loss = loss + method.trade_off * r.loss
            for k, v in r.metrics.items():
                running.setdefault(k, []).append(v)
            return loss, r.metrics

        criterion = CRITERIA[self.selection.criterion]
        engine = Engine(
            accelerator=acc, model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
            config=tc, output_dir=self.output_dir / "runs" / name, total_steps=total, loss_fn=step,
            evaluate=lambda: self._score(model, evals, running),
            metric=self.selection.criterion, higher_is_better=criterion.higher_is_better, on_step=unfreezer,
        )  # fmt: skip
        trainable, params = count_parameters(model)
        print_summary(acc, f"Adapting with {name}", {
            "Method": f"{type(method).__name__} (trade-off {method.trade_off})",
            "Encoder / adapter": f"{encoder.name_or_path} / {self.cfg.adapter._component_}",
            "Trainable parameters": f"{trainable:,} of {params:,}",
            "Source": describe_splits({k: source[k] for k in ("train", "validation")}),
            "Target": describe_splits({"train (unlabelled)": target["train"], "test": self.target["test"]}),
            "Optimizer steps": total,
            **describe_layerwise(optimizer, unfreezer),
            "Selection": f"{self.selection.criterion} (no target labels)",
        })  # fmt: skip
        before = self._outputs(model, evals["source_train"]), self._outputs(model, evals["target_train"])
        state = engine.fit()
        final = self._score(model, evals, running)
        result = {
            "target_test_acc": final["target_test_acc"],
            "source_val_acc": final["source_val_acc"],
            "selected_step": state.best_step,
            "steps": state.step,
            "selection": {self.selection.criterion: state.best_metric},
            "history": state.history,
        }
        if self.report.diagnostics and method.uses_target:
            after = self._outputs(model, evals["source_train"]), self._outputs(model, evals["target_train"])
            result["proxy_a_distance"] = {
                "before": proxy_a_distance(before[0]["features"], before[1]["features"], seed=self.seed),
                "after": proxy_a_distance(after[0]["features"], after[1]["features"], seed=self.seed),
            }
            if acc.is_main_process:
                plot_domains(
                    after[0]["features"], after[1]["features"], self.output_dir / f"features_{name}.png",
                    labels_s=after[0].get("labels"), method=self.report.plot,
                    title=f"{name}: source vs target features after adaptation",
                )  # fmt: skip
                record_output(self.output_dir / f"features_{name}.png")  # --overwrite may remove it
        self._model = acc.unwrap_model(model).classifier
        return result

    def run(self) -> dict[str, Any]:
        self.accelerator = build_accelerator(self.train_cfg, self.output_dir)
        self.load_data()
        main_name = self._method_name()
        plan = [
            (b, OmegaConf.create({"_component_": BASELINES[b]}))
            for b in self.report.baselines
            if b != main_name
        ]
        if self.intermediate is None or self.transitive.direct:
            plan.append((main_name, self.cfg.method))
        results: dict[str, Any] = {}
        for name, node in plan:
            results[name] = self.run_method(name, node)
            if name == main_name:
                main_model = self._model
        if self.intermediate is not None:
            main_name = self.run_transitive(main_name, results)
            main_model = self._model
        metrics = {"method": main_name, "selection_criterion": self.selection.criterion, "results": results}
        self.print_report(metrics)
        if self.accelerator.is_main_process:
            meta_metrics = {
                "target_test_acc": results[main_name]["target_test_acc"],
                **{k: v for k, v in metrics.items() if k != "results"},
            }
            path = save_model(
                main_model,
                self.output_dir / "model",
                adapter_kind=self._adapter_kind(),
                config=self.cfg,
                metrics=meta_metrics,
            )
            write_metrics(self.output_dir / "metrics.json", metrics)
            self.accelerator.print(
                f"Model ({main_name}) written to {path}; metrics in {self.output_dir / 'metrics.json'}"
            )
            if self.report.card:
                from hftl.hub import render_card

                self.accelerator.print(f"Model card written to {render_card(self.output_dir)}")
            if self.cfg.get("push_to_hub"):
                from hftl.hub import push_from_config

                self.accelerator.print(f"Pushed to {push_from_config(self.cfg.push_to_hub, self.output_dir)}")
        self.accelerator.end_training()
        return metrics

    def run_transitive(self, name: str, results: dict[str, Any]) -> str:
        """Stage 1 adapts source → intermediate; stage 2 starts from its weights and adapts to the target
        (from the source plus pseudo-labelled intermediate data). Returns the stage-2 result's name."""
        stage1, stage2 = f"{name}_stage1", f"{name}_transitive"
        results[stage1] = self.run_method(stage1, self.cfg.method, target=self.intermediate)
        model, source = self._model, self.source
        if self.transitive.pseudo_labels:
            loader = self.accelerator.prepare(build_loader(
                self.intermediate["train"], collate_fn=model.encoder.collator(train=False), shuffle=False,
                batch_size=self.train_cfg.eval_batch_size or 2 * self.train_cfg.batch_size,
            ))  # fmt: skip
            pseudo = pseudo_labelled(
                self.intermediate["train"], self._outputs(model, loader)["probs"], like=self.source["train"],
                threshold=self.transitive.threshold, balance=self.transitive.balance,
            )  # fmt: skip
            results[stage1]["pseudo_labels"] = label_counts(pseudo, self.label_names)
            source = {**self.source, "train": datasets.concatenate_datasets([self.source["train"], pseudo])}
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        results[stage2] = self.run_method(stage2, self.cfg.method, source=source, init=init)
        return stage2

    def _method_name(self) -> str:
        from hftl.config import get_component

        return get_component(self.cfg.method._component_, allow_any=self.allow_any).name

    def _adapter_kind(self) -> str:
        from hftl.config import get_component

        return get_component(self.cfg.adapter._component_, allow_any=self.allow_any).kind

    def print_report(self, metrics: dict[str, Any]) -> None:
        rows, main = metrics["results"], metrics["method"]
        width = max(16, *(len(n) + 2 for n in rows))
        lines = [
            f"***** Adaptation report (checkpoint chosen by {metrics['selection_criterion']}, no target labels) *****",
            f"{'method':<{width}}{'target test acc':>17}{'source val acc':>16}{'PAD before→after':>20}",
        ]
        for name, r in rows.items():
            pad = r.get("proxy_a_distance")
            pad_s = f"{pad['before']:.2f} → {pad['after']:.2f}" if pad else "-"
            lines.append(
                f"{name:<{width}}{100 * r['target_test_acc']:>16.2f}%{100 * r['source_val_acc']:>15.2f}%{pad_s:>20}"
            )
        so, direct = rows.get("source_only"), rows.get(main.removesuffix("_transitive"))
        if so and main != "source_only" and rows[main]["target_test_acc"] < so["target_test_acc"]:
            lines.append(f"WARNING: negative transfer: {main} is below source-only on the target test set.")
        if main.endswith("_transitive"):
            lines.append(
                f"{main.removesuffix('_transitive')}_stage1: adapted source → intermediate (scored on the target)."
            )
            if direct is not None:
                gain = 100 * (rows[main]["target_test_acc"] - direct["target_test_acc"])
                lines.append(f"Transitive vs direct: {gain:+.2f} points on the target test set.")
        self.accelerator.print("\n".join(lines))


RECIPE = AdaptRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(AdaptRecipe, argv, prog="hftl run adapt")


if __name__ == "__main__":
    raise SystemExit(main())
