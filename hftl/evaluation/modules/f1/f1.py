"""F1 metric, shipped with hftl so ``evaluate.load`` works offline.

Same interface as the Hub's ``evaluate-metric/f1`` (a thin wrapper over :func:`sklearn.metrics.f1_score`),
plus sklearn's ``zero_division``. Loaded by path: ``evaluate.load("<this dir>")``.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall: F1 = 2 * (precision * recall) / (precision + recall).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    labels (`list` of `int`): The set of labels to include when `average` is not `'binary'`, and their order
        when `average` is None. Defaults to the labels present in references or predictions.
    pos_label (`int`): The class to report if `average='binary'`. Defaults to 1.
    average (`str`): One of `'binary'` (default), `'micro'`, `'macro'`, `'weighted'`, `'samples'` or None
        (per-class scores).
    sample_weight (`list` of `float`): Sample weights. Defaults to None.
    zero_division (`"warn"`, `0`, `1` or `nan`): Value used where precision or recall divide by zero.
        Defaults to `"warn"` (acts as 0 and warns), as in sklearn.

Returns:
    f1 (`float` or `list` of `float`): F1 score (per class if `average=None`), in [0, 1].

Examples:
    >>> f1_metric = evaluate.load("hftl/evaluation/modules/f1")
    >>> f1_metric.compute(predictions=[0, 2, 1, 0, 0, 1], references=[0, 1, 2, 0, 1, 2], average="macro")
    {'f1': 0.26666666666666666}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O.
          and Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A.
          and Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label=1,
        average="binary",
        sample_weight=None,
        zero_division="warn",
    ):
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        if average is None:
            return {"f1": [float(s) for s in score]}
        return {"f1": float(score)}
