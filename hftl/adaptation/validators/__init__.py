"""Label-free validators for unsupervised domain adaptation, one family per module.

``predictions``: source-validation accuracy, IM, BNM (read class probabilities);
``clusters``: SND, ClassAMI (read the geometry of features or outputs);
``dev``: Deep Embedded Validation (importance-weighted source-validation loss).
:mod:`hftl.adaptation.selection` names them (``CRITERIA``) and picks checkpoints with them.
"""

from hftl.adaptation.validators.arrays import as_numpy
from hftl.adaptation.validators.clusters import class_ami, soft_neighborhood_density
from hftl.adaptation.validators.dev import deep_embedded_validation, importance_weights
from hftl.adaptation.validators.predictions import (
    batch_nuclear_norm,
    bnm,
    information_maximization,
    source_validation_accuracy,
)

__all__ = [
    "as_numpy",
    "batch_nuclear_norm",
    "bnm",
    "class_ami",
    "deep_embedded_validation",
    "importance_weights",
    "information_maximization",
    "soft_neighborhood_density",
    "source_validation_accuracy",
]
