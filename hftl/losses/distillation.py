"""Knowledge distillation (KD), FitNets hints and learning without forgetting (LwF).

* :class:`KnowledgeDistillationLoss`: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
  Network", 2015 (arXiv:1503.02531): match the teacher's temperature-softened distribution, mixed with
  cross-entropy on the true labels; the soft term is scaled by ``T²`` so its gradients keep their size
  when ``T`` changes.
* :class:`HintLoss`: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv:1412.6550):
  a learned regressor maps a student layer onto a teacher layer (the hint), trained by squared error.
* :class:`LwFLoss`: Li & Hoiem, "Learning without Forgetting", ECCV 2016 (arXiv:1606.09282): KD of the
  old head's outputs, recorded once before training on the *new-task* data, added to the new task's
  cross-entropy.

Soft targets are often computed once: :func:`record_logits` runs a frozen model over a dataset and
:class:`SoftTargetCollator` hands the stored rows (column ``teacher_logits``) to the loss with each batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hftl.losses.base import LossOutput, at_least_float32

IGNORE_LABEL = -1  # rows without a label (unlabelled data) carry this value: soft loss only


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Batch mean of :math:`T^2 \, \mathrm{KL}(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T))`.

    Shape:
        - student_logits, teacher_logits: :math:`(N, C)`. Output: scalar.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape; got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}. Teacher and student must predict the same label set."
        )
    s = at_least_float32(student_logits) / temperature
    t = at_least_float32(teacher_logits).to(s.dtype) / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return kl * temperature**2


class KnowledgeDistillationLoss(nn.Module):
    r"""Hinton et al. 2015 knowledge distillation (arXiv:1503.02531).

    With temperature :math:`T`, soft weight :math:`\alpha`, :math:`p^T = \mathrm{softmax}(z/T)`:

    .. math::
        \mathcal{L} = \alpha \, T^2 \, \mathrm{KL}\big(p^T_{teacher} \,\|\, p^T_{student}\big)
                    + (1 - \alpha) \, \mathrm{CE}\big(z_{student}, y\big)

    KL and the soft cross-entropy of the paper differ by the teacher's entropy, a constant: same
    gradients, and the KL is 0 when the student matches the teacher. Rows whose label is
    :data:`IGNORE_LABEL` (or ``labels=None``: unlabelled data) get the soft term only: the hard term
    averages over labelled rows, and is 0 in a batch without any.

    Args:
        temperature: softening temperature :math:`T > 0` (the paper uses 1–20; 2–4 is common for BERT).
        alpha: weight of the soft (teacher) term in ``[0, 1]``; ``1 - alpha`` weighs the hard labels.

    Raises:
        ValueError: bad ``temperature``/``alpha``, or logits of different shapes.

    Shape:
        - student_logits, teacher_logits: :math:`(N, C)`; labels: :math:`(N,)` or ``None``.
        - Output: ``LossOutput`` with a scalar ``loss``; metrics ``kd_soft``, ``kd_hard``.

    Example:
        >>> kd = KnowledgeDistillationLoss(temperature=2.0, alpha=1.0)
        >>> z = torch.tensor([[1.0, -1.0]])
        >>> kd(z, z).loss.item()  # the student matches the teacher
        0.0
    """

    def __init__(self, *, temperature: float = 2.0, alpha: float = 0.5):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` (weight of the soft loss) must be in [0, 1]; got {alpha}")
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        soft = soft_kl(student_logits, teacher_logits, self.temperature)
        hard = torch.zeros((), device=soft.device, dtype=soft.dtype)
        if labels is not None and self.alpha < 1.0:
            keep = labels != IGNORE_LABEL
            if bool(keep.any()):
                hard = F.cross_entropy(at_least_float32(student_logits[keep]), labels[keep])
        loss = self.alpha * soft + (1.0 - self.alpha) * hard
        return LossOutput(loss=loss, metrics={"kd_soft": soft.detach(), "kd_hard": hard.detach()})


class HintLoss(nn.Module):
    r"""FitNets hints (Romero et al. 2015, arXiv:1412.6550) between paired hidden layers.

    For each pair :math:`(i, j)` of ``student_layers`` / ``teacher_layers``, a learned linear regressor
    :math:`r_k` maps student states :math:`h^s_i` (width :math:`d_s`) to the teacher's width
    :math:`d_t` and the loss is the mean squared error over real positions:

    .. math::
        \mathcal{L}_{hint} = \frac{1}{K} \sum_k \frac{1}{|M| \, d_t} \sum_{b,t \in M}
            \big\| r_k(h^s_{i_k})_{b,t} - h^t_{j_k, b,t} \big\|^2

    The paper uses a convolutional regressor on feature maps; on transformer token states a linear one
    is the equivalent. Teacher states are treated as fixed targets (detached).

    Args:
        student_features: student hidden width :math:`d_s` (the recipe passes it).
        teacher_features: teacher hidden width :math:`d_t` (the recipe passes it).
        student_layers: hidden-state indices of the student (``0`` = embeddings, ``-1`` = last).
        teacher_layers: matching indices of the teacher, same length.
        weight: multiplier of this loss in the recipe's total (``loss = kd + weight · hint``).

    Raises:
        ValueError: empty or unequal layer lists, a negative weight, or states of mismatched shapes.

    Shape:
        - student_states: sequence of :math:`(B, T, d_s)` (or :math:`(B, d_s)`); teacher_states: the
          same with :math:`d_t`; mask: :math:`(B, T)` or ``None``. Output: scalar ``loss``.

    Example:
        >>> hint = HintLoss(4, 8, student_layers=[-1], teacher_layers=[-1])
        >>> s, t = [torch.randn(2, 5, 4)], [torch.randn(2, 5, 8)]
        >>> hint(s, t).loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        student_features: int,
        teacher_features: int,
        *,
        student_layers: list[int] = [-1],  # noqa: B006 - read only, the documented config default
        teacher_layers: list[int] = [-1],  # noqa: B006
        weight: float = 1.0,
    ):
        super().__init__()
        if not student_layers or len(student_layers) != len(teacher_layers):
            raise ValueError(
                f"`student_layers` {student_layers} and `teacher_layers` {teacher_layers} must be non-empty "
                "lists of the same length (one teacher layer per student layer)"
            )
        if weight < 0:
            raise ValueError(f"`weight` must be >= 0; got {weight}")
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        self.weight = float(weight)
        self.regressors = nn.ModuleList(nn.Linear(student_features, teacher_features) for _ in student_layers)

    def forward(
        self,
        student_states: Sequence[torch.Tensor],
        teacher_states: Sequence[torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> LossOutput:
        losses = []
        for reg, i, j in zip(self.regressors, self.student_layers, self.teacher_layers, strict=True):
            s, t = reg(student_states[i]), teacher_states[j].detach().to(student_states[i].dtype)
            if s.shape != t.shape:
                raise ValueError(
                    f"hint pair (student layer {i}, teacher layer {j}): projected student states {tuple(s.shape)} "
                    f"vs teacher states {tuple(t.shape)}; both models must see the same tokens (same tokenizer)"
                )
            err = at_least_float32(s - t).square().mean(dim=-1)  # (B, T) or (B,)
            if mask is not None and err.dim() == 2:
                m = mask.to(err.dtype)
                losses.append((err * m).sum() / m.sum().clamp_min(1.0))
            else:
                losses.append(err.mean())
        loss = torch.stack(losses).mean()
        return LossOutput(loss=loss, metrics={"hint": loss.detach()})


class LwFLoss(nn.Module):
    r"""Learning without Forgetting (Li & Hoiem 2016, arXiv:1606.09282) on new-task batches.

    .. math::
        \mathcal{L} = \mathrm{CE}(z_{new}, y_{new})
                    + \lambda \, T^2 \, \mathrm{KL}\big(\mathrm{softmax}(\hat z_{old}/T) \,\|\,
                      \mathrm{softmax}(z_{old}/T)\big)

    :math:`\hat z_{old}` are the old head's logits on the new-task inputs recorded before training,
    :math:`z_{old}` its logits now. The paper uses :math:`T = 2` and :math:`\lambda = 1`; the
    :math:`T^2` factor (absent there) keeps :math:`\lambda` independent of :math:`T`.

    Args:
        weight: :math:`\lambda \ge 0`, the weight of keeping the old outputs (0 = plain fine-tuning).
        temperature: :math:`T > 0`.

    Shape:
        - new_logits: :math:`(N, C_{new})`, labels: :math:`(N,)`, old_logits and recorded_old_logits:
          :math:`(N, C_{old})`. Output: scalar ``loss``; metrics ``ce``, ``lwf``.
    """

    def __init__(self, *, weight: float = 1.0, temperature: float = 2.0):
        super().__init__()
        if weight < 0 or not temperature > 0:
            raise ValueError(f"LwF needs `weight` >= 0 and `temperature` > 0; got {weight} and {temperature}")
        self.weight, self.temperature = float(weight), float(temperature)

    def forward(
        self,
        new_logits: torch.Tensor,
        labels: torch.Tensor,
        old_logits: torch.Tensor,
        recorded_old_logits: torch.Tensor,
    ) -> LossOutput:
        ce = F.cross_entropy(at_least_float32(new_logits), labels)
        keep = soft_kl(old_logits, recorded_old_logits, self.temperature)
        return LossOutput(loss=ce + self.weight * keep, metrics={"ce": ce.detach(), "lwf": keep.detach()})


@torch.no_grad()
def record_logits(
    model: Callable[..., Any],
    loader: Any,
    *,
    device: torch.device | str,
    to_logits: Callable | None = None,
    desc: str = "teacher logits",
) -> torch.Tensor:
    """Runs a frozen ``model`` over an unshuffled ``loader``; returns its logits in dataset order (CPU, float32).

    Args:
        model: called as ``model(**inputs)``; its output's ``.logits`` are kept unless ``to_logits`` is given.
        loader: batches of model inputs (``labels`` and ``teacher_logits`` are ignored), in dataset order.
        device: where the model runs.
        to_logits: maps ``model``'s output to ``(B, C)`` logits.
        desc: label of the progress bar.
    """
    from tqdm.auto import tqdm

    out = []
    for batch in tqdm(loader, desc=desc, dynamic_ncols=True):
        inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        result = model(**inputs)
        out.append((to_logits(result) if to_logits else result.logits).float().cpu())
    return torch.cat(out)


class SoftTargetCollator:
    """Wraps a collator: examples' ``teacher_logits`` (stored per example) become a ``(B, C)`` tensor.

    Args:
        collate: the encoder's collator for the remaining columns.
    """

    def __init__(self, collate: Callable[[list[dict]], dict[str, torch.Tensor]]):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        soft = [ex["teacher_logits"] for ex in examples]
        batch = self.collate([{k: v for k, v in ex.items() if k != "teacher_logits"} for ex in examples])
        batch["teacher_logits"] = torch.tensor(soft, dtype=torch.float32)
        return batch
