"""The LM head apart from the body: final hidden states without logits, then logits on any rows.

A 262k-token vocabulary makes full logits for a batch large (1 GiB per 1,024 positions in
float32), so evaluation runs the body once, keeps the (batch, seq, d) hidden states, and
computes logits only for the rows it needs, a chunk at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from saelab.lm.hooks import UnsupportedModelError


class _ReachedHead(Exception):
    """Raised from the output head's pre-hook so that the head itself never runs."""


def _output_head(model: nn.Module) -> nn.Module:
    """The module mapping final hidden states to vocabulary logits."""
    head = model.get_output_embeddings()
    if head is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no output embeddings (not a causal LM with a head)."
        )
    return head


def final_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Run a HF causal LM up to its output head; return the head's input (batch, seq, d)."""
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _ReachedHead

    handle = _output_head(model).register_forward_pre_hook(grab)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _ReachedHead:
        pass
    finally:
        handle.remove()
    return captured[0]


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of final hidden states, as the HF model computes them (incl. Gemma's soft-capping)."""
    logits = _output_head(model)(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits
