"""Fine-tune a pretrained encoder for classification: full, frozen probe, LoRA or IA3.

Run:
    hftl run finetune --config text/minilm_lora_sst2 [key=value ...]
    python recipes/finetune.py --config recipes/configs/text/minilm_lora_sst2.yaml   # same code

Reads top to bottom: ``setup()`` builds data → encoder → adapter → head → optimizer → loaders in
dependency order, ``train()`` runs the shared Accelerate loop, ``evaluate()`` scores validation and
test splits, ``save()`` writes the model directory that ``hftl.load`` / ``hftl predict`` use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from omegaconf import DictConfig

from hftl.config import instantiate, to_dataclass
from hftl.errors import ConfigError
from hftl.evaluation import classification_report, format_report, write_metrics
from hftl.evaluation.predictions import collect_predictions
from hftl.models import Classifier, count_parameters
from hftl.models.io import MODEL_DIRNAME, save_model
from hftl.recipe import recipe_main
from hftl.training import Engine, LayerwiseConfig, TrainConfig, cross_entropy_step, steps_for
from hftl.training.builders import (
    batches_per_epoch,
    build_accelerator,
    build_loader,
    build_lr_scheduler,
    build_optimizer,
    build_unfreezer,
    describe_layerwise,
    describe_splits,
    print_summary,
    train_lengths,
)
from hftl.training.run import classification_step, eval_loader, init_trackers, pretokenized
from hftl.training.schedules import SCHEDULER_RUNTIME_ARGS


class FinetuneRecipe:
    """Supervised transfer of one encoder to one labelled data set."""

    # Values the recipe passes at run time; a config must not set them.
    RUNTIME_ARGS = {
        "head": {"in_features", "num_labels"}, "optimizer": {"params"}, "lr_scheduler": SCHEDULER_RUNTIME_ARGS,
    }  # fmt: skip
    SECTIONS = {"train": TrainConfig, "train.layerwise": LayerwiseConfig}
    REQUIRED = ("output_dir", "encoder", "adapter", "head", "data", "optimizer")
    # read when present; without `loss` cross-entropy, without `lr_scheduler` `train.lr_scheduler`
    OPTIONAL = ("push_to_hub", "loss", "lr_scheduler")
    STREAMING = True  # `data.streaming: true` (train splits read lazily) is supported

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.train_cfg = to_dataclass(TrainConfig, cfg.get("train"), key="train")
        self.output_dir = Path(cfg.output_dir)
        self.seed = int(cfg.get("seed", 42))

    def _build(self, key: str, **runtime: Any) -> Any:
        return instantiate(self.cfg[key], allow_any=self.allow_any, **runtime)

    def load_data(self) -> Any:
        self.data = self._build("data")
        splits = self.data.load()
        if "train" not in splits:
            raise ConfigError(
                f"`data` has no train split (found {sorted(splits)}); map one with `data.splits`"
            )
        self.splits, self.label_names = splits, splits.label_names
        return splits

    def setup(self) -> None:
        tc = self.train_cfg
        self.accelerator = build_accelerator(tc, self.output_dir)
        set_seed(self.seed)
        splits = self.load_data()
        encoder = self._build("encoder")
        if encoder.modality != splits.modality:
            raise ConfigError(
                f"`encoder` is a {encoder.modality} encoder but `data` holds {splits.modality}; pick a matching encoder"
            )
        self.splits = splits = pretokenized(self.accelerator, encoder, splits)  # text: once, cached
        self.adapter = self._build("adapter")
        self.adapter.apply(encoder)
        head = self._build("head", in_features=encoder.out_features, num_labels=len(self.label_names))
        self.model = Classifier(encoder, head, self.label_names)
        optimizer = build_optimizer(  # one group, or one per layer with `train.layerwise`
            lambda params: self._build("optimizer", params=params), self.model,
            backbone=encoder.backbone, layerwise=tc.layerwise,
        )  # fmt: skip

        train_loader = build_loader(
            splits["train"], collate_fn=encoder.collator(train=True), batch_size=tc.batch_size,
            shuffle=True, seed=self.seed, lengths=train_lengths(splits["train"], encoder, tc),
            num_workers=tc.num_workers,
        )  # fmt: skip
        self.model, optimizer, train_loader = self.accelerator.prepare(self.model, optimizer, train_loader)
        self.eval_loaders = {
            name: eval_loader(
                self.accelerator, splits[name], collate_fn=encoder.collator(train=False), config=tc
            )
            for name in ("validation", "test")
            if name in splits
        }
        per_epoch = batches_per_epoch(train_loader)  # None: streamed data
        self.total_steps = steps_for(tc, per_epoch)
        scheduler = build_lr_scheduler(
            self.cfg.get("lr_scheduler"), tc, optimizer, self.accelerator,
            total_steps=self.total_steps, allow_any=self.allow_any,
        )  # fmt: skip
        criterion = (
            self._build("loss").to(self.accelerator.device) if self.cfg.get("loss") is not None else None
        )
        unfreezer = build_unfreezer(tc, optimizer, batches_per_epoch=per_epoch)
        self.engine = Engine(
            accelerator=self.accelerator, model=self.model, optimizer=optimizer, scheduler=scheduler,
            train_loader=train_loader, config=tc, output_dir=self.output_dir, total_steps=self.total_steps,
            loss_fn=cross_entropy_step if criterion is None else classification_step(criterion),
            evaluate=(lambda: self.score("validation")) if "validation" in splits else None, on_step=unfreezer,
        )  # fmt: skip
        self._print_summary(encoder, criterion, per_epoch, describe_layerwise(optimizer, unfreezer))
        init_trackers(self.accelerator, tc)

    def _print_summary(self, encoder: Any, criterion: Any, per_epoch: int | None, layerwise: dict) -> None:
        """The "Running training" block: what runs, on how much data, for how many steps, where."""
        tc, acc = self.train_cfg, self.accelerator
        trainable, total = count_parameters(self.model)
        print_summary(acc, "Running training", {
            "Encoder": f"{encoder.name_or_path} ({encoder.modality}, pooling {encoder.pool.method})",
            "Adapter": type(self.adapter).__name__,
            "Loss": "cross-entropy" if criterion is None else type(criterion).__name__,
            "Trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / total:.2f} %)",
            "Examples": describe_splits(self.splits),
            "Labels": ", ".join(self.label_names),
            "Epochs / optimizer steps": f"{tc.epochs if per_epoch else 'streamed'} / {self.total_steps}",
            "Batch size per device × accumulation × processes": f"{tc.batch_size} × {tc.gradient_accumulation_steps} × {acc.num_processes}",
            "Device / precision": f"{acc.device} / {tc.mixed_precision}",
            **layerwise,
            "Output": str(self.output_dir),
        })  # fmt: skip

    def score(self, split: str) -> dict[str, Any]:
        out = collect_predictions(self.accelerator, self.model, self.eval_loaders[split], desc=split)
        report = classification_report(out["predictions"], out["references"], self.label_names)
        return {**report, "loss": float(out["loss"])}

    def train(self) -> None:
        self.state = self.engine.fit()

    def evaluate(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"best_step": self.state.best_step, "steps": self.state.step}
        for split in self.eval_loaders:
            report = self.score(split)
            metrics[split] = report
            self.accelerator.print(
                format_report(report, title=f"{split} ({len(self.splits[split])} examples)")
            )
        metrics["history"] = self.state.history
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            path = save_model(
                model,
                self.output_dir / MODEL_DIRNAME,
                adapter_kind=self.adapter.kind,
                config=self.cfg,
                metrics=metrics,
            )
            write_metrics(self.output_dir / "metrics.json", metrics)
            self.accelerator.print(f"Model written to {path}; metrics in {self.output_dir / 'metrics.json'}")
            if self.cfg.get("push_to_hub"):
                from hftl.hub import push_from_config

                self.accelerator.print(f"Pushed to {push_from_config(self.cfg.push_to_hub, self.output_dir)}")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train()
        metrics = self.evaluate()
        self.save(metrics)
        return metrics


RECIPE = FinetuneRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(FinetuneRecipe, argv, prog="hftl run finetune")


if __name__ == "__main__":
    raise SystemExit(main())
