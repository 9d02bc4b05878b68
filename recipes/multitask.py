"""Multi-task heads on one encoder, and learning without forgetting (LwF) when adding a task.

Run:
    hftl run multitask --config text/multitask_sst2_agnews [key=value ...]
    hftl run multitask --config text/lwf_sst2_to_agnews           # LwF: keep an old head while adding a task
    python recipes/multitask.py --config recipes/configs/text/multitask_sst2_agnews.yaml   # same code

Every task under ``tasks:`` has its own ``data`` (own label set), ``head`` and loss ``weight``; a batch
holds one task's examples, tasks drawn ``proportional``ly to their size or ``round_robin``. With
``init_from`` (a saved hftl model) the encoder and its head are kept: the head becomes task ``lwf.task``,
trained by LwF on the new tasks' data (its outputs recorded before training, Li & Hoiem 2016); with
``lwf.baseline: true`` the same run is repeated with ``lwf.weight = 0`` (plain fine-tuning) and the
old task's accuracy before / after LwF / after plain fine-tuning is reported on ``old_task_data``.
The saved model predicts every task: ``hftl.load(out, task="name")``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hftl.config import instantiate, to_dataclass
from hftl.data.paired import cycle_batches
from hftl.errors import ConfigError
from hftl.evaluation import classification_report, format_report, write_metrics
from hftl.evaluation.predictions import collect_predictions
from hftl.losses.distillation import SoftTargetCollator, record_logits, soft_kl
from hftl.models import count_parameters
from hftl.models.io import MODEL_DIRNAME, load_model, save_model
from hftl.models.multitask import MultiTaskClassifier, save_tasks
from hftl.models.spec import component_node
from hftl.recipe import recipe_main
from hftl.training import Engine, Progress, TrainConfig, steps_for
from hftl.training.builders import build_accelerator, build_loader, build_lr_scheduler, print_summary
from hftl.training.run import eval_loader, init_trackers
from hftl.training.schedules import SCHEDULER_RUNTIME_ARGS
from hftl.training.sections import LwFConfig, MultitaskConfig


class TaskPattern(dict):
    """``RUNTIME_ARGS`` whose keys may hold ``*`` (task names are the user's): ``tasks.*.head``."""

    def get(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.items() if fnmatch.fnmatchcase(key, k)), default)


class MultiTaskLoader:
    """Yields ``(task, batch)``; resumable (``set_epoch``, ``skip_first_batches``) like PairedLoader.

    Each task's loader cycles as :func:`hftl.data.paired.cycle_batches` does (PairedLoader's own).

    ``proportional``: an epoch holds every batch of every loader once, the task order shuffled with
    seed ``seed + epoch``. ``round_robin``: tasks in turn, ``len = tasks × longest``, shorter ones restart.
    """

    def __init__(self, loaders: dict[str, Any], *, sampling: str, seed: int):
        self.loaders, self.sampling, self.seed = loaders, sampling, seed
        self.epoch, self._skip = 0, 0

    def _order(self) -> list[str]:
        names = list(self.loaders)
        if self.sampling == "round_robin":
            return names * max(len(x) for x in self.loaders.values())
        order = [n for n in names for _ in range(len(self.loaders[n]))]
        return [order[i] for i in np.random.default_rng(self.seed + self.epoch).permutation(len(order))]

    def __len__(self) -> int:
        return len(self._order()) if self.sampling == "round_robin" else sum(map(len, self.loaders.values()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first_batches(self, num_batches: int) -> MultiTaskLoader:
        view = MultiTaskLoader(self.loaders, sampling=self.sampling, seed=self.seed)
        view.epoch, view._skip = self.epoch, num_batches
        return view

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        order = self._order()
        done = {n: order[: self._skip].count(n) for n in self.loaders}
        streams = {n: cycle_batches(self.loaders[n], epoch=self.epoch, start=done[n]) for n in self.loaders}
        for name in order[self._skip :]:
            yield name, next(streams[name])


class MultitaskRecipe:
    """Several labelled tasks on one encoder; optionally keeps an old model's head by LwF."""

    RUNTIME_ARGS = TaskPattern({
        "tasks.*.head": {"in_features", "num_labels"}, "optimizer": {"params"}, "lr_scheduler": SCHEDULER_RUNTIME_ARGS,
    })  # fmt: skip
    SECTIONS = {"train": TrainConfig, "multitask": MultitaskConfig, "lwf": LwFConfig}
    REQUIRED = ("output_dir", "tasks", "optimizer")
    # encoder/adapter: without init_from; without `loss` cross-entropy, without `lr_scheduler` train.lr_scheduler
    OPTIONAL = ("encoder", "adapter", "init_from", "old_task_data", "loss", "lr_scheduler")

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.train_cfg = to_dataclass(TrainConfig, cfg.get("train"), key="train")
        self.mt_cfg = to_dataclass(MultitaskConfig, cfg.get("multitask"), key="multitask")
        self.lwf = to_dataclass(LwFConfig, cfg.get("lwf"), key="lwf") if cfg.get("init_from") else None
        self.output_dir, self.seed = Path(cfg.output_dir), int(cfg.get("seed", 42))
        problems = []
        if not isinstance(cfg.tasks, DictConfig) or not cfg.tasks:
            problems.append("`tasks` must map task names to {data, head, weight}")
        for name, node in cfg.tasks.items() if isinstance(cfg.tasks, DictConfig) else []:
            missing = [k for k in ("data", "head") if k not in node]
            if missing or not float(node.get("weight", 1.0)) >= 0:
                problems.append(
                    f"`tasks.{name}` needs `data` and `head` and a `weight` >= 0 (missing {missing})"
                )
        if cfg.get("init_from"):
            if "encoder" in cfg or "adapter" in cfg:
                problems.append(
                    "`encoder`/`adapter` come from `init_from`'s model; remove them or `init_from`"
                )
            if self.lwf.task in cfg.tasks:
                problems.append(
                    f"`lwf.task` = {self.lwf.task!r} is also in `tasks`; give the old task another name"
                )
        elif "encoder" not in cfg or "adapter" not in cfg:
            problems.append("`encoder` and `adapter` are required without `init_from`")
        elif "lwf" in cfg or "old_task_data" in cfg:
            problems.append("`lwf`/`old_task_data` need `init_from` (the model whose head is kept)")
        if problems:
            raise ConfigError(problems)

    def _build(self, node: Any, **runtime: Any) -> Any:
        return instantiate(node, allow_any=self.allow_any, **runtime)

    # -- model ---------------------------------------------------------------------------------
    def build_model(self) -> MultiTaskClassifier:
        """Encoder (+adapter) and one head per task; with ``init_from`` the saved model's head is kept."""
        heads, labels, self.head_nodes = {}, {}, {}
        if self.cfg.get("init_from"):
            old, meta = load_model(self.cfg.init_from)  # a model directory is data: hftl's tables only
            encoder, self.adapter_kind = old.encoder, meta["adapter"]
            self.encoder_node = component_node(meta["encoder"], "encoder", model=meta["base_model"])
            for n, p in encoder.backbone.named_parameters():  # peft loads its weights frozen (inference mode)
                peft_weight = self.adapter_kind == "peft" and any(t in n for t in ("lora_", "ia3_"))
                p.requires_grad_(self.adapter_kind == "full" or peft_weight)
            heads[self.lwf.task], labels[self.lwf.task] = old.head, old.label_names
            self.head_nodes[self.lwf.task] = component_node(meta["head"], "head")
        else:
            encoder = self._build(self.cfg.encoder)
            adapter = self._build(self.cfg.adapter)
            adapter.apply(encoder)
            self.adapter_kind, self.encoder_node = adapter.kind, self.cfg.encoder
        for name, splits in self.splits.items():
            node = self.cfg.tasks[name].head
            heads[name] = self._build(
                node, in_features=encoder.out_features, num_labels=len(splits.label_names)
            )
            labels[name], self.head_nodes[name] = splits.label_names, node
        order = [*self.data, *(t for t in heads if t not in self.data)]  # new tasks first: the default task
        return MultiTaskClassifier(encoder, {t: heads[t] for t in order}, {t: labels[t] for t in order})

    # -- one training run ----------------------------------------------------------------------
    def load_data(self) -> None:
        self.data = {name: self._build(node.data) for name, node in self.cfg.tasks.items()}
        self.splits = {name: data.load() for name, data in self.data.items()}
        for name, splits in self.splits.items():
            if "train" not in splits:
                raise ConfigError(f"`tasks.{name}.data` has no train split (found {sorted(splits)})")

    def setup(self, *, lwf_weight: float, output_dir: Path) -> None:
        tc = self.train_cfg
        self.accelerator = acc = build_accelerator(tc, output_dir)
        set_seed(self.seed)
        self.load_data()
        self.model = model = self.build_model()
        self.lwf_weight, old = lwf_weight, self.lwf.task if self.lwf else None
        collate, plain_collate = model.encoder.collator(train=True), model.encoder.collator(train=False)
        loaders = {}
        for name, splits in self.splits.items():
            train, task_collate = splits["train"], collate
            if old is not None:  # LwF: the old head's outputs on this task's inputs, recorded before training
                plain = build_loader(
                    train, collate_fn=plain_collate, batch_size=tc.evaluation_batch_size, shuffle=False
                )
                view = model.to(acc.device).eval().task_classifier(old)
                train = train.add_column(
                    "teacher_logits", record_logits(view, plain, device=acc.device).tolist()
                )
                task_collate = SoftTargetCollator(collate)
            loaders[name] = acc.prepare(build_loader(
                train, collate_fn=task_collate, batch_size=tc.batch_size, shuffle=True, seed=self.seed + len(loaders),
                num_workers=tc.num_workers,
            ))  # fmt: skip
        self.eval_loaders = {
            (name, split): eval_loader(acc, splits[split], collate_fn=plain_collate, config=tc)
            for name, splits in self.splits.items() for split in ("validation", "test") if split in splits
        }  # fmt: skip
        if old is not None and "old_task_data" in self.cfg:
            test = self._build(self.cfg.old_task_data).load()["test"]
            self.eval_loaders[(old, "test")] = eval_loader(acc, test, collate_fn=plain_collate, config=tc)
            self.old_before = self.predict(old, "test")
        optimizer = self._build(self.cfg.optimizer, params=[p for p in model.parameters() if p.requires_grad])
        self.model, optimizer = acc.prepare(model, optimizer)
        train_loader = MultiTaskLoader(loaders, sampling=self.mt_cfg.sampling, seed=self.seed)
        total = steps_for(tc, len(train_loader))
        scheduler = build_lr_scheduler(
            self.cfg.get("lr_scheduler"), tc, optimizer, acc, total_steps=total, allow_any=self.allow_any
        )
        loss = self.cfg.get("loss")  # default: cross-entropy
        self.criterion = nn.CrossEntropyLoss() if loss is None else self._build(loss).to(acc.device)
        self.engine = Engine(
            accelerator=acc, model=self.model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
            config=tc, output_dir=output_dir, total_steps=total, loss_fn=self.step, evaluate=self.validate,
        )  # fmt: skip
        trainable, params = count_parameters(model)
        print_summary(acc, "Running multi-task training", {
            "Tasks (weight, train examples, labels)": "; ".join(
                f"{n} ({self.cfg.tasks[n].get('weight', 1.0)}, {len(s['train']):,}, {len(s.label_names)})"
                for n, s in self.splits.items()),
            "Kept task (LwF)": f"{old} from {self.cfg.init_from}, λ = {lwf_weight}" if old else "-",
            "Sampling": self.mt_cfg.sampling,
            "Trainable parameters": f"{trainable:,} of {params:,}",
            "Optimizer steps": total,
            "Output": str(output_dir),
        })  # fmt: skip
        init_trackers(acc, tc, lwf_weight=lwf_weight)

    def step(
        self, model: nn.Module, batch: tuple[str, dict], progress: Progress
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        task, inputs = batch
        labels, recorded = inputs.pop("labels"), inputs.pop("teacher_logits", None)
        also = (self.lwf.task,) if recorded is not None else ()
        out = model(task=task, also=also, **inputs)
        loss = self.criterion(out.logits.float(), labels)
        logs = {f"ce_{task}": loss.detach()}  # the Engine reads logs to the host at log steps only
        if recorded is not None:  # Li & Hoiem: CE(new) + λ · KD(old head now ‖ recorded at start)
            keep = soft_kl(out.others[self.lwf.task], recorded, self.lwf.temperature)
            loss, logs = loss + self.lwf_weight * keep, {**logs, "lwf": keep.detach()}
        return float(self.cfg.tasks[task].get("weight", 1.0)) * loss, logs

    def predict(self, task: str, split: str) -> dict[str, Any]:
        view = self.accelerator.unwrap_model(self.model).task_classifier(task)
        return collect_predictions(
            self.accelerator, view, self.eval_loaders[(task, split)], desc=f"{task} {split}"
        )

    def report(self, task: str, split: str) -> dict[str, Any]:
        out = self.predict(task, split)
        names = self.accelerator.unwrap_model(self.model).label_names[task]
        return {**classification_report(out["predictions"], out["references"], names), "loss": out["loss"]}

    def validate(self) -> dict[str, float]:
        """Mean validation accuracy / macro-F1 / loss over the trained tasks (selects the checkpoint)."""
        reports = {
            t: self.report(t, "validation") for t in self.splits if (t, "validation") in self.eval_loaders
        }
        if not reports:
            return {"accuracy": 0.0, "macro_f1": 0.0, "loss": 0.0}
        mean = {k: float(np.mean([r[k] for r in reports.values()])) for k in ("accuracy", "macro_f1", "loss")}
        return {**mean, **{f"{t}_accuracy": float(r["accuracy"]) for t, r in reports.items()}}

    def evaluate(self, state: Any) -> dict[str, Any]:
        metrics: dict[str, Any] = {"best_step": state.best_step, "steps": state.step, "tasks": {}}
        for task, split in self.eval_loaders:
            if self.lwf and task == self.lwf.task:
                continue
            report = self.report(task, split)
            metrics["tasks"].setdefault(task, {})[split] = report
            self.accelerator.print(format_report(report, title=f"{task} {split}"))
        if self.lwf and (self.lwf.task, "test") in self.eval_loaders:
            after = self.predict(self.lwf.task, "test")
            before = self.old_before
            metrics["old_task"] = {
                "task": self.lwf.task, "lwf_weight": self.lwf_weight,
                "accuracy_before": float((before["predictions"] == before["references"]).mean()),
                "accuracy_after": float((after["predictions"] == after["references"]).mean()),
                # mean total-variation distance between the old head's probabilities before and after
                "drift": float(0.5 * np.abs(after["probabilities"] - before["probabilities"]).sum(-1).mean()),
            }  # fmt: skip
        metrics["history"] = state.history
        return metrics

    def save(self, metrics: dict[str, Any], output_dir: Path) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            first = model.tasks[0]
            cfg = OmegaConf.merge(self.cfg, {"encoder": self.encoder_node, "head": self.head_nodes[first]})
            path = save_model(
                model.task_classifier(first), output_dir / MODEL_DIRNAME, adapter_kind=self.adapter_kind,
                config=cfg, metrics=metrics,
            )  # fmt: skip
            save_tasks(model, path, head_configs=self.head_nodes)
            write_metrics(output_dir / "metrics.json", metrics)
            acc.print(f"Model with tasks {model.tasks} written to {path} (default task {first!r})")
        acc.wait_for_everyone()
        acc.end_training()

    def run(self) -> dict[str, Any]:
        runs = [(self.lwf.weight if self.lwf else 0.0, self.output_dir)]
        if self.lwf and self.lwf.baseline:
            runs.append((0.0, self.output_dir / "plain_finetune"))
        results = []
        for weight, out in runs:
            self.setup(lwf_weight=weight, output_dir=out)
            metrics = self.evaluate(self.engine.fit())
            self.save(metrics, out)
            results.append(metrics)
        metrics = results[0]
        if len(results) == 2 and "old_task" in metrics:
            metrics["old_task"]["plain_finetune"] = results[1]["old_task"]
            metrics["plain_finetune"] = {
                t: r.get("test", {}).get("accuracy") for t, r in results[1]["tasks"].items()
            }
            write_metrics(self.output_dir / "metrics.json", metrics)
            o, p = metrics["old_task"], results[1]["old_task"]
            print(
                f"Old task {o['task']!r} test accuracy: before {o['accuracy_before']:.4f}, after LwF "
                f"{o['accuracy_after']:.4f} (drift {o['drift']:.4f}), after plain fine-tuning "
                f"{p['accuracy_after']:.4f} (drift {p['drift']:.4f})"
            )
        return metrics


RECIPE = MultitaskRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(MultitaskRecipe, argv, prog="hftl run multitask")


if __name__ == "__main__":
    raise SystemExit(main())
