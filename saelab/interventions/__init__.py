"""Interventions: steering, clamping and ablating SAE latents; prompt analysis; contrastive latents."""

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
