"""Run the decoder layers before a hook once per input, then only the later layers per variant.

Spliced evaluation runs the LM several times on the same tokens with only the activation at
one hook changed; the layers before that hook give the same result every time. SharedPrefix
records the output of the last such layer in a clean forward, and in later forwards each of
those layers returns the recorded output instead of computing it (their `forward` is swapped
for the duration of the call and restored afterwards), so only the embedding lookup and the
layers from the hook on run again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from saelab.lm.hooks import decoder_layers, family_layout, hook_names, resolve_hook
from saelab.lm.intervene import ActivationFn, observe, record_activations, replace_activation
from saelab.lm.logits import final_hidden_states


def prefix_depth(model: nn.Module, hook: str) -> int:
    """How many leading decoder layers produce their output without depending on `hook`."""
    point = resolve_hook(model, hook)
    return point.layer + 1 if point.kind == "hook_resid_post" else point.layer


class _ReachedHook(Exception):
    """Raised at the hook by prefix(): the layers after it never run."""


@contextmanager
def _replayed(layers: Sequence[nn.Module], output: object) -> Iterator[None]:
    """Within the block, each layer returns `output` without computing anything."""
    saved = [layer.__dict__.get("forward") for layer in layers]

    def replay(*_args: object, **_kwargs: object) -> object:
        return output

    for layer in layers:
        layer.forward = replay
    try:
        yield
    finally:
        for layer, previous in zip(layers, saved, strict=True):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous


class SharedPrefix:
    """Forwards of one input with the activation at `hook` replaced, sharing the earlier layers.

    Call clean(input_ids) (or prefix(input_ids), which stops at the hook) first; each
    replaced(fn) then reruns only the layers from the hook on. `inputs` are earlier hooks whose
    clean activations that forward also keeps, in `self.inputs` (a transcoder's input, SPEC
    §2.6: replacing `hook` does not change them).
    """

    def __init__(self, model: nn.Module, hook: str, inputs: Sequence[str] = ()) -> None:
        self.model = model
        self.hook = hook
        order = hook_names(model)
        resolve_hook(model, hook)
        for name in inputs:
            resolve_hook(model, name)
            if order.index(name) >= order.index(hook):
                raise ValueError(
                    f"input hook {name!r} does not come before {hook!r} in the forward; a "
                    "transcoder reads an earlier hook than the one it replaces"
                )
        self.input_hooks = [name for name in dict.fromkeys(inputs) if name != hook]
        self.inputs: dict[str, torch.Tensor] = {}
        depth = prefix_depth(model, hook)
        self._layers = list(decoder_layers(model, family_layout(model))[:depth])
        self._input_ids: torch.Tensor | None = None
        self._prefix_output: object = None

    @contextmanager
    def _remembering(self, input_ids: torch.Tensor) -> Iterator[None]:
        """Within the block, keep the last prefix layer's output of a forward of `input_ids`;
        once the block ends without error, replaced() replays it."""
        kept: list[object] = []
        handle = (
            self._layers[-1].register_forward_hook(lambda _m, _a, output: kept.append(output))
            if self._layers
            else None
        )
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
        self._input_ids = input_ids
        self._prefix_output = kept[0] if kept else None

    def clean(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unmodified forward: (activation at the hook, final hidden states), both (batch, seq, d)."""
        with (
            self._remembering(input_ids),
            record_activations(self.model, [*self.input_hooks, self.hook]) as recorded,
        ):
            hidden = final_hidden_states(self.model, input_ids)
        self.inputs = {name: recorded[name] for name in self.input_hooks}
        return recorded[self.hook], hidden

    def prefix(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The activation at the hook (batch, seq, d); the layers after the hook do not run."""
        recorded: list[torch.Tensor] = []

        def stop(activation: torch.Tensor) -> None:
            recorded.append(activation.detach())
            raise _ReachedHook

        # The prefix output is kept before the hook stops the forward: a hook_resid_post hook
        # sits on the same layer's output, and hooks run in the order they were added.
        with (
            self._remembering(input_ids),
            record_activations(self.model, self.input_hooks) as inputs,
        ):
            handle = observe(self.model, self.hook, stop)
            try:
                self.model(input_ids=input_ids, use_cache=False)
            except _ReachedHook:
                pass
            finally:
                handle.remove()
        self.inputs = dict(inputs)
        return recorded[0]

    def replaced(self, fn: ActivationFn) -> torch.Tensor:
        """Final hidden states of the clean() input with fn(activation) at the hook."""
        if self._input_ids is None:
            raise RuntimeError("SharedPrefix.replaced() needs a clean() forward first.")
        with (
            _replayed(self._layers, self._prefix_output),
            replace_activation(self.model, self.hook, fn),
        ):
            return final_hidden_states(self.model, self._input_ids)
