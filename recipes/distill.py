"""Knowledge distillation: a trained teacher → a smaller, faster student (KD + optional FitNets hints).

Run:
    hftl run distill --config text/minilm_distill_sst2 [key=value ...]
    python recipes/distill.py --config recipes/configs/text/minilm_distill_sst2.yaml   # same code

``setup()`` makes sure the teacher exists (``teacher.path``, a saved hftl model; trained first with
``hftl run finetune --config teacher.finetune_config`` when missing), builds the student (its encoder
config, optionally initialised from the teacher's merged weights and cut down to ``distill.student_layers``),
records the teacher's logits once per training example (``distill.cache_teacher_logits``), then trains the
student on ``loss`` (KD) + ``hints.weight`` × ``hints`` (FitNets) over the labelled ``data`` and the
optional ``unlabeled`` data (soft loss only). ``evaluate()`` scores student and teacher on the same splits
and times both on the same batch; ``save()`` writes the student as an ordinary hftl model directory.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hftl.config import instantiate, to_dataclass
from hftl.encoders.base import hidden_size_of
from hftl.errors import ConfigError, ModelLoadError
from hftl.evaluation import classification_report, format_report, write_metrics
from hftl.evaluation.predictions import collect_predictions
from hftl.losses.distillation import IGNORE_LABEL, SoftTargetCollator, record_logits
from hftl.models import Classifier, count_parameters
from hftl.models.compress import keep_layers, merged_backbone, same_tokenizer, time_forward
from hftl.models.io import MODEL_DIRNAME, find_model_dir, load_model, save_model
from hftl.models.source import is_hub_source
from hftl.recipe import recipe_main
from hftl.training import Engine, Progress, TrainConfig, steps_for
from hftl.training.builders import build_accelerator, build_loader, build_lr_scheduler, print_summary
from hftl.training.run import eval_loader, init_trackers
from hftl.training.schedules import SCHEDULER_RUNTIME_ARGS
from hftl.training.sections import DistillConfig, TeacherConfig


class DistillModel(nn.Module):
    """The student plus the trainable parts of the distillation losses (FitNets regressors)."""

    def __init__(self, student: Classifier, hints: nn.Module | None):
        super().__init__()
        self.student, self.hints = student, hints

    def forward(self, **inputs: torch.Tensor):
        return self.student(**inputs)

    def forward_states(self, **inputs: torch.Tensor):
        """Logits and every hidden state (for hints)."""
        enc = self.student.encoder
        out = enc.backbone(**inputs, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[enc.layer]
        mask = enc.output_mask(inputs, hidden)
        return self.student.head(enc.pool(hidden, mask)), out.hidden_states, mask


def _combine(main: Any, *extra: tuple[float, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """``main.loss + Σ weight · extra.loss`` and every metric."""
    loss, logs = main.loss, dict(main.metrics)
    for weight, out in extra:
        loss, logs = loss + weight * out.loss, {**logs, **out.metrics}
    return loss, logs


class DistillRecipe:
    """Teacher → student distillation with accuracy and inference-speed report."""

    RUNTIME_ARGS = {
        "student.head": {"in_features", "num_labels"},
        "optimizer": {"params"},
        "hints": {"student_features", "teacher_features"},
        "unlabeled": {"unlabeled_splits"},
        "lr_scheduler": SCHEDULER_RUNTIME_ARGS,
    }
    SECTIONS = {"train": TrainConfig, "teacher": TeacherConfig, "distill": DistillConfig}
    REQUIRED = ("output_dir", "teacher", "student.encoder", "student.head", "data", "loss", "optimizer")

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.train_cfg = to_dataclass(TrainConfig, cfg.get("train"), key="train")
        self.teacher_cfg = to_dataclass(TeacherConfig, cfg.get("teacher"), key="teacher")
        self.distill_cfg = to_dataclass(DistillConfig, cfg.get("distill"), key="distill")
        self.output_dir = Path(cfg.output_dir)
        self.seed = int(cfg.get("seed", 42))
        if (
            self.teacher_cfg.finetune_config is not None
        ):  # every problem of the teacher run, before any weights
            from hftl.recipes.finetune import FinetuneRecipe

            from hftl.recipe import load_and_validate

            self._teacher_run = load_and_validate(
                FinetuneRecipe,
                self.teacher_cfg.finetune_config,
                [*self.teacher_cfg.finetune_overrides, f"output_dir={self.teacher_cfg.path}"],
                allow_any=allow_any_component,
            )

    def _build(self, node: Any, **runtime: Any) -> Any:
        return instantiate(node, allow_any=self.allow_any, **runtime)

    # -- teacher -----------------------------------------------------------------------------------
    def load_teacher(self) -> Classifier:
        tc = self.teacher_cfg
        try:
            if not is_hub_source(tc.path):  # hf://user/name: load_model downloads it
                find_model_dir(tc.path)
        except ModelLoadError:
            if tc.finetune_config is None:
                raise ConfigError(
                    f"`teacher.path` = {tc.path!r} holds no trained model; point it at a finished `hftl run` "
                    "output or set `teacher.finetune_config` to train the teacher first"
                ) from None
            from hftl.recipes.finetune import FinetuneRecipe

            from hftl.recipe import claim_output_dir

            # the teacher's folder: the same checks as a run
            claim_output_dir(FinetuneRecipe, self._teacher_run)
            print(f"Training the teacher first: {tc.finetune_config} -> {tc.path}")
            FinetuneRecipe(self._teacher_run, allow_any_component=self.allow_any).run()
        teacher, _ = load_model(tc.path)  # a model directory is data: rebuilt from hftl's tables only
        return teacher.requires_grad_(False)

    # -- student -----------------------------------------------------------------------------------
    def build_student(self, teacher: Classifier) -> Classifier:
        dc, node = self.distill_cfg, self.cfg.student
        encoder = self._build(node.encoder)
        head = self._build(node.head, in_features=encoder.out_features, num_labels=len(self.label_names))
        if dc.init_from_teacher:
            try:
                encoder.base_model.load_state_dict(merged_backbone(teacher.encoder).state_dict())
                encoder.pool.load_state_dict(teacher.encoder.pool.state_dict())
                head.load_state_dict(teacher.head.state_dict())
            except RuntimeError as err:
                raise ConfigError(
                    "`distill.init_from_teacher`: the student's encoder/head differ from the teacher's "
                    f"({str(err).splitlines()[0]}); use the teacher's architecture in `student` or set it to false"
                ) from err
        if dc.student_layers is not None:
            keep_layers(encoder, dc.student_layers)
        self.adapter = self._build(node.adapter) if "adapter" in node else None
        if self.adapter is not None:
            self.adapter.apply(encoder)
        return Classifier(encoder, head, self.label_names)

    # -- data --------------------------------------------------------------------------------------
    def training_set(self) -> datasets.Dataset:
        """Labelled train rows plus ``unlabeled`` train rows (label :data:`IGNORE_LABEL`: soft loss only)."""
        train = self.splits["train"].cast_column("label", datasets.Value("int64"))
        if "unlabeled" not in self.cfg:
            return train
        extra = self._build(self.cfg.unlabeled, unlabeled_splits=["train"]).load()["train"]
        col = self.splits.modality
        if col not in extra.column_names:
            raise ConfigError(
                f"`unlabeled` holds columns {extra.column_names} but `data` is {col}; give {col} inputs"
            )
        extra = extra.select_columns([col]).add_column("label", [IGNORE_LABEL] * len(extra))
        return datasets.concatenate_datasets([train, extra.cast(train.features)])

    def load_data(self, teacher: Classifier) -> None:
        self.data = self._build(self.cfg.data)
        self.splits = self.data.load()
        if "train" not in self.splits:
            raise ConfigError(
                f"`data` has no train split (found {sorted(self.splits)}); map one with `data.splits`"
            )
        self.label_names = self.splits.label_names
        if teacher.label_names != self.label_names:
            raise ConfigError(
                f"the teacher predicts {teacher.label_names} but `data` has labels {self.label_names}; set "
                "`data.label_names` to the teacher's list (same order)"
            )

    def setup(self) -> None:
        tc, dc = self.train_cfg, self.distill_cfg
        teacher = self.load_teacher()  # may train it first (its own run and accelerator)
        self.accelerator = acc = build_accelerator(tc, self.output_dir)
        set_seed(self.seed)
        self.load_data(teacher)
        student = self.build_student(teacher)
        enc_s, enc_t = student.encoder, teacher.encoder
        self.shared_inputs = same_tokenizer(enc_s, enc_t)
        hints = None
        if "hints" in self.cfg:
            hints = self._build(
                self.cfg.hints,
                student_features=hidden_size_of(enc_s.base_model.config),
                teacher_features=hidden_size_of(enc_t.base_model.config),
            )
        self.cache = dc.cache_teacher_logits and hints is None
        if not self.cache and not self.shared_inputs:
            raise ConfigError(
                "teacher and student tokenize differently, so the teacher cannot run on the student's batches: "
                "set `distill.cache_teacher_logits: true` and remove `hints`, or use the teacher's tokenizer"
            )
        self.teacher = teacher.to(acc.device).eval()
        self.train_set, train_loader = self.train_loader(enc_s, enc_t)
        self.eval_loaders = {
            (who, split): eval_loader(acc, self.splits[split], collate_fn=enc.collator(train=False), config=tc)
            for split in ("validation", "test") if split in self.splits
            for who, enc in (("student", enc_s), ("teacher", enc_t))
        }  # fmt: skip
        self.model = DistillModel(student, hints)
        self.loss = self._build(self.cfg.loss)
        optimizer = self._build(
            self.cfg.optimizer, params=[p for p in self.model.parameters() if p.requires_grad]
        )
        self.model, optimizer, train_loader = acc.prepare(self.model, optimizer, train_loader)
        total = steps_for(tc, len(train_loader))
        scheduler = build_lr_scheduler(
            self.cfg.get("lr_scheduler"), tc, optimizer, acc, total_steps=total, allow_any=self.allow_any
        )
        self.engine = Engine(
            accelerator=acc, model=self.model, optimizer=optimizer, scheduler=scheduler,
            train_loader=train_loader, config=tc, output_dir=self.output_dir, total_steps=total,
            loss_fn=self.step, evaluate=(lambda: self.score("student", "validation"))
            if "validation" in self.splits else None,
        )  # fmt: skip
        self._print_summary(enc_s, enc_t, hints, total)
        init_trackers(acc, tc)

    def train_loader(self, enc_s: Any, enc_t: Any) -> tuple[datasets.Dataset, Any]:
        """The training examples (labelled + ``unlabeled``) and their loader; with ``cache_teacher_logits``,
        each example carries the teacher's logits, computed once here."""
        tc, acc = self.train_cfg, self.accelerator
        train_set = self.training_set()
        collate = enc_s.collator(train=True)
        if self.cache:  # one teacher pass, kept per example (in memory, with the dataset)
            plain = build_loader(
                train_set, collate_fn=enc_t.collator(train=False), batch_size=tc.evaluation_batch_size,
                shuffle=False,
            )  # fmt: skip
            with acc.autocast():
                logits = record_logits(self.teacher, plain, device=acc.device)
            train_set = train_set.add_column("teacher_logits", logits.tolist())
            collate = SoftTargetCollator(collate)
        return train_set, build_loader(
            train_set, collate_fn=collate, batch_size=tc.batch_size, shuffle=True, seed=self.seed,
            num_workers=tc.num_workers,
        )  # fmt: skip

    def _print_summary(self, enc_s: Any, enc_t: Any, hints: Any, total: int) -> None:
        tc, dc, acc, train_set = self.train_cfg, self.distill_cfg, self.accelerator, self.train_set
        (s_train, s_all), (_, t_all) = count_parameters(self.model), count_parameters(self.teacher)
        print_summary(acc, "Running distillation", {
            "Teacher": f"{self.teacher_cfg.path} ({enc_t.name_or_path}, {t_all:,} parameters)",
            "Student": f"{enc_s.name_or_path}, layers {dc.student_layers or 'all'}, {s_all:,} parameters "
                       f"({s_train:,} trainable), init from {'teacher' if dc.init_from_teacher else 'its config'}",
            "Loss": f"{type(self.loss).__name__}" + (f" + {hints.weight} × {type(hints).__name__}" if hints else ""),
            "Teacher logits": "cached once per example" if self.cache else "computed per batch",
            "Examples": f"train {len(train_set):,} (unlabelled {sum(1 for y in train_set['label'] if y == IGNORE_LABEL):,})",
            "Optimizer steps": total,
            "Device / precision": f"{acc.device} / {tc.mixed_precision}",
        })  # fmt: skip

    def teacher_forward(self, batch: dict[str, torch.Tensor], *, states: bool) -> tuple[torch.Tensor, Any]:
        """Teacher logits (and every hidden state when ``states``) on the student's own batch."""
        enc = self.teacher.encoder
        with torch.no_grad(), self.accelerator.autocast():
            out = enc.backbone(**batch, output_hidden_states=states or enc.layer != -1, return_dict=True)
            hidden = out.last_hidden_state if enc.layer == -1 else out.hidden_states[enc.layer]
            logits = self.teacher.head(enc.pool(hidden, enc.output_mask(batch, hidden)))
        return logits, out.hidden_states

    def step(
        self, model: nn.Module, batch: dict[str, torch.Tensor], progress: Progress
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels, soft = batch.pop("labels"), batch.pop("teacher_logits", None)
        inner = self.accelerator.unwrap_model(model)
        if inner.hints is None:
            logits = model(**batch).logits
            if soft is None:
                soft, _ = self.teacher_forward(batch, states=False)
            return _combine(self.loss(logits, soft, labels))
        with self.accelerator.autocast():  # forward_states bypasses the prepared forward's autocast
            logits, states, mask = inner.forward_states(**batch)
        soft, teacher_states = self.teacher_forward(batch, states=True)
        return _combine(
            self.loss(logits, soft, labels), (inner.hints.weight, inner.hints(states, teacher_states, mask))
        )

    def score(self, who: str, split: str) -> dict[str, Any]:
        model = self.model if who == "student" else self.teacher
        out = collect_predictions(
            self.accelerator, model, self.eval_loaders[(who, split)], desc=f"{who} {split}"
        )
        return {
            **classification_report(out["predictions"], out["references"], self.label_names),
            "loss": out["loss"],
        }

    def train(self) -> None:
        self.state = self.engine.fit()

    def speed(self) -> dict[str, Any]:
        """Forward-pass time of teacher (as loaded, and LoRA-merged) and student on the same test texts."""
        dc, acc = self.distill_cfg, self.accelerator
        split = "test" if "test" in self.splits else next(iter(self.splits))
        rows = list(self.splits[split].select(range(min(dc.speed_batch_size, len(self.splits[split])))))
        student = acc.unwrap_model(self.model).student

        def batch(enc):
            b = enc.collator(train=False)(rows)
            return {k: v.to(acc.device) for k, v in b.items() if k != "labels"}

        enc_t = self.teacher.encoder
        merged = copy.deepcopy(self.teacher)  # the teacher itself stays as loaded
        merged.encoder.backbone = merged_backbone(enc_t).to(acc.device).eval()
        t = time_forward(
            {"teacher": (self.teacher, batch(enc_t)), "teacher_merged": (merged, batch(enc_t)),
             "student": (student, batch(student.encoder))},
            repeats=dc.speed_repeats, accelerator=acc,
        )  # fmt: skip
        return {
            "batch_size": len(rows), "split": split, "device": str(acc.device),
            **{f"{k}_ms": round(1000 * v, 3) for k, v in t.items()},
            "speedup": t["teacher_merged"] / t["student"],  # against the fastest form of the teacher
            "speedup_vs_loaded_teacher": t["teacher"] / t["student"],
        }  # fmt: skip

    def evaluate(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"best_step": self.state.best_step, "steps": self.state.step}
        teacher: dict[str, Any] = {}
        for who, split in self.eval_loaders:
            report = self.score(who, split)
            (metrics if who == "student" else teacher)[split] = report
            self.accelerator.print(
                format_report(report, title=f"{who} {split} ({len(self.splits[split])} examples)")
            )
        split = "test" if "test" in teacher else "validation" if "validation" in teacher else None
        metrics["teacher"] = teacher
        metrics["speed"] = self.speed()
        metrics["parameters"] = {
            "student": count_parameters(self.accelerator.unwrap_model(self.model).student)[1],
            "teacher": count_parameters(self.teacher)[1],
        }
        if split is not None:
            metrics["accuracy_retained"] = metrics[split]["accuracy"] / max(teacher[split]["accuracy"], 1e-12)
            self.accelerator.print(
                f"student {split} accuracy {metrics[split]['accuracy']:.4f} vs teacher {teacher[split]['accuracy']:.4f} "
                f"({100 * metrics['accuracy_retained']:.1f} % kept); {metrics['speed']['speedup']:.2f}× faster "
                f"({metrics['speed']['student_ms']} vs {metrics['speed']['teacher_merged_ms']} ms per batch of "
                f"{metrics['speed']['batch_size']} on {metrics['speed']['device']})"
            )
        metrics["history"] = self.state.history
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            student = acc.unwrap_model(self.model).student
            kind = self.adapter.kind if self.adapter is not None else "full"
            if kind != "full" and (self.distill_cfg.student_layers or self.distill_cfg.init_from_teacher):
                student.encoder.backbone = merged_backbone(student.encoder)  # no base model to reload on
                kind = "full"
            # the student directory rebuilds from `encoder`/`adapter`/`head` like any finetune output
            node = self.cfg.student
            cfg = OmegaConf.merge(self.cfg, {"encoder": node.encoder, "head": node.head,
                                             "adapter": node.get("adapter", {"_component_": "hftl.adapters.FullFinetune"})})  # fmt: skip
            path = save_model(
                student, self.output_dir / MODEL_DIRNAME, adapter_kind=kind, config=cfg, metrics=metrics
            )
            write_metrics(self.output_dir / "metrics.json", metrics)
            acc.print(f"Student written to {path}; metrics in {self.output_dir / 'metrics.json'}")
        acc.wait_for_everyone()
        acc.end_training()

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train()
        metrics = self.evaluate()
        self.save(metrics)
        return metrics


RECIPE = DistillRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(DistillRecipe, argv, prog="hftl run distill")


if __name__ == "__main__":
    raise SystemExit(main())
