"""SPEC §3 tensor metrics, accumulated in float64 over a stream of activation batches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saelab.sae import SAE

DENSE_FREQUENCY = 0.1


def iter_batches(activations: Tensor | Iterable[Tensor], batch_size: int) -> Iterable[Tensor]:
    """Rows of a tensor (any leading dims) in chunks, or the batches of an iterable as given."""
    if isinstance(activations, Tensor):
        flat = activations.reshape(-1, activations.shape[-1])
        yield from flat.split(batch_size)
    else:
        for batch in activations:
            yield batch.reshape(-1, batch.shape[-1])


@dataclass
class MetricsAccumulator:
    """Running sums from which every SPEC §3 tensor metric is computed exactly at the end."""

    d_sae: int
    n: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    sum_x: Tensor | None = None
    fire_count: Tensor | None = None
    act_sum: Tensor | None = None

    def update(self, x: Tensor, f: Tensor, x_hat: Tensor) -> None:
        """Add one batch of inputs x (B, d), features f (B, n) and reconstructions x̂ (B, d)."""
        x, f, x_hat = x.double(), f.double(), x_hat.double()
        err = (x - x_hat).pow(2).sum(-1)
        cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12)
        batch = {
            "l0": (f != 0).sum(),
            "l1": f.abs().sum(),
            "sse": err.sum(),
            "x_sq": x.pow(2).sum(),
            "cos": cos.sum(),
            "x_hat_sq": x_hat.pow(2).sum(),
            "x_hat_dot_x": (x_hat * x).sum(),
        }
        for k, v in batch.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        fired = (f != 0).sum(0)
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.fire_count = fired if self.fire_count is None else self.fire_count + fired
        self.act_sum = f.sum(0) if self.act_sum is None else self.act_sum + f.sum(0)
        self.n += x.shape[0]

    def firing_frequency(self) -> Tensor:
        """Fraction of tokens on which each latent fired."""
        return self.fire_count.double() / max(self.n, 1)

    def mean_activation(self) -> Tensor:
        """Each latent's mean activation over all tokens."""
        return self.act_sum / max(self.n, 1)

    def result(self) -> dict[str, float]:
        """The SPEC §3 metrics; FVU uses variance about the eval-set mean, not about zero."""
        if self.n == 0:
            raise ValueError("no activations were given to evaluate")
        s, n = self.sums, self.n
        d_in = self.sum_x.numel()
        total_var = s["x_sq"] - float(self.sum_x.pow(2).sum()) / n
        fvu = s["sse"] / total_var if total_var > 0 else float("nan")
        freq = self.firing_frequency()
        return {
            "l0": s["l0"] / n,
            "l1": s["l1"] / n,
            "mse": s["sse"] / n,
            "mse_per_element": s["sse"] / (n * d_in),
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "cosine": s["cos"] / n,
            "shrinkage": s["x_hat_sq"] / s["x_hat_dot_x"] if s["x_hat_dot_x"] else float("nan"),
            "dead_fraction": float((freq == 0).double().mean()),
            "dense_fraction": float((freq > DENSE_FREQUENCY).double().mean()),
            "n_tokens": n,
        }


@torch.no_grad()
def evaluate(
    sae: SAE, activations: Tensor | Iterable[Tensor], batch_size: int = 4096
) -> dict[str, float]:
    """SPEC §3 tensor metrics of `sae` on activations (a tensor or an iterable of batches).

    For a transcoder (SPEC §2.6) each row is its input and then its target, [x | y] as in
    saelab.train, and the reconstruction metrics compare ŷ with y. Keys: l0, l1, mse,
    mse_per_element, fvu, explained_variance, cosine, shrinkage, dead_fraction, dense_fraction,
    n_tokens. BOS/pad positions must already be excluded.
    """
    acc = MetricsAccumulator(sae.cfg.d_sae)
    d_in = sae.cfg.d_in
    for batch in iter_batches(activations, batch_size):
        rows = batch.to(sae.device)
        x, y = (rows[:, :d_in], rows[:, d_in:]) if sae.cfg.transcoder else (rows, rows)
        f = sae.encode(x)
        acc.update(y, f, sae.with_skip(sae.decode(f), x))
    return acc.result()
