"""A masked-LM head on a text encoder, for domain- and task-adaptive pre-training (DAPT/TAPT).

Gururangan et al., "Don't Stop Pretraining: Adapt Language Models to Domains and Tasks", ACL 2020
(arXiv:2004.10964): continuing masked-LM training on unlabelled text of the target domain (DAPT) or of
the task (TAPT) before fine-tuning improves the fine-tuned classifier there.

:func:`build_masked_lm` wraps the encoder's own ``AutoModel`` (the module every other recipe loads, so
nothing of it is lost, BERT's pooler included) in transformers' ``AutoModelForMaskedLM`` of the same
architecture. The head comes, in this order, from an ``mlm_head.safetensors`` that an earlier DAPT run
saved next to the encoder, from the checkpoint itself (``bert-base-uncased`` ships one), or is new.
Sentence-embedding checkpoints such as all-MiniLM-L6-v2 ship a bare ``BertModel``: the new head's decoder is
tied to the input embeddings (as in BERT pre-training), its output bias starts at the log unigram
frequencies of the training text (so the first predictions are the unigram model, loss ≈ 7 nats instead of
≈ log |V| ≈ 10.3), and :class:`HeadWarmup` trains it alone, encoder frozen, for ``mlm.head_warmup_steps``
before the encoder joins; otherwise the random head's gradients would first scramble the encoder.

:func:`save_encoder` writes a plain transformers model directory (``AutoModel`` weights, config, tokenizer)
that any recipe loads with ``encoder.model=<dir>``, plus the head and a provenance file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hftl.errors import ConfigError, ModelLoadError

HEAD_FILE = "mlm_head.safetensors"
PROVENANCE_FILE = "hftl_encoder.json"
# The provenance file's mark. Not the `"written_by": "hftl"` of hftl's result files on purpose: `--overwrite`
# walks an output folder it cannot attribute as a whole and deletes such JSON files alone, which would leave
# the weights behind without the file that lets the next dapt run replace the folder.
PROVENANCE_KIND = "hftl masked-LM adapted encoder"
HeadSource = Literal["head file", "checkpoint", "new"]


@dataclass
class MaskedLMConfig:
    """The ``mlm:`` section of the ``dapt`` recipe: masking, the new head's warm-up, the held-out text."""

    mlm_probability: float = field(
        default=0.15, metadata={"help": "Share of (non-special) tokens chosen for prediction (BERT: 0.15)."}
    )
    whole_word_mask: bool = field(
        default=False, metadata={"help": "Choose whole words (all their sub-tokens); needs a fast tokenizer."}
    )
    mask_replace_prob: float | None = field(
        default=None,
        metadata={
            "help": "Share of chosen tokens replaced by [MASK]; null: 0.8 (1.0 with whole-word masking)."
        },
    )
    random_replace_prob: float | None = field(
        default=None,
        metadata={"help": "Share replaced by a random token; null: 0.1 (0 with whole-word masking)."},
    )
    head_warmup_steps: int = field(
        default=200,
        metadata={
            "help": "Optimizer steps training a *new* head alone (encoder frozen) before the encoder joins; "
            "0 = none. Ignored when the head was loaded (from the checkpoint or an earlier DAPT run)."
        },
    )
    unigram_bias: bool = field(
        default=True,
        metadata={
            "help": "Start a new head's output bias at the log unigram frequencies of the training text."
        },
    )
    heldout_size: float | int = field(
        default=0.1,
        metadata={
            "help": "Texts (fraction in (0, 1) or a count) held out of training to score masked-token loss, "
            "accuracy and perplexity before and during training (fixed masks); 0 = no held-out scoring."
        },
    )
    split_long_texts: bool = field(
        default=True,
        metadata={
            "help": "Texts longer than `encoder.max_length` give several windows instead of being cut."
        },
    )

    def __post_init__(self) -> None:
        problems = []
        for name in ("mlm_probability", "mask_replace_prob", "random_replace_prob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                problems.append(f"`mlm.{name}` must be in [0, 1]; got {value}")
        if not self.mlm_probability > 0:
            problems.append("`mlm.mlm_probability` must be > 0, or nothing is ever predicted")
        if self.head_warmup_steps < 0:
            problems.append(f"`mlm.head_warmup_steps` must be >= 0; got {self.head_warmup_steps}")
        size = self.heldout_size
        if isinstance(size, bool) or not (size == 0 or 0 < size < 1 or (isinstance(size, int) and size > 0)):
            problems.append(
                f"`mlm.heldout_size` must be 0, a fraction in (0, 1) or a count >= 1; got {size!r}"
            )
        if problems:
            raise ConfigError(problems)


def base_of(mlm: nn.Module) -> nn.Module:
    """The encoder (``AutoModel``) inside a ``...ForMaskedLM`` model."""
    return getattr(mlm, mlm.base_model_prefix)


def head_state(mlm: nn.Module) -> dict[str, torch.Tensor]:
    """The head's own tensors (outside the encoder, shared ones once, tied embeddings left out)."""
    prefix, base_ptrs = (
        f"{mlm.base_model_prefix}.",
        {t.data_ptr() for t in base_of(mlm).state_dict().values()},
    )
    state, seen = {}, set()
    for name, tensor in mlm.state_dict().items():
        if name.startswith(prefix) or tensor.data_ptr() in base_ptrs or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().cpu().contiguous()
    return state


def _tie(mlm: nn.Module) -> None:
    """Ties the decoder to the encoder's input embeddings (BERT pre-training's weight sharing)."""
    out, emb = mlm.get_output_embeddings(), base_of(mlm).get_input_embeddings()
    if out is None or emb is None or out.weight.shape != emb.weight.shape:
        raise ModelLoadError(
            f"Cannot tie the masked-LM decoder of {type(mlm).__name__} to its input embeddings (missing or of "
            "another shape). Fix: use an encoder whose masked-LM head predicts its own vocabulary (BERT, RoBERTa, ...)."
        )
    out.weight = emb.weight


def _from_pretrained(checkpoint: str, **kwargs: Any) -> tuple[nn.Module, set[str]]:
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the missing head; hftl reports it itself
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(checkpoint, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    return mlm, set(info.get("missing_keys", ()))


def build_masked_lm(
    backbone: nn.Module,
    *,
    checkpoint: str | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, HeadSource]:
    """An ``AutoModelForMaskedLM`` whose encoder *is* ``backbone``, and where its head came from.

    Args:
        backbone: the encoder's transformers ``AutoModel`` (e.g. ``TextEncoder(...).backbone``).
        checkpoint: the local directory or Hub id it was loaded from (its head, if any, is reused); None for
            an encoder built from a config.
        revision: Hub revision of ``checkpoint``.
        trust_remote_code: as granted for the encoder.

    Returns:
        ``(model, head_source)``: ``"head file"`` (an earlier DAPT run's ``mlm_head.safetensors``),
        ``"checkpoint"`` or ``"new"`` (tied decoder, zero bias: warm it up, see :class:`HeadWarmup`).

    Raises:
        ConfigError: transformers has no masked-LM class for this architecture.
    """
    from transformers import AutoModelForMaskedLM

    try:
        if checkpoint is None:
            mlm, missing = AutoModelForMaskedLM.from_config(backbone.config), {"<all>"}
        else:
            mlm, missing = _from_pretrained(
                checkpoint, revision=revision, trust_remote_code=trust_remote_code
            )
    except ValueError as err:
        kind = getattr(backbone.config, "model_type", "?")
        raise ConfigError(
            f"`encoder.model` ({kind}) has no masked-LM class in transformers (AutoModelForMaskedLM: "
            f"{(str(err).splitlines() or [''])[0][:200]}). Fix: DAPT/TAPT needs an encoder pre-trained with "
            "masked-LM, such as BERT, RoBERTa, DeBERTa, DistilBERT, ELECTRA or MiniLM."
        ) from err
    if type(base_of(mlm)) is not type(backbone):
        raise ModelLoadError(
            f"{type(mlm).__name__} holds a {type(base_of(mlm)).__name__}, not the encoder's "
            f"{type(backbone).__name__}; cannot put a masked-LM head on this encoder."
        )
    setattr(mlm, mlm.base_model_prefix, backbone)  # the encoder every recipe loads, pooler included
    head_file = Path(checkpoint) / HEAD_FILE if checkpoint and os.path.isdir(checkpoint) else None
    prefix = f"{mlm.base_model_prefix}."
    if head_file is not None and head_file.is_file():
        _tie(mlm)
        load_head(mlm, head_file)
        return mlm, "head file"
    if any(not key.startswith(prefix) for key in missing):  # no (complete) head in the checkpoint
        _tie(mlm)
        return mlm, "new"
    mlm.tie_weights()  # as the checkpoint's config says
    return mlm, "checkpoint"


def load_head(mlm: nn.Module, path: str | os.PathLike) -> None:
    """Loads ``mlm_head.safetensors`` into the head; ModelLoadError unless its tensors match it exactly."""
    from safetensors.torch import load_file

    expected = head_state(mlm)
    state = load_file(str(path))
    wrong = sorted(set(state) ^ set(expected)) + sorted(
        k for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    if wrong:
        raise ModelLoadError(
            f"{path} does not fit the masked-LM head of {type(mlm).__name__} (mismatched tensors: {wrong[:5]}). "
            f"Fix: delete {path.name if isinstance(path, Path) else path} to start a new head."
        )
    mlm.load_state_dict(state, strict=False)


def unigram_log_prior(
    token_rows: Iterable[list[int]], vocab_size: int, *, special_ids: Iterable[int] = ()
) -> torch.Tensor:
    """Log unigram frequencies (add-one smoothed) of the tokens in ``token_rows``, shape ``(vocab_size,)``.

    ``special_ids`` (``[CLS]``, ``[SEP]``, ...) are never predicted, so they keep only the smoothing count.

    Example:
        >>> unigram_log_prior([[0, 1, 1]], 3).exp()
        tensor([0.3333, 0.5000, 0.1667])
    """
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for ids in token_rows:
        counts += torch.bincount(torch.as_tensor(ids, dtype=torch.long), minlength=vocab_size)[:vocab_size]
    counts[list(special_ids)] = 0
    counts += 1
    return (counts / counts.sum()).log().float()


def init_output_bias(mlm: nn.Module, log_prior: torch.Tensor) -> bool:
    """Sets the decoder's output bias to ``log_prior``; False when the decoder has no bias of that size."""
    bias = getattr(mlm.get_output_embeddings(), "bias", None)
    if bias is None or bias.shape != log_prior.shape:
        return False
    with torch.no_grad():
        bias.copy_(log_prior.to(bias))
    return True


@contextlib.contextmanager
def predicting_only(mlm: nn.Module, chosen: torch.Tensor) -> Iterator[None]:
    """Inside, ``mlm``'s vocabulary projection runs on the ``chosen`` positions only.

    The decoder (``get_output_embeddings()``, hidden → vocabulary) dominates a small encoder's step: for
    all-MiniLM-L6-v2 it is a 384 × 30,522 matmul per token, about as much as the six layers below it. Only
    the ~15 % of positions chosen for prediction need it, so a forward pre-hook gathers those rows first;
    the model's ``logits`` are then ``(N, V)`` for the ``N = chosen.sum()`` positions (row order of
    ``labels[chosen]``). The head's transform before the decoder still sees every position (it is cheap).

    Args:
        mlm: the masked-LM model (unwrapped; the hook is on its own decoder module).
        chosen: ``(B, L)`` bool, the positions to predict (``labels != -100``).
    """

    def gather(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden[chosen] if hidden.shape[:2] == chosen.shape else hidden, *args[1:])

    handle = mlm.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


class HeadWarmup:
    """Keeps the encoder frozen for the first ``steps`` optimizer steps, so a new head trains alone.

    An :class:`~hftl.training.Engine` ``on_step`` hook: a function of the step, so a resumed run is in the
    same state. Only parameters the optimizer trains are touched (and restored to trainable afterwards).

    Args:
        backbone: the encoder inside the masked-LM model.
        optimizer: the run's optimizer.
        steps: warm-up length in optimizer steps.
    """

    def __init__(self, backbone: nn.Module, optimizer: torch.optim.Optimizer, *, steps: int):
        optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.params = [p for p in backbone.parameters() if id(p) in optimized]
        self.steps, self.frozen = steps, False

    def __call__(self, step: int) -> None:
        freeze = step < self.steps
        if freeze != self.frozen:
            for p in self.params:
                p.requires_grad_(not freeze)
            self.frozen = freeze


def save_encoder(
    mlm: nn.Module, tokenizer: Any, path: str | os.PathLike, *, provenance: dict[str, Any]
) -> Path:
    """Writes the encoder directory (``AutoModel`` + tokenizer + head + provenance), replacing it atomically.

    Raises:
        ConfigError: ``path`` exists and was not written by this function (no ``hftl_encoder.json``).
    """
    from safetensors.torch import save_file

    from hftl.outputs import record_output, writing

    path = Path(path)
    check_encoder_dir(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with writing("the adapted encoder", path):
        try:
            base_of(mlm).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            save_file(head_state(mlm), str(tmp / HEAD_FILE))
            files = sorted([*(p.name for p in tmp.iterdir()), PROVENANCE_FILE])
            meta = {"kind": PROVENANCE_KIND, **provenance, "files": files}  # what a later run may replace
            (tmp / PROVENANCE_FILE).write_text(
                json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8"
            )
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            if path.exists():
                path.rename(old)
            try:
                tmp.rename(path)
            except OSError:
                if old.exists():
                    old.rename(path)  # the earlier encoder stays in place
                raise
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        record_output(path)
    return path


def check_encoder_dir(path: str | os.PathLike) -> None:
    """ConfigError unless ``path`` is absent or an encoder directory :func:`save_encoder` wrote, holding
    nothing else (a later run replaces it whole)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    meta = {} if path.is_symlink() else _provenance(path)
    if meta.get("kind") != PROVENANCE_KIND:
        raise ConfigError(
            f"`output_dir`: {path} exists and was not written by hftl's dapt recipe (no {PROVENANCE_FILE} in "
            "it); hftl will not replace it. Move it away, or choose a new `output_dir`"
        )
    foreign = sorted({p.name for p in path.iterdir()} - set(meta.get("files") or ()))
    if foreign:
        raise ConfigError(
            f"`output_dir`: {path} holds files hftl did not write ({', '.join(foreign[:4])}); this run would "
            "replace the folder with them. Move them away, or choose a new `output_dir`"
        )


def _provenance(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
