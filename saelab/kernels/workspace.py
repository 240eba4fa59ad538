"""One SAE's training scratch: reused buffers, compiled objectives and the "auto" density gate.

A fresh (tokens × latents) buffer every step costs the CPU a page fault and a zeroed page per
4 KiB (≈0.1 s for the 268 MB π at batch 4096 × 16384 latents); reusing one costs nothing. The
workspace lives and dies with its SAE (`sae.workspace`); copying an SAE gives the copy an empty one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from saelab.kernels.options import KernelOptions


class Workspace:
    """Per-SAE state of the training kernels; holds no parameters and is never saved."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._compiled: dict[Callable, Callable] = {}
        self._gates: dict[str, _Gate] = {}

    def buffer(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """An uninitialised tensor, the same one on every call with this name, shape and dtype.

        It is valid until the next call with that name; call release() before letting it escape
        into anything that outlives the step (an autograd graph).
        """
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            self._buffers[name] = buf = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def release(self, name: str) -> None:
        """Hand the current buffer over to the caller: the next buffer() call allocates anew."""
        self._buffers.pop(name, None)

    def compiled(self, method: Callable) -> Callable:
        """torch.compile of a bound method's function (built once per workspace), bound again."""
        function = method.__func__
        if function not in self._compiled:
            self._compiled[function] = torch.compile(function)
        return functools.partial(self._compiled[function], method.__self__)

    def use_sparse(self, touched: Tensor, options: KernelOptions, gate: str = "codes") -> bool:
        """Sparse or dense for a step that touches the True entries of `touched`.

        "auto" compares the density of touched entries, summed on the device since the last
        decision, with options.max_density every options.steps_per_decision steps (the only
        read-back to the host); in between the last decision holds. Each named gate (e.g.
        JumpReLU's kernel window and its active codes) keeps its own count and decision.
        """
        if options.mode != "auto":
            return options.mode == "sparse"
        state = self._gates.setdefault(gate, _Gate())
        count = torch.count_nonzero(touched)
        state.count = count if state.count is None else state.count + count
        state.entries += touched.numel()
        state.steps += 1
        if state.sparse is None or state.steps >= options.steps_per_decision(touched.device):
            state.sparse = options.sparse_at(float(state.count) / state.entries)
            state.count, state.entries, state.steps = None, 0, 0
        return state.sparse

    def __deepcopy__(self, memo: dict) -> Workspace:
        return Workspace()

    def __getstate__(self) -> dict:
        return Workspace().__dict__


class _Gate:
    """One density gate of a workspace: the count since its last decision, and that decision."""

    def __init__(self) -> None:
        self.count: Tensor | None = None
        self.entries = 0
        self.steps = 0
        self.sparse: bool | None = None
