"""Domain adaptation: methods (config nodes for the adapt recipe), label-free selection, diagnostics."""

from hftl.adaptation.adda import ADDA
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
    "SelfTraining",
    "SourceOnly",
    "StepLosses",
    "TargetOracle",
]
