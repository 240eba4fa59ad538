"""Logit lens of decoder directions: which tokens each latent promotes and suppresses.

Logits of latent i are d_i · W_U (W_U = the unembedding, (d, vocab)), read "through the final
norm" the way TransformerLens folds it (fold_ln): the norm's per-dimension scale γ is folded
into W_U, and for LayerNorm-style norms (which remove the mean) d_i is centred first. The norm's
1/rms scale and bias are dropped: one positive factor per latent and a constant over latents,
neither of which changes the ranking. Gemma's final logit soft-capping is monotone and also
left out. Computed for a chunk of latents at a time, so memory stays bounded for a 262k vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

FINAL_NORMS = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
)
CHUNK_ELEMENTS = 2**25  # logits per chunk (128 MiB in float32)


@dataclass(frozen=True)
class FinalNorm:
    """The final norm reduced to what the logit lens needs: scale γ and whether it centres."""

    scale: Tensor
    centres: bool


def final_norm_module(model: nn.Module) -> nn.Module | None:
    """The norm applied to the residual stream right before the unembedding, if any."""
    for path in FINAL_NORMS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


@torch.no_grad()
def fold_final_norm(norm: nn.Module, d: int) -> FinalNorm:
    """Measure γ and centring of a norm module by probing it (RMSNorm, LayerNorm, Gemma's
    (1 + w) RMSNorm): v = (1, −1, 1, ...) has rms 1 (and mean 0 for even d), so
    γ = (norm(v) − norm(−v)) / 2v; the norm centres when norm(v + 3) = norm(v)."""
    param = next(norm.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    v = torch.ones(d, dtype=torch.float32, device=device)
    v[1::2] = -1
    out = norm(torch.stack((v, -v, v + 3)).to(dtype)[None])[0].float()
    scale = (out[0] - out[1]) / (2 * v)
    centres = bool(torch.allclose(out[2], out[0], atol=1e-3 * float(out[0].abs().max()) + 1e-6))
    return FinalNorm(scale=scale, centres=centres)


def lens_directions(W_dec: Tensor, norm: FinalNorm | None) -> Tensor:
    """Decoder rows as the unembedding sees them: centred if the norm centres, times γ."""
    rows = W_dec.float()
    if norm is None:
        return rows
    if norm.centres:
        rows = rows - rows.mean(1, keepdim=True)
    return rows * norm.scale.to(rows.device)


@torch.no_grad()
def logit_lens(
    W_dec: Tensor, W_U: Tensor, k: int, norm: FinalNorm | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k promoted and suppressed tokens per latent of (W_dec folded through norm) @ W_U.

    W_dec (n, d); W_U (d, vocab). Returns (pos_values, pos_ids, neg_values, neg_ids), each
    (n, k); neg_values are the k most negative logits, most negative first.
    """
    directions = lens_directions(W_dec, norm)
    W_U = W_U.float().to(directions.device)
    k = min(k, W_U.shape[1])
    chunk = max(1, CHUNK_ELEMENTS // W_U.shape[1])
    parts = []
    for start in range(0, len(directions), chunk):
        logits = directions[start : start + chunk] @ W_U
        pos = logits.topk(k, dim=1)
        neg = logits.topk(k, dim=1, largest=False)
        parts.append((pos.values, pos.indices, neg.values, neg.indices))
    return tuple(torch.cat(column).cpu() for column in zip(*parts, strict=True))


def model_logit_lens(
    model: nn.Module, W_dec: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """logit_lens for a HF causal LM: its unembedding and (when present) its final norm."""
    W_U = model.get_output_embeddings().weight.T
    module = final_norm_module(model)
    norm = fold_final_norm(module, W_dec.shape[1]) if module is not None else None
    return logit_lens(W_dec.to(W_U.device), W_U, k, norm)
