"""Which training kernels the SAEs use: dense, sparse or chosen per step, and the matmul dtype."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

MODES = ("auto", "dense", "sparse")
# "auto" goes sparse when at most this fraction of the (tokens × latents) entries is touched;
# above it the dense matmuls are cheaper than the gathers/scatters on a 2-core CPU.
DEFAULT_MAX_DENSITY = 0.03


@dataclass(frozen=True)
class KernelOptions:
    """mode: auto | dense | sparse; matmul_dtype: autocast dtype for the encoder matmul or None.

    compile: run the dense objectives that measurably gain from it (JumpReLU's; −46% step time
    on a 2-core CPU, benchmarks/RESULTS.md) through torch.compile. The first step pays the
    compilation (20–40 s on CPU); the sparse kernels are never compiled, which slows them.
    """

    mode: str = "auto"
    matmul_dtype: torch.dtype | None = None
    max_density: float = DEFAULT_MAX_DENSITY
    compile: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"kernel mode must be one of {MODES}, got {self.mode!r}")
        if self.matmul_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(
                f"matmul_dtype must be None, bfloat16 or float16, got {self.matmul_dtype}"
            )
        if not 0.0 < self.max_density <= 1.0:
            raise ValueError(f"max_density must be in (0, 1], got {self.max_density}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")


_current = KernelOptions()


def kernel_options() -> KernelOptions:
    """The options in force (module-wide, so the public SAE API keeps its signatures)."""
    return _current


def set_kernel_options(**changes: object) -> KernelOptions:
    """Change the options in force (mode=, matmul_dtype=, max_density=, compile=); returns the old ones."""
    global _current
    old, _current = _current, replace(_current, **changes)
    return old


@contextlib.contextmanager
def use_kernels(**changes: object) -> Iterator[KernelOptions]:
    """Temporarily change the kernel options: `with use_kernels(mode="sparse"): ...`."""
    old = set_kernel_options(**changes)
    try:
        yield _current
    finally:
        set_kernel_options(**vars(old))


def use_sparse(density: float) -> bool:
    """Whether to take the sparse path at this fraction of touched entries."""
    mode = _current.mode
    return mode == "sparse" or (mode == "auto" and density <= _current.max_density)


def matmul_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to the configured matmul dtype (fp32 master weights stay fp32), or nothing."""
    dtype = _current.matmul_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


_compiled: dict[Callable, Callable] = {}


def maybe_compiled(method: Callable) -> Callable:
    """The bound method itself, or with compile on, torch.compile of its function (built once)."""
    if not _current.compile:
        return method
    function = method.__func__
    if function not in _compiled:
        _compiled[function] = torch.compile(function)
    return functools.partial(_compiled[function], method.__self__)
