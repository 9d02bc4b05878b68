"""Shared plumbing of the scratch encoders: config checks and the ``PreTrainedModel`` base."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from hftl.errors import ConfigError


def _raise_problems(config: PretrainedConfig, checks: list[tuple[str, bool, str]]) -> None:
    """Raises one ConfigError listing every ``(field, ok, allowed)`` check of ``config`` that failed."""
    name = type(config).__name__
    problems = [
        f"`{name}.{field}` is {getattr(config, field)!r}; allowed: {allowed}."
        for field, ok, allowed in checks
        if not ok
    ]
    if problems:
        raise ConfigError(problems)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _probability(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1


class _ScratchModel(PreTrainedModel):
    """Shared plumbing: PyTorch's default initialisation (what the papers' LeNet used)."""

    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # transformers guards torch.nn.init here, so weights loaded by from_pretrained are kept.
        if isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        elif isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.LayerNorm):
            module.reset_parameters()

    def _output(
        self, last: torch.Tensor, states: list[torch.Tensor], output_hidden_states: bool | None, return_dict
    ) -> BaseModelOutput | tuple:
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden_states = tuple(states) if output_hidden_states else None
        if return_dict is None:
            return_dict = self.config.return_dict
        if not return_dict:
            return tuple(x for x in (last, hidden_states) if x is not None)
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden_states)
