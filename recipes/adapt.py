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

Phases, read top to bottom:

1. ``setup()``: the accelerator and the data, each loaded once: source, target (read labelled only when a
   planned run trains on it, ``target_oracle``; the other runs see its train split without labels), the
   intermediate domain.
2. ``build(name, method)``: one run per method: encoder → adapter → head → method → model → optimizer
   → loaders → Engine.
3. ``train(run)``: the shared Engine loop; its loss is source cross-entropy + ``trade_off`` × the method's
   transfer term (:class:`hftl.adaptation.training.AdaptationLoss`), the checkpoint chosen by
   ``selection.criterion``.
4. ``evaluate(run, state)``: final scores, proxy A-distance (of the adapted and the source-only features;
   before vs after training without a source-only run) and the feature plot.
5. ``save(metrics, model)``: the main method's model directory and ``metrics.json`` (card, push).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from hftl.adaptation.collapse import SIGNALS, CollapseGuard, collapse_summary, fix_advice
from hftl.adaptation.config import ReportConfig, SelectionConfig
from hftl.adaptation.diagnostics import plot_domains, proxy_a_distance
from hftl.adaptation.fallback import decide
from hftl.adaptation.methods import AdaptationMethod
from hftl.adaptation.scoring import (
    collect_outputs,
    collect_splits,
    format_report,
    score_outputs,
    weights_digest,
)
from hftl.adaptation.selection import CRITERIA
from hftl.adaptation.training import AdaptationLoss, AdaptModel
from hftl.adaptation.transitive import TransitiveConfig, label_counts, pseudo_labelled
from hftl.config import get_component, instantiate, to_dataclass
from hftl.data.lengths import text_lengths
from hftl.data.paired import PairedLoader
from hftl.data.spec import ClassificationSplits
from hftl.data.streaming import is_stream
from hftl.data.tokenized import is_pretokenized
from hftl.errors import ConfigError
from hftl.evaluation import write_metrics
from hftl.models import Classifier, count_parameters
from hftl.models.io import save_model
from hftl.outputs import record_output
from hftl.recipe import recipe_main
from hftl.training import Engine, LayerwiseConfig, TrainConfig, TrainState, steps_for
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
from hftl.training.run import eval_loader, init_trackers, pretokenized


def without_train_labels(splits: ClassificationSplits) -> ClassificationSplits:
    """In-memory ``splits`` with the ``train`` split's label column dropped: the rows and columns a load
    with ``unlabeled_splits=["train"]`` gives (the carving stratifies on the labels either way)."""
    train = splits["train"]
    if "label" in train.column_names:
        train = train.remove_columns("label")
    return ClassificationSplits({**splits, "train": train}, labels=splits.labels, modality=splits.modality)


BASELINES = {"source_only": "hftl.adaptation.SourceOnly", "target_oracle": "hftl.adaptation.TargetOracle"}


@dataclass
class MethodRun:
    """One method's training run, as :meth:`AdaptRecipe.build` assembles it."""

    name: str
    method: AdaptationMethod
    model: AdaptModel  # prepared
    engine: Engine
    evals: dict[str, Any]  # loaders of hftl.adaptation.scoring.EVAL_SPLITS
    source: dict[str, Any]
    target: dict[str, Any]  # the domain adapted to (the intermediate in stage 1 of a transitive run)
    # source and target training features before training (diagnostics without a source-only run)
    before: tuple | None = None
    # step -> (weights digest, outputs) of the periodic evaluations that may be selected: the best so far and
    # the newest; the selected checkpoint's final scoring reuses the splits already run on its weights
    kept: dict[int, tuple[str, dict]] = field(default_factory=dict)


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

    def _component(self, node: Any) -> Any:
        return get_component(node._component_, allow_any=self.allow_any)

    # -- 1. setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        """The accelerator, the plan of runs (baselines, then the method) and the data they read."""
        self.accelerator = build_accelerator(self.train_cfg, self.output_dir)
        self._tokens: dict[int, tuple[Any, Any]] = {}  # id(split) -> (split, tokenized): once per recipe run
        self.main_name = self._component(self.cfg.method).name
        self.plan = [
            (b, OmegaConf.create({"_component_": BASELINES[b]}))
            for b in self.report.baselines
            if b != self.main_name
        ]
        self.load_data()
        if self.intermediate is None or self.transitive.direct:
            self.plan.append((self.main_name, self.cfg.method))
        init_trackers(self.accelerator, self.train_cfg, method=self.main_name)

    def _domain(self, key: str, *, labelled: bool) -> tuple[Any, dict[str, Any]]:
        """A target-like domain (``target``, ``intermediate``): train labels dropped at load time unless
        ``labelled``; no validation split carved out (nothing may select on it)."""
        node = self.cfg[key]
        defaults = {"validation_size": 0} if key == "target" else {"validation_size": 0, "test_size": 0}
        extra = {k: v for k, v in defaults.items() if k not in node}
        data = self._build(node, unlabeled_splits=[] if labelled else ["train"], **extra)
        return data, data.load()

    def load_data(self) -> None:
        source_data = self._build(self.cfg.source)
        self.source = source_data.load()
        methods = [self._component(node) for _, node in self.plan] + [self._component(self.cfg.method)]
        self.labelled_target = None  # loaded only when a planned run trains on target labels (target_oracle)
        if any(m.uses_target_labels for m in methods):
            # read (and media scanned) once: the unlabelled view is these splits without train's labels
            self.labelled_target = self._domain("target", labelled=True)[1]
        if self.labelled_target is not None and not is_stream(self.labelled_target["train"]):
            self.target = without_train_labels(self.labelled_target)
        else:  # a stream's columns are read lazily: the unlabelled stream is loaded as such
            self.target = self._domain("target", labelled=False)[1]  # label column dropped at load
        self.label_names = self.source.label_names
        if self.target.label_names != self.label_names:
            raise ConfigError(
                f"`source` labels {self.label_names} differ from `target` labels {self.target.label_names}; "
                "set `label_names` on both to the same list"
            )
        self.intermediate = None  # transitive transfer: unlabelled like the target
        if self.cfg.get("intermediate") is not None:
            data, self.intermediate = self._domain("intermediate", labelled=False)
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

    # -- 2. build one run ----------------------------------------------------------------------------
    def _tokenized(self, encoder: Any, dataset: Any) -> Any:
        """``dataset`` tokenized once per recipe run (every method reads the same splits; text only)."""
        if is_stream(dataset) or is_pretokenized(dataset):
            return pretokenized(self.accelerator, encoder, dataset) if is_stream(dataset) else dataset
        key = id(dataset)  # the entry keeps `dataset` alive, so its id is not reused
        if key not in self._tokens:
            self._tokens[key] = (dataset, pretokenized(self.accelerator, encoder, dataset))
        return self._tokens[key][1]

    def _loader(self, encoder: Any, dataset: Any, *, train: bool, seed: int | None = None) -> Any:
        """A prepared loader: shuffled training batches (``train``), or evaluation batches longest first
        (text; the outputs come back in row order, :func:`hftl.training.run.gather_outputs`)."""
        tc, acc = self.train_cfg, self.accelerator
        dataset = self._tokenized(encoder, dataset)  # text: tokenized once, cached across runs
        if not train:
            text = encoder.modality == "text" and not is_stream(dataset)
            collate = encoder.collator(train=False)
            return eval_loader(
                acc, dataset, collate_fn=collate, config=tc, lengths=text_lengths(dataset) if text else None
            )
        return acc.prepare(build_loader(
            dataset, collate_fn=encoder.collator(train=True), batch_size=tc.batch_size, shuffle=True,
            seed=self.seed if seed is None else seed, num_workers=tc.num_workers,
            lengths=train_lengths(dataset, encoder, tc),
        ))  # fmt: skip

    def _loaders(
        self, encoder: Any, method: AdaptationMethod, source: dict, target: dict
    ) -> tuple[Any, dict]:
        """Training batches and the evaluation loaders; the test split is always the final target's."""
        if method.uses_target_labels:
            train = self._loader(encoder, self.labelled_target["train"], train=True)
        elif method.uses_target:
            train = PairedLoader(
                self._loader(encoder, source["train"], train=True),
                self._loader(encoder, target["train"], train=True, seed=self.seed + 1),
            )
        else:
            train = self._loader(encoder, source["train"], train=True)
        rng = np.random.default_rng(self.seed)

        def subset(ds, n):  # a stream's first n rows (of its epoch-0 shuffle)
            if is_stream(ds):
                return datasets.Dataset.from_list(list(ds.take(n)))
            return ds.select(sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False)))

        sel = self.selection
        evals = {  # subsets of the tokenized splits: the same rows as subsets tokenized on their own
            "source_val": source["validation"],
            "source_train": subset(self._tokenized(encoder, source["train"]), sel.max_source_samples),
            "target_train": subset(self._tokenized(encoder, target["train"]), sel.max_target_samples),
            "target_test": self.target["test"],
        }
        return train, {name: self._loader(encoder, ds, train=False) for name, ds in evals.items()}

    def build(
        self, name: str, node: Any, *, source: dict, target: dict, init: dict[str, torch.Tensor] | None = None
    ) -> MethodRun:
        """One method's run, from the pretrained encoder (or the classifier weights ``init``)."""
        tc, acc = self.train_cfg, self.accelerator
        # a fresh Accelerator state per run: its checkpoints hold this run's model, optimizer, scheduler and
        # loaders only, not those of the runs before it (trackers and the process group are kept)
        acc.free_memory()
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
        train_loader, loaders = self._loaders(encoder, method, source, target)
        # the periodic evaluations (the Engine's `evaluate`) run the target test split only when asked
        # (`report.target_curve`) and the source training subset only for `dev` (or `selection.score_all`);
        # the selected checkpoint is scored on every split (`evaluate()`)
        skip = set() if self.report.target_curve else {"target_test"}
        if (
            not self.selection.score_all
            and "features_s_train" not in CRITERIA[self.selection.criterion].inputs
        ):
            skip.add("source_train")
        evals = {k: v for k, v in loaders.items() if k not in skip}
        model, optimizer = acc.prepare(model, optimizer)
        per_epoch = batches_per_epoch(train_loader)  # None: streamed data
        total = steps_for(tc, per_epoch)
        scheduler = acc.prepare(
            build_scheduler(tc, optimizer, total_steps=total, num_processes=acc.num_processes)
        )
        unfreezer = build_unfreezer(tc, optimizer, batches_per_epoch=per_epoch)
        loss = AdaptationLoss(method, concat_domains=tc.concat_domains)
        kept: dict[int, tuple[str, dict]] = {}

        def periodic() -> dict[str, float]:  # one periodic evaluation; its outputs kept while selectable
            outputs = collect_splits(acc, model, evals)
            step, best = engine.state.step, engine.state.best_step
            for old in [k for k in kept if k not in (step, best)]:
                del kept[old]
            kept[step] = (weights_digest(acc.unwrap_model(model)), outputs)
            return score_outputs(outputs)

        engine = Engine(
            accelerator=acc, model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
            config=tc, output_dir=self.output_dir / "runs" / name, total_steps=total, loss_fn=loss,
            evaluate=lambda: self.guarded(name, method, {**periodic(), **loss.pop_means()}, engine.state),
            metric=self.selection.criterion, higher_is_better=CRITERIA[self.selection.criterion].higher_is_better,
            on_step=unfreezer, log_prefix=f"{name}/",  # several runs log into the same trackers
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
        return MethodRun(name, method, model, engine, loaders, source, target, kept=kept)

    # -- 3. train --------------------------------------------------------------------------------------
    def _domain_features(self, run: MethodRun) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Pooled source and target training features (and source labels), for the diagnostics."""
        s, t = (
            collect_outputs(self.accelerator, run.model, run.evals[k])
            for k in ("source_train", "target_train")
        )
        return s["features"], t["features"], s.get("labels")

    def train(self, run: MethodRun) -> TrainState:
        """The Engine's loop (resumed from the run's newest checkpoint when there is one)."""
        # only for the diagnostics of a run that adapts without a source-only run beside it (whose trained
        # features are the reference then): evaluation loaders draw nothing from the global RNG
        # (hftl.training.run.eval_loader), so the trained weights do not depend on `report.diagnostics`
        if self._diagnosed(run) and "source_only" not in self.report.baselines:
            run.before = self._domain_features(run)
        return run.engine.fit()

    # -- 4. evaluate -----------------------------------------------------------------------------------
    def _diagnosed(self, run: MethodRun) -> bool:
        """Whether ``run`` gets the proxy A-distance: the runs that adapt, and source-only (their reference)."""
        return self.report.diagnostics and (run.method.uses_target or run.name == "source_only")

    def guard_for(self, name: str, method: AdaptationMethod) -> CollapseGuard | None:
        """The collapse guard of a run that adapts (none for the baselines, or with the guard off)."""
        if not self.selection.collapse_guard or not method.uses_target or method.uses_target_labels:
            return None
        return self._collapse_guard(
            stop_after=self.selection.collapse_stop_after, name=name, fix=fix_advice(method),
            log=self.accelerator.print,
        )  # fmt: skip

    def _collapse_guard(self, **kwargs: Any) -> CollapseGuard:
        """A collapse guard with the ``selection.collapse_*`` thresholds."""
        sel = self.selection
        return CollapseGuard(
            share=sel.collapse_share, entropy=sel.collapse_entropy, source_drop=sel.collapse_source_drop,
            label_names=self.label_names, **kwargs,
        )  # fmt: skip

    def guarded(
        self, name: str, method: AdaptationMethod, scores: dict[str, float], state: TrainState
    ) -> dict[str, float]:
        """One evaluation's scores, checked by the run's collapse guard (the Engine's ``evaluate``). The
        guard keeps no state (it reads the history), so a resumed run decides the same."""
        guard = self.guard_for(name, method)
        return scores if guard is None else guard(scores, state.history, state.step)

    def evaluate(self, run: MethodRun, state: TrainState) -> dict[str, Any]:
        """The run's result: the selected checkpoint's scores, its history, the collapse guard's summary
        and the diagnostics."""
        outputs = collect_splits(self.accelerator, run.model, run.evals, known=self._known(run, state))
        final = score_outputs(outputs)
        result = {
            "target_test_acc": final["target_test_acc"],
            "source_val_acc": final["source_val_acc"],
            "selected_step": state.best_step,
            "steps": state.step,
            "selection": {self.selection.criterion: state.best_metric},
            # label-free scores of the kept weights, on the same rows for every run (the fallback's input)
            "final_scores": {k: final[k] for k in (*CRITERIA, *SIGNALS)},
            "history": state.history,
        }
        guard = self.guard_for(run.name, run.method)
        if guard is not None:
            result["collapse"] = collapse_summary(
                guard, state.history, best_step=state.best_step, steps=state.step,
                total=run.engine.total_steps,
            )  # fmt: skip
        if self._diagnosed(run):  # the features just scored
            f_s, f_t = outputs["source_train"]["features"], outputs["target_train"]["features"]
            labels_s = outputs["source_train"].get("labels")
            result["proxy_a_distance"] = {"after": proxy_a_distance(f_s, f_t, seed=self.seed)}
            if run.before is not None:  # no source-only run to compare with: the features before training
                result["proxy_a_distance"]["before"] = proxy_a_distance(*run.before[:2], seed=self.seed)
            if self.accelerator.is_main_process and run.method.uses_target:
                path = self.output_dir / f"features_{run.name}.png"
                plot_domains(
                    f_s, f_t, path, labels_s=labels_s, method=self.report.plot,
                    title=f"{run.name}: source vs target features after adaptation",
                )  # fmt: skip
                record_output(path)  # --overwrite may remove it
        return result

    def _known(self, run: MethodRun, state: TrainState) -> dict[str, Any] | None:
        """The selected step's periodic outputs when the model holds exactly the weights they came from
        (the best weights restored, or the final step selected), else ``None``."""
        digest, outputs = run.kept.get(state.best_step, (None, None))
        if digest is None or digest != weights_digest(self.accelerator.unwrap_model(run.model)):
            return None
        return outputs

    def run_method(
        self, name: str, node: Any, *, source: dict | None = None, target: dict | None = None,
        init: dict[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, Any], Classifier]:  # fmt: skip
        """Builds, trains and evaluates one method (default: ``source`` → ``target``); returns its result
        (with its wall-time split, ``wall_time_s``) and its trained classifier."""
        start = time.perf_counter()
        run = self.build(name, node, source=source or self.source, target=target or self.target, init=init)
        built = time.perf_counter()
        state = self.train(run)
        trained = time.perf_counter()
        result = self.evaluate(run, state)
        result["wall_time_s"] = self.wall_time(
            run, built - start, trained - built, time.perf_counter() - trained
        )
        return result, self.accelerator.unwrap_model(run.model).classifier

    def wall_time(self, run: MethodRun, build: float, train: float, final: float) -> dict[str, float]:
        """Where a run's wall time went: ``build`` (model, data, loaders), ``train`` (optimizer steps),
        ``evaluation`` (the periodic validations and the features taken before training), ``selection``
        (scoring the selected checkpoint, diagnostics), ``checkpoints``; printed as one line."""
        t = run.engine.timings
        split = {
            "build": build, "train": t["train"], "evaluation": t["evaluation"] + train - sum(t.values()),
            "selection": final, "checkpoints": t["checkpoints"],
        }  # fmt: skip
        total = sum(split.values())
        shown = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in split.items())
        self.accelerator.print(f"{run.name} wall time {total:.1f} s: {shown}")
        return {k: round(v, 2) for k, v in split.items()}

    def run_transitive(self, results: dict[str, Any]) -> tuple[str, Classifier]:
        """Stage 1 adapts source → intermediate; stage 2 starts from its weights and adapts to the target
        (from the source plus pseudo-labelled intermediate data). Returns stage 2's name and classifier."""
        stage1, stage2 = f"{self.main_name}_stage1", f"{self.main_name}_transitive"
        results[stage1], model = self.run_method(stage1, self.cfg.method, target=self.intermediate)
        source = self.source
        if self.transitive.pseudo_labels:
            loader = self._loader(model.encoder, self.intermediate["train"], train=False)
            pseudo = pseudo_labelled(
                self.intermediate["train"], collect_outputs(self.accelerator, model, loader)["probs"],
                like=self.source["train"], threshold=self.transitive.threshold, balance=self.transitive.balance,
            )  # fmt: skip
            results[stage1]["pseudo_labels"] = label_counts(pseudo, self.label_names)
            source = {**self.source, "train": datasets.concatenate_datasets([self.source["train"], pseudo])}
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        results[stage2], model = self.run_method(stage2, self.cfg.method, source=source, init=init)
        return stage2, model

    # -- 5. save ---------------------------------------------------------------------------------------
    def save(self, metrics: dict[str, Any], model: Classifier) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            main = metrics["kept"]  # the method, or source_only when the fallback kept it
            meta = {"target_test_acc": metrics["results"][main]["target_test_acc"]}
            meta.update({k: v for k, v in metrics.items() if k != "results"})
            adapter_kind = self._component(self.cfg.adapter).kind
            path = save_model(
                model, self.output_dir / "model", adapter_kind=adapter_kind, config=self.cfg, metrics=meta
            )
            write_metrics(self.output_dir / "metrics.json", metrics)
            acc.print(f"Model ({main}) written to {path}; metrics in {self.output_dir / 'metrics.json'}")
            if self.report.card:
                from hftl.hub import render_card

                acc.print(f"Model card written to {render_card(self.output_dir)}")
            if self.cfg.get("push_to_hub"):
                from hftl.hub import push_from_config

                acc.print(f"Pushed to {push_from_config(self.cfg.push_to_hub, self.output_dir)}")
        acc.end_training()

    def fall_back(self, metrics: dict[str, Any]) -> None:
        """``selection.fallback``: sets ``metrics["kept"]`` (the method, or ``source_only`` when adaptation
        is predicted to hurt) and ``metrics["fallback"]`` (the comparison, why)."""
        main, results, sel = metrics["method"], metrics["results"], self.selection
        metrics["kept"] = main
        if sel.fallback == "off" or main == "source_only" or "source_only" not in results:
            return
        metrics["fallback"] = decide(
            results, main, criterion=sel.criterion, confirm=sel.fallback_confirm,
            collapsed=self._collapse_guard(stop_after=0).prediction_collapse,
        )  # fmt: skip
        metrics["kept"] = metrics["fallback"]["kept"]

    def run(self) -> dict[str, Any]:
        if self.selection.fallback == "source_only" and "source_only" not in self.report.baselines:
            raise ConfigError(
                "`selection.fallback: source_only` keeps the source-only baseline's model, but "
                f"`report.baselines` is {self.report.baselines}; add source_only to it, or set "
                "`selection.fallback=off` (or auto: on exactly when source_only is trained)."
            )
        self.setup()
        results: dict[str, Any] = {}
        models: dict[str, Classifier] = {}  # the method's and source-only's (the fallback may keep it)
        for name, node in self.plan:
            results[name], model = self.run_method(name, node)
            if name in (self.main_name, "source_only"):
                models[name] = model
        main_name = self.main_name
        if self.intermediate is not None:
            main_name, models[main_name] = self.run_transitive(results)
        metrics = {"method": main_name, "selection_criterion": self.selection.criterion, "results": results}
        self.fall_back(metrics)
        self.accelerator.print(format_report(metrics))
        self.save(metrics, models[metrics["kept"]])
        return metrics


RECIPE = AdaptRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(AdaptRecipe, argv, prog="hftl run adapt")


if __name__ == "__main__":
    raise SystemExit(main())
