"""UDALM: source cross-entropy plus target masked-LM in one loop, optionally with an alignment method."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hftl.adaptation.methods import AdaptationMethod, AdaptBatch, StepLosses
from hftl.config import get_component
from hftl.errors import ConfigError
from hftl.losses import LossOutput
from hftl.training.engine import Progress


class UDALM(AdaptationMethod):
    r"""Target-domain masked-LM as an auxiliary loss (Karouzos, Paraskevopoulos & Potamianos, NAACL 2021).

    Each step: cross-entropy on the labelled source batch, and masked-LM on the *target* batch (BERT's
    masking, 15 % of the real tokens, 80/10/10, with transformers' ``DataCollatorForLanguageModeling``;
    special tokens and padding never chosen; the classification labels never enter it), through the
    encoder being adapted and a masked-LM head tied to its input embeddings
    (:func:`hftl.encoders.mlm.build_masked_lm`: the checkpoint's own head when it has one)::

        loss = CE_source + trade_off · (mlm_weight(p) · MLM_target + align.weight(p) · align_term)

    ``mlm_weight(p)`` is ``mlm_weight`` (UDALM's λ; ``warmup: ganin`` ramps it). With ``align`` (e.g.
    ``{name: hftl.adaptation.DANN, trade_off: 0.1}``) the alignment method's own term is added with its own
    weight schedule: MLM + DANN as in the paper's ablation. Text encoders only.

    Args:
        in_features: pooled feature width (set by the recipe).
        num_classes: number of classes (set by the recipe).
        trade_off: weight of the whole transfer term (keep 1.0; tune ``mlm_weight``).
        warmup: ``none`` or ``ganin``, for ``mlm_weight``.
        mlm_weight: λ, the masked-LM weight (UDALM: the loss mix 1 - λ with λ ≈ 0.5-0.9 on the source CE).
        mlm_probability: share of target tokens predicted.
        align: an alignment method, ``{name: <registered method>, **its arguments}``; None for MLM alone.

    Raises:
        ConfigError: a non-text encoder, an encoder without a masked-LM class, a bad value, or an
            ``align`` method that is not registered or that has a schedule of its own (ADDA) or needs
            target labels.

    Shape:
        Logs ``mlm_loss`` (and the alignment method's metrics, prefixed ``align_``).
    """

    name = "udalm"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0, warmup: str = "none",
        mlm_weight: float = 1.0, mlm_probability: float = 0.15, align: dict[str, Any] | None = None,
    ):  # fmt: skip
        super().__init__(trade_off=trade_off, warmup=warmup)  # type: ignore[arg-type]
        if mlm_weight < 0:
            raise ConfigError(f"`method.mlm_weight` must be >= 0; got {mlm_weight}")
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"`method.mlm_probability` must be in (0, 1); got {mlm_probability}")
        self.mlm_weight, self.mlm_probability = mlm_weight, mlm_probability
        self.align = self._build_align(align, in_features=in_features, num_classes=num_classes)
        self.head = nn.ParameterList()  # the masked-LM head's own parameters, filled by attach()
        self._mlm: tuple[
            nn.Module, Any
        ] = ()  # (masked-LM model sharing the encoder, collator): not registered

    @staticmethod
    def _build_align(node: dict[str, Any] | None, **runtime: int) -> AdaptationMethod | None:
        if node is None:
            return None
        args = dict(node)
        path = args.pop("name", None)
        if not isinstance(path, str):
            raise ConfigError(
                "`method.align` needs `name`, e.g. {name: hftl.adaptation.DANN, trade_off: 0.1}"
            )
        cls = get_component(path)
        if not (isinstance(cls, type) and issubclass(cls, AdaptationMethod)) or cls.two_stage:
            raise ConfigError(f"`method.align.name` must be a one-stage adaptation method; got {path}")
        if cls.uses_target_labels or not cls.uses_target:
            raise ConfigError(f"`method.align.name` must be an unsupervised alignment method; got {path}")
        try:
            method = cls(**runtime, **args)
        except TypeError as e:
            raise ConfigError(f"`method.align`: {e}") from None
        if method.two_stage:  # a schedule set by its arguments (InformationMaximization's source_fraction)
            raise ConfigError(
                f"`method.align`: {path} with these arguments has a schedule of its own, which UDALM's single "
                "loop would ignore. Fix: drop its stage options (e.g. `source_fraction`) or run it without UDALM."
            )
        return method

    def attach(self, classifier: nn.Module) -> None:
        """Builds the masked-LM head on the classifier's text encoder (its weights tied to the embeddings)."""
        from transformers import DataCollatorForLanguageModeling

        from hftl.encoders.mlm import build_masked_lm

        encoder = classifier.encoder
        if getattr(encoder, "modality", None) != "text":
            raise ConfigError(
                f"UDALM trains a masked-LM on target text; `encoder` is {type(encoder).__name__} "
                f"(modality {getattr(encoder, 'modality', '?')!r}). Use it with hftl.encoders.TextEncoder."
            )
        if self.align is not None:
            self.align.attach(classifier)
        checkpoint = None if encoder.from_config else encoder.name_or_path
        mlm, _ = build_masked_lm(encoder.base_model, checkpoint=checkpoint)
        # The head's own parameters, registered here (trained, checkpointed); the tied decoder weight is the
        # encoder's input embedding, registered once, under the classifier (no tensor saved twice).
        shared = {id(p) for p in encoder.parameters()}
        prefix = f"{mlm.base_model_prefix}."
        self.head = nn.ParameterList(
            [p for n, p in mlm.named_parameters() if not n.startswith(prefix) and id(p) not in shared]
        )
        collator = DataCollatorForLanguageModeling(encoder.processor, mlm_probability=self.mlm_probability)
        self._mlm = (mlm, collator)

    def mask(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The target batch with BERT's masking applied, and the MLM labels (-100 where nothing is predicted)."""
        _, collator = self._mlm
        ids = inputs["input_ids"]
        special = torch.tensor(
            [collator.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
            dtype=torch.bool,
        )  # fmt: skip
        if "attention_mask" in inputs:
            special |= ~inputs["attention_mask"].bool().cpu()
        masked, labels = collator.torch_mask_tokens(ids.clone().cpu(), special_tokens_mask=special)
        return {**inputs, "input_ids": masked.to(ids.device)}, labels.to(ids.device)

    def mlm_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Masked-LM cross-entropy on a (text) batch, through the shared encoder."""
        if not self._mlm:
            raise RuntimeError("UDALM.attach(classifier) must be called before training (AdaptModel does it)")
        mlm, _ = self._mlm
        masked, labels = self.mask(inputs)
        keys = ("input_ids", "attention_mask", "token_type_ids")
        out = mlm(**{k: v for k, v in masked.items() if k in keys}, labels=labels)
        return out.loss

    def training_step(self, model: nn.Module, batch: AdaptBatch, progress: Progress) -> StepLosses:
        if self.align is not None:
            step = self.align.training_step(model, batch, progress)
        else:
            out_s = model(**batch.source)
            step = StepLosses(nn.functional.cross_entropy(out_s.logits, batch.labels), None)
        if batch.target is None:
            return step
        mlm = self.mlm_loss(batch.target)
        loss = self.mlm_weight * mlm
        metrics = {"mlm_loss": mlm.detach()}
        if step.transfer is not None:
            loss = loss + self.align.weight(progress.fraction) * step.transfer.loss
            metrics.update({f"align_{k}": v for k, v in step.transfer.metrics.items()})
        return StepLosses(step.base, LossOutput(loss=loss, metrics=metrics))

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        raise ConfigError(
            "UDALM trains a masked-LM on target tokens, so it needs `hftl run adapt`, not cached features"
        )
