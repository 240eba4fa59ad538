"""Read or replace the activation at a named hook point during ordinary HF forward passes.

`replace_activation(model, hook, fn)` makes every forward inside the `with` block use
fn(activation) in place of the activation at `hook` (steering, ablation, SAE splicing);
`record_activations(model, hooks)` keeps the activations without changing or stopping the
forward. Both remove their PyTorch hooks on exit, also when the block raises.

hook_resid_mid is not the input or output of any HF module that feeds the residual stream (the
norm whose input it is only feeds the MLP), so it is replaced through hook_attn_out instead:
attn_out' = fn(resid_pre + attn_out) − resid_pre, which makes resid_mid' = fn(resid_mid) up to
float rounding, seen by both the MLP and the residual stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from saelab.lm.hooks import HookPoint, resolve_hook

ActivationFn = Callable[[torch.Tensor], torch.Tensor]


def _first_tensor(value: object) -> torch.Tensor:
    """The hidden-state tensor inside a module's output (plain tensor or tuple)."""
    return value[0] if isinstance(value, tuple) else value


def _with_first(value: object, tensor: torch.Tensor) -> object:
    """`value` (a tensor or a tuple whose first item is the hidden state) with that item replaced."""
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


def _applied(fn: ActivationFn, activation: torch.Tensor, hook: str) -> torch.Tensor:
    """fn(activation), checked to keep the shape, in the activation's dtype and device."""
    new = fn(activation)
    if not isinstance(new, torch.Tensor) or new.shape != activation.shape:
        shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(
            f"Replacement for hook {hook!r} must return a tensor of shape "
            f"{tuple(activation.shape)}, got {shape}."
        )
    return new.to(device=activation.device, dtype=activation.dtype)


def _hook_input(
    point: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> RemovableHandle:
    """Forward pre-hook calling fn on the module's hidden-state input; a tensor result replaces it."""

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        new = fn(args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _hook_output(
    point: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> RemovableHandle:
    """Forward hook calling fn on the module's hidden-state output; a tensor result replaces it."""

    def post_hook(_module: nn.Module, _args: tuple, output: object) -> object:
        new = fn(_first_tensor(output))
        return None if new is None else _with_first(output, new)

    return point.module.register_forward_hook(post_hook)


def _hook(point: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> RemovableHandle:
    """Attach fn at the hook point's module input or output."""
    return (_hook_input if point.capture == "input" else _hook_output)(point, fn)


def observe(model: nn.Module, hook: str, fn: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """Call fn(activation at `hook`) in every forward until the returned handle is removed."""
    return _hook(resolve_hook(model, hook), fn)


def _replace_resid_mid(
    model: nn.Module, point: HookPoint, fn: ActivationFn
) -> list[RemovableHandle]:
    """Replace resid_mid by rewriting attn_out against the layer's input (see module docstring)."""
    layer_input = resolve_hook(model, f"blocks.{point.layer}.hook_resid_pre")
    attn_out = resolve_hook(model, f"blocks.{point.layer}.hook_attn_out")
    resid_pre: list[torch.Tensor] = []

    def keep_input(activation: torch.Tensor) -> None:
        resid_pre[:] = [activation]

    def rewrite(attn: torch.Tensor) -> torch.Tensor:
        mid = resid_pre[0] + attn
        return _applied(fn, mid, point.name) - resid_pre[0]

    return [_hook(layer_input, keep_input), _hook(attn_out, rewrite)]


@contextmanager
def replace_activation(model: nn.Module, hook: str, fn: ActivationFn) -> Iterator[None]:
    """Within the block, every forward of `model` uses fn(activation) at `hook`.

    fn gets the (batch, seq, d) activation and returns a tensor of the same shape (cast to the
    activation's dtype). Works at every TransformerLens hook name of saelab.lm.hooks.
    """
    point = resolve_hook(model, hook)
    if point.kind == "hook_resid_mid":
        handles = _replace_resid_mid(model, point, fn)
    else:
        handles = [_hook(point, lambda activation: _applied(fn, activation, point.name))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_activations(
    model: nn.Module, hooks: str | Sequence[str]
) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, forwards store {hook: activation (detached)} in the yielded dict."""
    names = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
    recorded: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for name in names:
            point = resolve_hook(model, name)

            def keep(activation: torch.Tensor, name: str = name) -> None:
                recorded[name] = activation.detach()

            stack.callback(_hook(point, keep).remove)
        yield recorded
