"""Domain-adaptation losses, one method per file.

Every loss is an ``nn.Module`` whose ``forward`` returns a :class:`LossOutput` (the scalar to minimise
and side metrics as detached tensors); adversarial losses own their gradient reversal layer and
discriminator.
"""

from __future__ import annotations

from hftl.losses.adda import AdversarialDiscriminativeLoss, AdversarialDiscriminativeOutput
from hftl.losses.base import LossOutput
from hftl.losses.cdan import ConditionalDomainAdversarialLoss
from hftl.losses.consistency import ConsistencyLoss, align_distribution
from hftl.losses.coral import CorrelationAlignmentLoss
from hftl.losses.dann import DomainAdversarialLoss
from hftl.losses.discriminator import DomainDiscriminator
from hftl.losses.distillation import HintLoss, KnowledgeDistillationLoss, LwFLoss
from hftl.losses.entropy import certainty_weights, entropy
from hftl.losses.grl import GradientReverseFunction, GradientReverseLayer, grl_coefficient
from hftl.losses.importance import ImportanceWeighting, ImportanceWeightingOutput
from hftl.losses.information_maximization import InformationMaximizationLoss, shot_pseudo_labels
from hftl.losses.jan import JointMultipleKernelMaximumMeanDiscrepancy
from hftl.losses.kernels import GaussianKernel, gaussian_kernels
from hftl.losses.mcc import MinimumClassConfusionLoss
from hftl.losses.mdd import AdversarialClassifier, MarginDisparityDiscrepancy
from hftl.losses.metric import BatchHardTripletLoss, ContrastiveLoss, CosineSimilarityLoss, TripletLoss
from hftl.losses.mmd import MultipleKernelMaximumMeanDiscrepancy
from hftl.losses.self_training import ConfidenceThresholdSelfTraining

__all__ = [
    "AdversarialClassifier",
    "AdversarialDiscriminativeLoss",
    "AdversarialDiscriminativeOutput",
    "BatchHardTripletLoss",
    "ContrastiveLoss",
    "CosineSimilarityLoss",
    "TripletLoss",
    "ConditionalDomainAdversarialLoss",
    "ConfidenceThresholdSelfTraining",
    "ConsistencyLoss",
    "CorrelationAlignmentLoss",
    "DomainAdversarialLoss",
    "DomainDiscriminator",
    "GaussianKernel",
    "GradientReverseFunction",
    "GradientReverseLayer",
    "HintLoss",
    "ImportanceWeighting",
    "ImportanceWeightingOutput",
    "InformationMaximizationLoss",
    "JointMultipleKernelMaximumMeanDiscrepancy",
    "KnowledgeDistillationLoss",
    "LossOutput",
    "LwFLoss",
    "MarginDisparityDiscrepancy",
    "MinimumClassConfusionLoss",
    "MultipleKernelMaximumMeanDiscrepancy",
    "align_distribution",
    "certainty_weights",
    "entropy",
    "gaussian_kernels",
    "grl_coefficient",
    "shot_pseudo_labels",
]
