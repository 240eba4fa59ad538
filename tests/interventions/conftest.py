"""Fixtures: a random JumpReLU SAE on the tiny llama model."""

from __future__ import annotations

import pytest

import saelab


@pytest.fixture(scope="module")
def sae(tiny_lm):
    """A random-init JumpReLU SAE (d_sae 128) for blocks.1.hook_resid_post of the tiny model."""
    return saelab.create_sae("jumprelu", d_in=tiny_lm.d_model, d_sae=128, seed=0).eval()
