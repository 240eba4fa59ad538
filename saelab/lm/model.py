"""LanguageModel: a Hugging Face causal LM plus named hook points and early-stopping capture."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from saelab.lm.hooks import HookPoint, hook_names, resolve_hook
from saelab.lm.intervene import ActivationFn, replace_activation


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured, to skip later layers."""


def _first_tensor(value: object) -> torch.Tensor:
    """The hidden-state tensor inside a module's input/output (plain tensor or tuple)."""
    return value[0] if isinstance(value, tuple) else value


class LanguageModel:
    """A HF causal LM with TransformerLens-named hook points (DESIGN.md "Public Python API")."""

    def __init__(self, model: nn.Module, tokenizer: object, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, {self.model.config.model_type}, {self.device}, {self.dtype})"

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the d_in of an SAE on any hook of this model)."""
        config = self.model.config
        return getattr(config, "hidden_size", None) or config.n_embd

    def hook_names(self) -> list[str]:
        """Every hook name available on this model, in forward order."""
        return hook_names(self.model)

    def activations(
        self,
        input_ids: torch.Tensor,
        hooks: str | Sequence[str],
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the model up to the deepest requested hook; return {hook: (batch, seq, d)}."""
        names = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
        points = [resolve_hook(self.model, name) for name in names]
        captured: dict[str, torch.Tensor] = {}
        handles = [self._register(point, captured, len(points)) for point in points]
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        try:
            with torch.no_grad():  # not inference_mode: callers may train on these tensors
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {name: captured[name] for name in names}

    def replace_activation(self, hook: str, fn: ActivationFn) -> AbstractContextManager[None]:
        """Context manager: forwards inside it use fn(activation) at `hook` (steering, splicing)."""
        return replace_activation(self.model, hook, fn)

    @staticmethod
    def _register(
        point: HookPoint, captured: dict[str, torch.Tensor], n_wanted: int
    ) -> torch.utils.hooks.RemovableHandle:
        """Attach a capture hook that stops the forward once all n_wanted tensors are in."""

        def store(tensor: torch.Tensor) -> None:
            captured[point.name] = tensor.detach()
            if len(captured) == n_wanted:
                raise _StopForward

        if point.capture == "input":

            def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                store(args[0] if args else kwargs["hidden_states"])

            return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def post_hook(_module: nn.Module, _args: tuple, output: object) -> None:
            store(_first_tensor(output))

        return point.module.register_forward_hook(post_hook)
