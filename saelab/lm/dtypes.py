"""Parse dtype names given by users ("float32", "bf16", torch.float16, ...)."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(
    dtype: str | torch.dtype | None, default: torch.dtype = torch.float32
) -> torch.dtype:
    """A torch floating dtype from a name or dtype; None gives `default`."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    key = dtype.removeprefix("torch.").lower()
    if key not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}.")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """Canonical name of a torch dtype ('float32', 'bfloat16', ...)."""
    return str(dtype).removeprefix("torch.")
