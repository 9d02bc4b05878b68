"""Few-shot classification by metric-learning transfer (the SetFit recipe, on any hftl encoder).

Run:
    hftl run fewshot --config text/minilm_setfit_sst2 [key=value ...]
    hftl run fewshot --config text/minilm_setfit_sst2 loss._component_=hftl.losses.TripletLoss loss.margin=0.5
    hftl run fewshot --config text/minilm_setfit_sst2 fewshot.num_iterations=0 \
        adapter._component_=hftl.adapters.Frozen          # stage 2 only: a logistic-regression probe
    python recipes/fewshot.py --config recipes/configs/text/minilm_setfit_sst2.yaml   # same code

Tunstall et al., "Efficient Few-Shot Learning Without Prompts" (SetFit), 2022, arXiv:2209.11055.
``setup()`` draws ``fewshot.shots_per_class`` labelled examples per class from the train split (seeded,
stratified) and builds data → encoder → adapter → loss → pairs/triplets → optimizer → loader.
``train_encoder()`` (stage 1) fine-tunes the encoder (full, LoRA, IA3) with the metric loss on pairs or
triplets of those examples, on the shared Accelerate loop. ``fit_head()`` (stage 2) embeds the same
examples with the tuned, now frozen encoder and fits a scikit-learn logistic regression, as SetFit does:
with 16-128 examples it is a convex problem with a unique, deterministic optimum and no learning rate or
epoch count to tune (a gradient-trained head would need both, and no validation data exists to pick
them). Its weights go into the config's ``hftl.models.LinearHead`` (exactly: same probabilities), so
``evaluate()`` uses hftl's metrics and ``save()`` writes a model directory ``hftl.load`` / ``hftl predict``
read like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig
from torch import nn

from hftl.config import instantiate, to_dataclass
from hftl.data.pairs import BUILDERS, TupleCollator, TupleDataset, sample_per_class
from hftl.errors import ConfigError
from hftl.evaluation import classification_report, format_report, write_metrics
from hftl.evaluation.predictions import collect_predictions
from hftl.models import Classifier, LinearHead, count_parameters
from hftl.models.io import MODEL_DIRNAME, save_model
from hftl.recipe import recipe_main
from hftl.training import Engine, LayerwiseConfig, Progress, TrainConfig, steps_for
from hftl.training.builders import (
    build_accelerator,
    build_loader,
    build_lr_scheduler,
    build_optimizer,
    build_unfreezer,
    print_summary,
)
from hftl.training.run import eval_loader, gather_outputs, init_trackers
from hftl.training.schedules import SCHEDULER_RUNTIME_ARGS
from hftl.training.sections import FewShotConfig


def metric_step(loss: nn.Module):
    """The Engine's loss function for ``loss``: one encoder pass over every example of the batch."""

    def step(model: nn.Module, batch: dict[str, Any], progress: Progress) -> tuple[torch.Tensor, dict]:
        inputs = dict(batch["inputs"])
        labels = inputs.pop("labels")
        features = model(**inputs).pooled
        if loss.inputs == "labeled":
            out = loss(features, labels)
        elif loss.inputs == "pairs":
            u, v = features.chunk(2)
            out = loss(u, v, batch["target"])
        else:
            out = loss(*features.chunk(3))
        return out.loss, out.metrics

    return step


def embed(accelerator: Any, encoder: nn.Module, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of every example of ``loader`` (run and gathered by ``gather_outputs``)."""

    def pooled(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        labels = batch.pop("labels")
        return {"features": model(**batch).pooled.float(), "labels": labels}

    out = gather_outputs(accelerator, encoder, loader, pooled, desc="embed")
    return out["features"].numpy(), out["labels"].numpy()


def logistic_head(
    features: np.ndarray, labels: np.ndarray, head: LinearHead, *, num_labels: int, c: float, max_iter: int
) -> float:
    """Fits scikit-learn's logistic regression and writes it into ``head``'s linear layer, exactly.

    Binary: sklearn's one weight vector ``w`` becomes the logits ``(-z/2, z/2)`` with ``z = w·x + b``,
    whose softmax is ``sigmoid(z)``, sklearn's probability. Multiclass: the multinomial weights as they are.

    Returns:
        Training accuracy of the fitted regression.
    """
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter).fit(features, labels)
    if list(clf.classes_) != list(range(num_labels)):
        raise ConfigError(
            f"Stage 2 saw classes {list(clf.classes_)} but the data has {num_labels}; every class needs "
            "few-shot examples (set `fewshot.shots_per_class`)."
        )
    weight, bias = torch.as_tensor(clf.coef_, dtype=torch.float32), torch.as_tensor(clf.intercept_)
    if num_labels == 2:
        weight, bias = torch.cat([-weight, weight]) / 2, torch.cat([-bias, bias]).float() / 2
    linear = head[-1]
    linear.weight.data.copy_(weight)
    linear.bias.data.copy_(bias)
    return float(clf.score(features, labels))


class FewShotRecipe:
    """Stage 1: metric-learning fine-tuning on pairs/triplets of K examples per class; stage 2: a head."""

    RUNTIME_ARGS = {
        "head": {"in_features", "num_labels"}, "optimizer": {"params"}, "lr_scheduler": SCHEDULER_RUNTIME_ARGS,
    }  # fmt: skip
    SECTIONS = {"train": TrainConfig, "train.layerwise": LayerwiseConfig, "fewshot": FewShotConfig}
    REQUIRED = ("output_dir", "encoder", "adapter", "head", "data", "loss", "optimizer")

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.train_cfg = to_dataclass(TrainConfig, cfg.get("train"), key="train")
        self.fewshot = to_dataclass(FewShotConfig, cfg.get("fewshot"), key="fewshot")
        self.output_dir = Path(cfg.output_dir)
        self.seed = int(cfg.get("seed", 42))

    def _build(self, key: str, **runtime: Any) -> Any:
        return instantiate(self.cfg[key], allow_any=self.allow_any, **runtime)

    def load_data(self) -> None:
        """Loads the splits and draws the few-shot training examples."""
        self.data = self._build("data")
        splits = self.data.load()
        if "train" not in splits:
            raise ConfigError(
                f"`data` has no train split (found {sorted(splits)}); map one with `data.splits`"
            )
        self.label_names = splits.label_names
        shots = self.fewshot.shots_per_class
        if shots is None:
            self.train_indices = np.arange(len(splits["train"]))
        else:
            labels = splits["train"].with_format("numpy")["label"]
            self.train_indices = sample_per_class(
                labels, shots, seed=self.seed, num_classes=len(self.label_names)
            )
        self.train_set = splits["train"].select(self.train_indices)
        self.splits = splits

    def setup(self) -> None:
        tc, fs = self.train_cfg, self.fewshot
        self.accelerator = build_accelerator(tc, self.output_dir)
        set_seed(self.seed)
        self.load_data()
        encoder = self._build("encoder")
        if encoder.modality != self.splits.modality:
            raise ConfigError(
                f"`encoder` is a {encoder.modality} encoder but `data` holds {self.splits.modality}; pick a matching encoder"
            )
        self.adapter = self._build("adapter")
        self.adapter.apply(encoder)
        self.head = self._build("head", in_features=encoder.out_features, num_labels=len(self.label_names))
        if not isinstance(self.head, LinearHead):
            raise ConfigError(
                f"`head` is {type(self.head).__name__}; the fewshot recipe needs hftl.models.LinearHead: stage 2 "
                "writes the logistic regression's weights into its linear layer. Set `head._component_: "
                "hftl.models.LinearHead`."
            )
        self.loss = self._build("loss")
        if getattr(self.loss, "inputs", None) not in BUILDERS:
            raise ConfigError(
                f"`loss` is {type(self.loss).__name__}, which does not say which batches it takes (`inputs`: "
                f"{', '.join(BUILDERS)}); use hftl.losses.CosineSimilarityLoss, ContrastiveLoss, TripletLoss "
                "or BatchHardTripletLoss."
            )
        self.encoder = self.base_encoder = encoder  # `encoder` is wrapped by accelerate for stage 1
        self.engine, self.state, self.total_steps = None, None, 0
        if fs.num_iterations > 0:
            self._setup_stage1()
        else:
            self.encoder = self.encoder.to(self.accelerator.device)
        self._setup_eval_loaders()
        self._print_summary()
        init_trackers(self.accelerator, tc)

    def _setup_stage1(self) -> None:
        tc, fs = self.train_cfg, self.fewshot
        if not any(p.requires_grad for p in self.encoder.parameters()):
            raise ConfigError(
                f"`adapter` {type(self.adapter).__name__} leaves no encoder weight to train, but stage 1 is on "
                f"(`fewshot.num_iterations` = {fs.num_iterations}). Set `fewshot.num_iterations=0` for a frozen "
                "probe, or use hftl.adapters.FullFinetune / Lora."
            )
        labels = np.asarray(self.train_set["label"])
        self.rows = BUILDERS[self.loss.inputs](labels, num_iterations=fs.num_iterations, seed=self.seed)
        dataset = TupleDataset(self.train_set, self.rows, self.loss.inputs)
        collate = TupleCollator(self.encoder.collator(train=True))
        loader = build_loader(
            dataset, collate_fn=collate, batch_size=tc.batch_size, shuffle=True, seed=self.seed,
            num_workers=tc.num_workers,
        )  # fmt: skip
        optimizer = build_optimizer(  # one group, or one per layer with `train.layerwise`
            lambda params: self._build("optimizer", params=params), self.encoder,
            backbone=self.encoder.backbone, layerwise=tc.layerwise,
        )  # fmt: skip
        self.encoder, optimizer, loader = self.accelerator.prepare(self.encoder, optimizer, loader)
        unfreezer = build_unfreezer(tc, optimizer, batches_per_epoch=len(loader))
        self.total_steps = steps_for(tc, len(loader))
        scheduler = build_lr_scheduler(
            self.cfg.get("lr_scheduler"), tc, optimizer, self.accelerator,
            total_steps=self.total_steps, allow_any=self.allow_any,
        )  # fmt: skip
        self.engine = Engine(
            accelerator=self.accelerator, model=self.encoder, optimizer=optimizer,
            scheduler=scheduler, train_loader=loader, config=tc,
            output_dir=self.output_dir, total_steps=self.total_steps, loss_fn=metric_step(self.loss),
            on_step=unfreezer,
        )  # fmt: skip

    def _setup_eval_loaders(self) -> None:
        collate = self.base_encoder.collator(train=False)
        sets = {"fewshot": self.train_set} | {
            s: self.splits[s] for s in ("validation", "test") if s in self.splits
        }
        self.loaders = {
            name: eval_loader(self.accelerator, ds, collate_fn=collate, config=self.train_cfg)
            for name, ds in sets.items()
        }

    def _print_summary(self) -> None:
        tc, encoder = self.train_cfg, self.base_encoder
        trainable, total = count_parameters(encoder)
        n_rows = len(self.rows) if self.engine is not None else 0
        print_summary(self.accelerator, "Running few-shot training", {
            "Encoder": f"{encoder.name_or_path} ({encoder.modality}, pooling {encoder.pool.method})",
            "Adapter": type(self.adapter).__name__,
            "Trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / total:.2f} %)",
            "Few-shot examples": f"{len(self.train_set)} ({self.fewshot.shots_per_class} per class) of {len(self.splits['train']):,}",
            "Stage 1": f"{type(self.loss).__name__} on {n_rows:,} {self.loss.inputs}, {self.total_steps} steps"
            if self.engine else "off (fewshot.num_iterations = 0)",
            "Stage 2": f"logistic regression (C = {self.fewshot.head_c}) into a LinearHead",
            "Evaluated on": ", ".join(f"{s} {len(self.splits[s]):,}" for s in ("validation", "test") if s in self.splits),
            "Device / precision": f"{self.accelerator.device} / {tc.mixed_precision}",
            "Output": str(self.output_dir),
        })  # fmt: skip

    def train_encoder(self) -> None:
        """Stage 1 (skipped when ``fewshot.num_iterations`` is 0)."""
        if self.engine is not None:
            self.state = self.engine.fit()

    def fit_head(self) -> dict[str, float]:
        """Stage 2: logistic regression on the frozen, tuned embeddings of the few-shot examples."""
        features, labels = embed(self.accelerator, self.encoder, self.loaders["fewshot"])
        train_acc = logistic_head(
            features, labels, self.head, num_labels=len(self.label_names),
            c=self.fewshot.head_c, max_iter=self.fewshot.head_max_iter,
        )  # fmt: skip
        self.model = (
            Classifier(self.base_encoder, self.head, self.label_names).to(self.accelerator.device).eval()
        )
        return {"head_train_accuracy": train_acc}

    def score(self, split: str) -> dict[str, Any]:
        out = collect_predictions(self.accelerator, self.model, self.loaders[split], desc=split)
        report = classification_report(out["predictions"], out["references"], self.label_names)
        return {**report, "loss": float(out["loss"])}

    def evaluate(self, head_info: dict[str, float]) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "fewshot": {
                "shots_per_class": self.fewshot.shots_per_class,
                "num_examples": len(self.train_set),
                "train_indices": [int(i) for i in self.train_indices],
                "stage1_inputs": self.loss.inputs,
                "stage1_rows": len(self.rows) if self.engine is not None else 0,
                **head_info,
            },
            "steps": self.state.step if self.state else 0,
        }
        for split in ("validation", "test"):
            if split in self.loaders:
                metrics[split] = self.score(split)
                title = f"{split} ({len(self.splits[split])} examples)"
                self.accelerator.print(format_report(metrics[split], title=title))
        metrics["history"] = self.state.history if self.state else []
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            path = save_model(
                self.model, self.output_dir / MODEL_DIRNAME, adapter_kind=self.adapter.kind,
                config=self.cfg, metrics=metrics,
            )  # fmt: skip
            write_metrics(self.output_dir / "metrics.json", metrics)
            self.accelerator.print(f"Model written to {path}; metrics in {self.output_dir / 'metrics.json'}")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train_encoder()
        metrics = self.evaluate(self.fit_head())
        self.save(metrics)
        return metrics


RECIPE = FewShotRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(FewShotRecipe, argv, prog="hftl run fewshot")


if __name__ == "__main__":
    raise SystemExit(main())
