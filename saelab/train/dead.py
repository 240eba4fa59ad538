"""Dead-latent tracking by token window (SPEC §2.2): dead = no firing in the last W tokens."""

from __future__ import annotations

import torch
from torch import Tensor


class DeadLatentTracker:
    """Counts, per latent, the tokens seen since it last fired; stays on the SAE's device."""

    def __init__(self, d_sae: int, window: int, device: torch.device | str = "cpu") -> None:
        self.window = window
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, fired: Tensor, n_tokens: int) -> None:
        """Record a batch of n_tokens in which the latents marked in `fired` (d_sae bool) fired."""
        self.tokens_since_fired = torch.where(fired, 0, self.tokens_since_fired + n_tokens)

    def reset(self, indices: Tensor) -> None:
        """Count the latents at `indices` as just fired (after resampling revives them)."""
        self.tokens_since_fired[indices] = 0

    @property
    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.window

    def state_dict(self) -> dict[str, Tensor]:
        return {"tokens_since_fired": self.tokens_since_fired.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.tokens_since_fired = state["tokens_since_fired"].to(self.tokens_since_fired.device)
