"""Architectures registered by name, and `create_sae` (DESIGN.md public API)."""

from __future__ import annotations

from typing import Any

import torch

from saelab.sae.base import SAE, SAEConfig

_REGISTRY: dict[str, type[SAE]] = {}
PROVENANCE_OPTIONS = ("dtype", "model_name", "hook_name", "context_size", "dataset", "metadata")
# Any architecture can be a transcoder (SPEC §2.6).
TRANSCODER_OPTIONS = ("d_out", "skip_connection", "target_hook_name")


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make an architecture available to create_sae/load_sae by its name."""
    _REGISTRY[cls.architecture] = cls
    return cls


def architectures() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)


def sae_class(architecture: str) -> type[SAE]:
    """The class registered under `architecture`, or a ValueError listing the valid names."""
    if architecture not in _REGISTRY:
        raise ValueError(f"unknown SAE architecture {architecture!r}; valid: {architectures()}")
    return _REGISTRY[architecture]


def build_sae(cfg: SAEConfig) -> SAE:
    """An uninitialised SAE of cfg's architecture (weights to be loaded or reset)."""
    return sae_class(cfg.architecture)(cfg)


def create_sae(
    architecture: str, d_in: int, d_sae: int, *, seed: int | None = None, **options: Any
) -> SAE:
    """A freshly initialised SAE (SPEC §2 initialisation for the architecture).

    options: architecture options (k for topk/batchtopk; bandwidth, init_threshold, ... for
    jumprelu), provenance (model_name, hook_name, ...) and, for a transcoder, d_out (with
    skip_connection, target_hook_name). seed makes the init reproducible.
    """
    cls = sae_class(architecture)
    allowed = set(cls.options) | set(PROVENANCE_OPTIONS) | set(TRANSCODER_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"{architecture} SAE does not take option(s) {unknown}; valid: {sorted(allowed)}"
        )
    if options.get("d_out") is not None:  # b_dec is an output bias (SPEC §2.6)
        options.setdefault("apply_b_dec_to_input", False)
    sae = cls(SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, **options))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        sae.reset_parameters()
    return sae
