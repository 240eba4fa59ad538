"""Interventions: steering, clamping and ablating SAE latents; prompt analysis; contrastive latents.

Names are imported on first use (saelab.lazy), so importing a submodule (the CLI) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelab.lazy import lazy_package

if TYPE_CHECKING:
    from saelab.interventions.contrast import ContrastRow, rank_contrast
    from saelab.interventions.edit import MODES, edit_activation, latent_intervention
    from saelab.interventions.prompt import TokenLatents, top_latents_per_token
    from saelab.interventions.steering import SteeringResult, steer

__all__ = [
    "MODES",
    "ContrastRow",
    "SteeringResult",
    "TokenLatents",
    "edit_activation",
    "latent_intervention",
    "rank_contrast",
    "steer",
    "top_latents_per_token",
]

lazy_package(
    __name__,
    {
        "ContrastRow": "saelab.interventions.contrast",
        "MODES": "saelab.interventions.edit",
        "SteeringResult": "saelab.interventions.steering",
        "TokenLatents": "saelab.interventions.prompt",
        "edit_activation": "saelab.interventions.edit",
        "latent_intervention": "saelab.interventions.edit",
        "rank_contrast": "saelab.interventions.contrast",
        "steer": "saelab.interventions.steering",
        "top_latents_per_token": "saelab.interventions.prompt",
    },
)
