"""Dead-latent tracking by token window (SPEC §2.2): dead = no firing in the last W tokens."""

from __future__ import annotations

import torch
from torch import Tensor

# Off the CPU, whether any latent is dead is read back (a host sync) every this many steps.
ACCELERATOR_CHECK_EVERY = 16


class DeadLatentTracker:
    """Counts, per latent, the tokens seen since it last fired; stays on the SAE's device.

    any_dead() tells the trainer whether the dead-latent losses run this step: on a CPU it
    is read every step (a CPU has no queue to wait for), elsewhere every check_every steps
    and held in between, so a step without that read never waits for the device.
    """

    def __init__(
        self,
        d_sae: int,
        window: int,
        device: torch.device | str = "cpu",
        check_every: int | None = None,
    ) -> None:
        self.window = window
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        cpu = torch.device(device).type == "cpu"
        self.check_every = check_every or (1 if cpu else ACCELERATOR_CHECK_EVERY)
        self.updates = 0
        self._any_dead: bool | None = None

    def update(self, fired: Tensor, n_tokens: int) -> None:
        """Record a batch of n_tokens in which the latents marked in `fired` (d_sae bool) fired."""
        self.tokens_since_fired = torch.where(fired, 0, self.tokens_since_fired + n_tokens)
        self.updates += 1

    def reset(self, indices: Tensor) -> None:
        """Count the latents at `indices` as just fired (after resampling revives them)."""
        self.tokens_since_fired[indices] = 0

    @property
    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.window

    def any_dead(self) -> bool:
        """Whether some latent is dead, as of the last read-back (every check_every updates)."""
        if self._any_dead is None or self.updates % self.check_every == 0:
            self._any_dead = bool(self.dead_mask.any())
        return self._any_dead

    def state_dict(self) -> dict[str, Tensor]:
        held = -1 if self._any_dead is None else int(self._any_dead)
        return {
            "tokens_since_fired": self.tokens_since_fired.clone(),
            "updates": torch.tensor(self.updates),
            "any_dead": torch.tensor(held),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.tokens_since_fired = state["tokens_since_fired"].to(self.tokens_since_fired.device)
        self.updates = int(state.get("updates", 0))
        held = int(state.get("any_dead", -1))
        self._any_dead = None if held < 0 else bool(held)
