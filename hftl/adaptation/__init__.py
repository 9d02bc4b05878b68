"""Domain adaptation: methods (config nodes for the adapt recipe), label-free selection, diagnostics."""

from hftl.adaptation.adda import ADDA
from hftl.adaptation.consistency import Consistency
from hftl.adaptation.importance import ImportanceWeighting
from hftl.adaptation.information_maximization import InformationMaximization
from hftl.adaptation.methods import (
    CDAN,
    CORAL,
    DAN,
    DANN,
    JAN,
    MCC,
    MDD,
    AdaptationMethod,
    AdaptBatch,
    SelfTraining,
    SourceOnly,
    StepLosses,
    TargetOracle,
)
from hftl.adaptation.training import AdaptationLoss, AdaptModel
from hftl.adaptation.udalm import UDALM

__all__ = [
    "ADDA",
    "CDAN",
    "CORAL",
    "DAN",
    "DANN",
    "JAN",
    "MCC",
    "MDD",
    "AdaptBatch",
    "AdaptModel",
    "AdaptationLoss",
    "AdaptationMethod",
    "Consistency",
    "ImportanceWeighting",
    "InformationMaximization",
    "SelfTraining",
    "SourceOnly",
    "StepLosses",
    "TargetOracle",
    "UDALM",
]
