"""Domain/task-adaptive pre-training (DAPT/TAPT): continue masked-LM training of a text encoder on unlabelled
target-domain text, and write an encoder directory that any other recipe loads with ``encoder.model=<dir>``.

Run:
    hftl run dapt --config text/minilm_tapt_kitchen [key=value ...]
    hftl run finetune --config text/minilm_lora_sst2 encoder.model=outputs/minilm_tapt_kitchen/encoder

Gururangan et al., "Don't Stop Pretraining", ACL 2020 (arXiv:2004.10964). ``setup()`` builds the encoder →
the target (and optional source) texts, with a held-out part of the target text → token rows → a masked-LM
head on the encoder (:mod:`hftl.encoders.mlm`: reused, or new with a tied decoder and a warm-up with the
encoder frozen) → optimizer → loaders with transformers' masking (:mod:`hftl.data.masked_lm`);
``train()`` runs the shared Accelerate loop on the masked-token cross-entropy, selecting the checkpoint by
held-out masked-token loss or accuracy (``train.metric_for_best``); ``save()`` writes
``output_dir/encoder`` (the ``AutoModel`` weights + tokenizer, plus the head for a later DAPT stage) and
``metrics.json`` with held-out loss, accuracy and perplexity before training, after the head warm-up (the
unchanged encoder with a fitted head, when an evaluation falls on that step) and at the end.

Labels are never read: the data nodes load their train split without its label column, and token rows
keep only token columns. Only the ``train`` split of ``target``/``source`` is read, so a ``target`` node
copied from an ``adapt`` config (same ``test_size`` and ``seed``) leaves that recipe's test half unseen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from omegaconf import DictConfig

from hftl.config import instantiate, to_dataclass
from hftl.data.masked_lm import IGNORE_INDEX, MaskedLMCollator, tokenize_for_mlm
from hftl.encoders.base import resolve_model_path
from hftl.encoders.mlm import (
    HeadWarmup,
    MaskedLMConfig,
    build_masked_lm,
    check_encoder_dir,
    init_output_bias,
    predicting_only,
    save_encoder,
    unigram_log_prior,
)
from hftl.errors import ConfigError, DataError
from hftl.evaluation import write_metrics
from hftl.models import count_parameters
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
    print_summary,
    train_lengths,
)

ENCODER_DIRNAME = "encoder"


class _TiedWeightsNote(logging.Filter):
    """accelerate warns at every checkpoint that the tied decoder/embedding tensor is stored once; that is
    intended here (the tie is restored when the checkpoint loads), so the warning is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


def masked_lm_logits(
    mlm: torch.nn.Module, model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, V), labels (N,))`` of the ``N`` positions chosen for prediction in ``batch``.

    ``model`` is ``mlm`` as prepared by accelerate (it runs the forward); the vocabulary projection runs on
    the chosen positions only (:func:`hftl.encoders.mlm.predicting_only`).
    """
    labels = batch.pop("labels")
    chosen = labels != IGNORE_INDEX
    with predicting_only(mlm, chosen):
        logits = model(**batch).logits
    if logits.dim() == 3:  # an architecture whose decoder input is not (B, L, H): every position came out
        logits = logits[chosen]
    return logits.float(), labels[chosen]


def _hooks(*hooks: Any) -> Any:
    active = [h for h in hooks if h is not None]
    return (lambda step: [h(step) for h in active]) if active else None


class DaptRecipe:
    """Masked-LM training of one text encoder on unlabelled text of the domain it will be used on."""

    RUNTIME_ARGS = {"target": {"unlabeled_splits"}, "source": {"unlabeled_splits"}, "optimizer": {"params"}}
    SECTIONS = {"train": TrainConfig, "train.layerwise": LayerwiseConfig, "mlm": MaskedLMConfig}
    REQUIRED = ("output_dir", "encoder", "target", "optimizer")
    OPTIONAL = ("source",)  # more unlabelled text (e.g. the labelled domain's), trained on, never held out

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.train_cfg = to_dataclass(TrainConfig, cfg.get("train"), key="train")
        self.mlm_cfg = to_dataclass(MaskedLMConfig, cfg.get("mlm"), key="mlm")
        self.output_dir = Path(cfg.output_dir)
        self.seed = int(cfg.get("seed", 42))
        if self.train_cfg.metric_for_best == "macro_f1":
            raise ConfigError(
                "`train.metric_for_best` = macro_f1 means nothing for masked-LM; use `loss` (held-out "
                "masked-token cross-entropy) or `accuracy` (held-out masked-token accuracy)"
            )

    def _build(self, key: str, **runtime: Any) -> Any:
        return instantiate(self.cfg[key], allow_any=self.allow_any, **runtime)

    # -- data --------------------------------------------------------------------------------------
    def _texts(self, key: str) -> datasets.Dataset:
        """The train split of data node ``key``, loaded without labels, as a ``text`` column."""
        extra = {} if "validation_size" in self.cfg[key] else {"validation_size": 0}  # all of train is text
        data = self._build(key, unlabeled_splits=["train"], **extra)
        splits = data.load()
        if splits.modality != "text":
            raise ConfigError(f"`{key}` holds {splits.modality}, but masked-LM training needs text")
        if "train" not in splits:
            raise ConfigError(
                f"`{key}` has no train split (found {sorted(splits)}); map one with `{key}.splits`"
            )
        return splits["train"].select_columns(["text"])

    def load_texts(self) -> dict[str, datasets.Dataset]:
        """``train`` texts (target rest + source) and the target's ``heldout`` texts (absent when size 0)."""
        target, size = self._texts("target"), self.mlm_cfg.heldout_size
        texts = {"train": target}
        if size:
            if isinstance(size, int) and size >= len(target):
                raise DataError(
                    f"`mlm.heldout_size` = {size} leaves no training text: `target` has {len(target)} texts. "
                    "Fix: hold out fewer, e.g. `mlm.heldout_size=0.1`."
                )
            try:
                parts = target.train_test_split(test_size=size, seed=self.seed)
            except ValueError as err:  # e.g. a fraction of a handful of texts rounds to 0
                raise DataError(
                    f"`mlm.heldout_size` = {size}: cannot hold out texts of {len(target)}: {err}"
                ) from err
            texts = {"train": parts["train"], "heldout": parts["test"]}
        if "source" in self.cfg:
            texts["train"] = datasets.concatenate_datasets([texts["train"], self._texts("source")])
        return texts

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        tc, mc = self.train_cfg, self.mlm_cfg
        # before any work: never replace an encoder directory hftl did not write
        check_encoder_dir(self.output_dir / ENCODER_DIRNAME)
        self.accelerator = build_accelerator(tc, self.output_dir)
        logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())
        set_seed(self.seed)
        self.encoder = encoder = self._build("encoder")
        if encoder.modality != "text":
            raise ConfigError(
                f"`encoder` is a {encoder.modality} encoder; masked-LM training needs a TextEncoder"
            )
        texts = self.load_texts()
        tokenizer = encoder.processor
        with self.accelerator.main_process_first():
            self.rows = {
                name: tokenize_for_mlm(ds, tokenizer, max_length=encoder.max_length,
                                       split_long_texts=mc.split_long_texts, whole_word_mask=mc.whole_word_mask)
                for name, ds in texts.items()
            }  # fmt: skip
        self.texts = texts
        self.mlm, self.head_source = self._masked_lm()
        optimizer = build_optimizer(
            lambda params: self._build("optimizer", params=params), self.mlm,
            backbone=encoder.backbone, layerwise=tc.layerwise,
        )  # fmt: skip
        self._loaders_and_engine(optimizer)

    def _masked_lm(self) -> tuple[torch.nn.Module, str]:
        enc, node = self.encoder, self.cfg.encoder
        checkpoint = resolve_model_path(node.model) if isinstance(node.model, str) else None
        mlm, source = build_masked_lm(
            enc.backbone, checkpoint=checkpoint, revision=node.get("revision"),
            trust_remote_code=bool(node.get("trust_remote_code", False)),
        )  # fmt: skip
        self.bias_init = False
        if source == "new" and self.mlm_cfg.unigram_bias:
            vocab = mlm.get_output_embeddings().weight.shape[0]
            special = self.encoder.processor.all_special_ids
            prior = unigram_log_prior(self.rows["train"]["input_ids"], vocab, special_ids=special)
            self.bias_init = init_output_bias(mlm, prior)
        self.warmup_steps = self.mlm_cfg.head_warmup_steps if source == "new" else 0
        if self.warmup_steps and self.train_cfg.layerwise.gradual:
            raise ConfigError(
                "`mlm.head_warmup_steps` and `train.layerwise.unfreeze_every_*` both keep the encoder frozen at "
                "first; keep one (e.g. `mlm.head_warmup_steps=0`: gradual unfreezing then warms the head up)"
            )
        return mlm, source

    def _loaders_and_engine(self, optimizer: torch.optim.Optimizer) -> None:
        tc, mc, acc = self.train_cfg, self.mlm_cfg, self.accelerator

        def collator(seed: int, *, fixed: bool = False) -> MaskedLMCollator:
            return MaskedLMCollator(
                self.encoder.processor, mlm_probability=mc.mlm_probability, whole_word_mask=mc.whole_word_mask,
                mask_replace_prob=mc.mask_replace_prob, random_replace_prob=mc.random_replace_prob, seed=seed,
                fixed=fixed,
            )  # fmt: skip

        train_loader = build_loader(
            self.rows["train"], collate_fn=collator(self.seed), batch_size=tc.batch_size, shuffle=True,
            seed=self.seed, lengths=train_lengths(self.rows["train"], self.encoder, tc), num_workers=tc.num_workers,
        )  # fmt: skip
        self.heldout_loader = None
        if "heldout" in self.rows:  # fixed masks: the same tokens are scored at every evaluation
            loader = build_loader(self.rows["heldout"], collate_fn=collator(self.seed + 1, fixed=True),
                                  batch_size=tc.eval_batch_size or tc.batch_size, shuffle=False)  # fmt: skip
            self.heldout_loader = acc.prepare(loader)
        self.model, optimizer, train_loader = acc.prepare(self.mlm, optimizer, train_loader)
        per_epoch = batches_per_epoch(train_loader)
        self.total_steps = steps_for(tc, per_epoch)
        scheduler = acc.prepare(
            build_scheduler(tc, optimizer, total_steps=self.total_steps, num_processes=acc.num_processes)
        )
        unfreezer = build_unfreezer(tc, optimizer, batches_per_epoch=per_epoch)
        warmup = (
            HeadWarmup(self.encoder.backbone, optimizer, steps=self.warmup_steps)
            if self.warmup_steps
            else None
        )
        self.engine = Engine(
            accelerator=acc, model=self.model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
            config=tc, output_dir=self.output_dir, total_steps=self.total_steps, loss_fn=self.step,
            evaluate=self.score if self.heldout_loader is not None else None, on_step=_hooks(unfreezer, warmup),
        )  # fmt: skip
        self._summary(optimizer, unfreezer, per_epoch)

    def _summary(self, optimizer: torch.optim.Optimizer, unfreezer: Any, per_epoch: int) -> None:
        tc, mc, acc = self.train_cfg, self.mlm_cfg, self.accelerator
        head = {"head file": "loaded from the encoder's mlm_head.safetensors", "checkpoint": "loaded from the checkpoint",
                "new": f"new (decoder tied to the input embeddings, bias {'log unigram' if self.bias_init else 'zero'})"
                       f", trained alone for {self.warmup_steps} steps with the encoder frozen"}[self.head_source]  # fmt: skip
        rows = ", ".join(f"{k} {len(self.texts[k]):,} texts → {len(v):,} rows" for k, v in self.rows.items())
        trainable, total = count_parameters(self.mlm)
        masking = "whole words" if mc.whole_word_mask else "tokens"
        print_summary(acc, "Running masked-LM training", {
            "Encoder": f"{self.encoder.name_or_path} (max_length {self.encoder.max_length})",
            "Masked-LM head": head,
            "Trainable parameters": f"{trainable:,} of {total:,}",
            "Text": rows,
            "Masking": f"{mc.mlm_probability:.0%} of {masking}",
            "Optimizer steps": f"{self.total_steps} ({per_epoch} batches per epoch)",
            "Batch size per device × accumulation × processes": f"{tc.batch_size} × {tc.gradient_accumulation_steps} × {acc.num_processes}",
            "Device / precision": f"{acc.device} / {tc.mixed_precision}",
            **describe_layerwise(optimizer, unfreezer),
            "Output": str(self.output_dir / ENCODER_DIRNAME),
        })  # fmt: skip
        acc.init_trackers(
            "hftl", config={k: v for k, v in vars(tc).items() if isinstance(v, int | float | str | bool)}
        )

    # -- evaluation, training, saving --------------------------------------------------------------
    def step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], progress: Any = None
    ) -> tuple[torch.Tensor, dict]:
        """The Engine's loss: mean cross-entropy over the batch's masked tokens (0 when none is masked)."""
        logits, labels = masked_lm_logits(self.mlm, model, batch)
        loss = F.cross_entropy(logits, labels, reduction="sum") / max(labels.numel(), 1)
        return loss, {}

    @torch.no_grad()
    def score(self) -> dict[str, float]:
        """Held-out masked-token ``loss`` (nats), ``accuracy``, ``perplexity`` and ``masked_tokens``."""
        acc, was_training = self.accelerator, self.model.training
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=acc.device)  # loss sum, correct, masked tokens
        for batch in self.heldout_loader:
            rows = torch.arange(batch["labels"].shape[0], device=acc.device)[:, None].expand_as(
                batch["labels"]
            )
            row_of = rows[batch["labels"] != IGNORE_INDEX]  # the batch row of each predicted token
            logits, labels = masked_lm_logits(self.mlm, self.model, batch)
            per_token = torch.stack([F.cross_entropy(logits, labels, reduction="none"),
                                     (logits.argmax(-1) == labels).double(), torch.ones_like(row_of).double()], 1)  # fmt: skip
            per_row = torch.zeros(rows.shape[0], 3, dtype=torch.float64, device=acc.device)
            per_row.index_add_(0, row_of, per_token.double())
            totals += acc.gather_for_metrics(per_row).sum(0)  # each row once, across processes
        self.model.train(was_training)
        loss, count = (totals[0] / totals[2].clamp_min(1)).item(), int(totals[2].item())
        perplexity = float(torch.tensor(loss).exp())
        return {"loss": loss, "accuracy": (totals[1] / totals[2].clamp_min(1)).item(),
                "perplexity": perplexity, "masked_tokens": float(count)}  # fmt: skip

    def train(self) -> None:
        self.before = self.score() if self.heldout_loader is not None else None
        if self.before:
            self.accelerator.print(f"held-out before training: {_shown(self.before)}")
        self.state = self.engine.fit()

    def evaluate(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"best_step": self.state.best_step, "steps": self.state.step,
                                   "head": self.head_source, "head_warmup_steps": self.warmup_steps}  # fmt: skip
        if self.before is not None:
            metrics["heldout_before"] = self.before
            # the unchanged encoder with a fitted head: the fair reference for the final numbers
            warm = [h for h in self.state.history if self.warmup_steps and h["step"] == self.warmup_steps]
            if warm:
                metrics["heldout_after_head_warmup"] = {k[5:]: v for k, v in warm[0].items() if k != "step"}
            metrics["heldout"] = self.score()
            self.accelerator.print(f"held-out after training: {_shown(metrics['heldout'])}")
        metrics["texts"] = {k: len(v) for k, v in self.texts.items()}
        metrics["rows"] = {k: len(v) for k, v in self.rows.items()}
        metrics["history"] = self.state.history
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            path = save_encoder(
                acc.unwrap_model(self.model), self.encoder.processor, self.output_dir / ENCODER_DIRNAME,
                provenance={"recipe": "dapt", "base_model": self.encoder.name_or_path, "steps": self.state.step,
                            "best_step": self.state.best_step, "max_length": self.encoder.max_length,
                            "heldout": metrics.get("heldout")},
            )  # fmt: skip
            metrics["encoder_dir"] = str(path)
            write_metrics(self.output_dir / "metrics.json", metrics)
            acc.print(f"Encoder written to {path}; use it in any text recipe with `encoder.model={path}`")
        acc.wait_for_everyone()
        acc.end_training()

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train()
        metrics = self.evaluate()
        self.save(metrics)
        return metrics


def _shown(report: dict[str, float]) -> str:
    return (f"masked-token loss {report['loss']:.4f}, accuracy {report['accuracy']:.4f}, "
            f"perplexity {report['perplexity']:.2f} ({int(report['masked_tokens'])} tokens)")  # fmt: skip


RECIPE = DaptRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(DaptRecipe, argv, prog="hftl run dapt")


if __name__ == "__main__":
    raise SystemExit(main())
