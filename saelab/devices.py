"""Checking a user's torch device name before anything is loaded onto it."""

from __future__ import annotations

DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(name: str | None) -> str | None:
    """Return `name` unchanged if this machine has that device, else raise a one-line ValueError.

    None means "the default device" and is passed through. Valid: cpu, cuda, cuda:N, mps.
    """
    if name is None:
        return None
    import torch

    valid = "cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; valid: {valid}") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"unknown device {name!r}; valid: {valid}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 … cuda:{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use cpu")
    return name
