"""Models built from an encoder and a head."""

from hftl.models.classifier import Classifier, ClassifierOutput, count_parameters
from hftl.models.heads import LinearHead, MLPHead

__all__ = ["Classifier", "ClassifierOutput", "LinearHead", "MLPHead", "count_parameters"]
