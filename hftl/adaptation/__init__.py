"""Domain adaptation: methods (config nodes for the adapt recipe), label-free selection, diagnostics."""

from hftl.adaptation.methods import (
    ADDA,
    CDAN,
    CORAL,
    DAN,
    DANN,
    JAN,
    MCC,
    MDD,
    AdaptationMethod,
    SelfTraining,
    SourceOnly,
    TargetOracle,
)

__all__ = [
    "ADDA",
    "CDAN",
    "CORAL",
    "DAN",
    "DANN",
    "JAN",
    "MCC",
    "MDD",
    "AdaptationMethod",
    "SelfTraining",
    "SourceOnly",
    "TargetOracle",
]
