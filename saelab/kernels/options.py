"""How an SAE runs its training kernels: dense, sparse or chosen from the density, and the matmul
dtype. Each SAE holds its own KernelOptions (`sae.kernels`); nothing here is process-global."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from saelab.lm.dtypes import parse_dtype

MODES = ("auto", "dense", "sparse")
# "auto" goes sparse when at most this fraction of the (tokens × latents) entries is touched.
# On a 2-core CPU at 4096 × 640 × 16,384 the sparse step is the faster up to ~20% (JumpReLU) and
# ~15% (TopK): 2.1 s vs 4.0 s and 2.6 s vs 3.5 s at 10% (benchmarks/crossover.py). Not measured
# on a GPU, where dense matmuls are relatively cheaper.
DEFAULT_MAX_DENSITY = 0.1
# "auto" re-reads the density every this many steps off the CPU: reading a device count back
# waits for the queued work (a host sync), which a CPU, having no queue, never does.
ACCELERATOR_DECIDE_EVERY = 16


@dataclass(frozen=True)
class KernelOptions:
    """mode: auto | dense | sparse; matmul_dtype: autocast dtype for the encoder matmul or None.

    compile: run the dense objectives that measurably gain from it (JumpReLU's; −46% step time
    on a 2-core CPU, benchmarks/RESULTS.md) through torch.compile. The first step pays the
    compilation (20–40 s on CPU); the sparse kernels are never compiled, which slows them.
    decide_every: steps between two density read-backs in "auto" (None: every step on CPU,
    ACCELERATOR_DECIDE_EVERY elsewhere); in between, the last decision holds.
    """

    mode: str = "auto"
    matmul_dtype: torch.dtype | None = None
    max_density: float = DEFAULT_MAX_DENSITY
    compile: bool = False
    decide_every: int | None = None

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
        if self.decide_every is not None and self.decide_every < 1:
            raise ValueError(f"decide_every must be None or ≥ 1, got {self.decide_every}")

    def sparse_at(self, density: float) -> bool:
        """Whether to take the sparse path at this fraction of touched entries."""
        return self.mode == "sparse" or (self.mode == "auto" and density <= self.max_density)

    def steps_per_decision(self, device: torch.device) -> int:
        """decide_every, or its device default."""
        if self.decide_every is not None:
            return self.decide_every
        return 1 if device.type == "cpu" else ACCELERATOR_DECIDE_EVERY


def native_bf16_matmul(device: torch.device) -> bool:
    """Whether this device multiplies bf16 in hardware (CUDA with bf16; a CPU with AVX512-BF16 or
    AMX), where the bf16 encoder matmul is ≈4.7× fp32's (benchmarks/RESULTS.md); emulated bf16
    elsewhere is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_matmul_dtype(
    name: str, device: torch.device, current: torch.dtype | None
) -> torch.dtype | None:
    """The encoder matmul dtype a run uses: float32 → None (full precision), bfloat16/float16 as
    named, "auto" → bfloat16 on native hardware, else `current` (what the SAE's kernels say)."""
    if name == "auto":
        return torch.bfloat16 if native_bf16_matmul(device) else current
    dtype = parse_dtype(name)
    return None if dtype == torch.float32 else dtype


def matmul_autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """Autocast to a matmul dtype (fp32 master weights stay fp32), or nothing for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
