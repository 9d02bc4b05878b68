"""ADDA: adversarial discriminative domain adaptation, a method with two stages of its own."""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from hftl.adaptation.methods import AdaptationMethod, AdaptBatch, StepLosses
from hftl.errors import ConfigError
from hftl.losses import AdversarialDiscriminativeLoss, AdversarialDiscriminativeOutput, DomainDiscriminator
from hftl.training.engine import Progress


class ADDA(AdaptationMethod):
    """Adversarial discriminative domain adaptation (Tzeng et al., CVPR 2017), two stages.

    Stage 1 (the first ``1 - stage2_fraction`` of the optimizer steps) trains encoder + head on source
    labels, as ``source_only``. Stage 2 copies the encoder into a frozen *source* encoder and trains the
    encoder on as the *target* encoder against a discriminator
    (:class:`~hftl.losses.AdversarialDiscriminativeLoss`), with the head fixed and no source labels;
    predictions use target encoder + head. The step's ``base`` term is the discriminator's loss and the
    ``transfer`` term the target encoder's, which the loop weighs by ``trade_off``.

    The source encoder lives in this module, so checkpoints (and resume) carry it; the buffer
    ``stage2_started`` records whether it holds the stage-1 weights yet.

    Args:
        in_features: pooled feature width (set by the recipe).
        num_classes: number of classes (set by the recipe; unused).
        trade_off: weight of the target encoder's adversarial loss.
        hidden_features: width of the discriminator MLP (500 in the paper).
        stage2_fraction: share of the run's optimizer steps spent in stage 2.
    """

    name = "adda"
    two_stage: ClassVar[bool] = True

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0, hidden_features: int = 500,
        stage2_fraction: float = 0.5,
    ):  # fmt: skip
        super().__init__(trade_off=trade_off)
        if not 0.0 < stage2_fraction < 1.0:
            raise ConfigError(f"`method.stage2_fraction` must be in (0, 1); got {stage2_fraction}")
        self.stage2_fraction = stage2_fraction
        self.loss = AdversarialDiscriminativeLoss(
            DomainDiscriminator(in_features, hidden_features=hidden_features, batch_norm=False)
        )
        self.register_module("source_encoder", None)
        self.register_buffer("stage2_started", torch.zeros((), dtype=torch.bool))
        self._classifier: tuple[nn.Module, ...] = ()

    def attach(self, classifier: nn.Module) -> None:
        """Takes the frozen copy of ``classifier.encoder`` that stage 2 reads the source with."""
        self.source_encoder = copy.deepcopy(classifier.encoder).requires_grad_(False).eval()
        self._classifier = (classifier,)  # a plain tuple: the model registers the classifier, not this method

    def stage1_steps(self, total_steps: int) -> int:
        """Optimizer steps of stage 1 in a run of ``total_steps``."""
        return round(total_steps * (1 - self.stage2_fraction))

    def start_stage2(self) -> None:
        """Freezes the source encoder at the stage-1 weights, and the head; the encoder goes on training as the
        target encoder. Idempotent, re-applied after a resume (the copy is taken once)."""
        if not self._classifier or self.source_encoder is None:
            raise RuntimeError("ADDA.attach(classifier) must be called before training (AdaptModel does it)")
        (classifier,) = self._classifier
        if not bool(self.stage2_started):
            self.source_encoder.load_state_dict(classifier.encoder.state_dict())
            self.stage2_started.fill_(True)
        classifier.head.requires_grad_(False)
        self.source_encoder.eval()

    def training_step(self, model: nn.Module, batch: AdaptBatch, progress: Progress) -> StepLosses:
        if progress.step < self.stage1_steps(progress.total_steps):  # stage 1: source labels only
            return StepLosses(nn.functional.cross_entropy(model(**batch.source).logits, batch.labels), None)
        self.start_stage2()  # stage 2: no source labels used
        with torch.no_grad():
            f_s = self.source_encoder(**batch.source).pooled
        out_t = model(**batch.target)
        transfer = self(
            f_s=f_s, f_t=out_t.features, logits_s=None, logits_t=out_t.logits, progress=progress.fraction
        )
        return StepLosses(transfer.discriminator_loss, transfer)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress) -> AdversarialDiscriminativeOutput:
        """Stage 2's losses on source-encoder features ``f_s`` and target-encoder features ``f_t``."""
        return self.loss(f_s, f_t)
