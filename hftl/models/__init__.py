"""Models built from an encoder and a head."""

from hftl.models.classifier import Classifier, ClassifierOutput, count_parameters
from hftl.models.heads import LinearHead, MLPHead
from hftl.models.multitask import MultiTaskClassifier

__all__ = [
    "Classifier",
    "ClassifierOutput",
    "LinearHead",
    "MLPHead",
    "MultiTaskClassifier",
    "count_parameters",
]
