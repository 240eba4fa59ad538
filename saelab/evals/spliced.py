"""Spliced-LM evaluation (SPEC §3): next-token CE clean, with the SAE spliced in, zero-ablated.

Positions (one rule for every metric):
- SAE positions are the tokens that are not BOS/EOS/pad (`saelab.data.sae_token_mask`). Only
  there is the hook activation replaced (by x̂ = sae(x), or by zeros); BOS, EOS separators and
  pad keep their clean activation in every run. The tensor metrics use the same positions.
- A prediction is the next-token distribution at position t for the token at t+1. It counts
  when t is an SAE position (so predictions made at BOS/EOS/pad never count: at BOS all three
  runs agree by construction) and the target at t+1 is not pad; the last position of each
  context has no target.
CE = mean over counted predictions of −log p(target); KL = mean of KL(p_clean ‖ p_sae), from
float32 log-softmax. Token batches are packed contexts without padding (as ContextStream gives).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from saelab.data import sae_token_mask, special_token_ids
from saelab.evals.metrics import MetricsAccumulator
from saelab.lm.logits import head_logits
from saelab.lm.model import LanguageModel
from saelab.lm.prefix import SharedPrefix
from saelab.sae import SAE

LOGIT_CHUNK_ELEMENTS = 2**26  # logits per chunk (256 MiB in float32): bounds memory for any vocab
MODEL_BEHAVIOR_KEYS = ("ce_clean", "ce_sae", "ce_zero", "delta_lm_loss", "ce_loss_recovered", "kl")


def _spliced(activation: Tensor, mask: Tensor, values: Tensor) -> Tensor:
    """`activation` with the rows at `mask` (batch, seq) replaced by `values` (n_masked, d)."""
    out = activation.clone()
    out[mask] = values.to(out.dtype)
    return out


def _total(values: Tensor) -> float:
    """Sum in float64 (the sums run over all evaluated tokens)."""
    return float(values.double().sum())


def _log_probs(lm: LanguageModel, hidden: Tensor) -> Tensor:
    """float32 log-softmax of the logits of final hidden states (rows, d), computed in place."""
    logits = head_logits(lm.model, hidden).float()
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))


class SplicedEvaluator:
    """Streams token batches and accumulates the SPEC §3 tensor and spliced-LM metrics.

    update() one (batch, seq) LongTensor at a time; result() gives the metrics so far. Memory is
    bounded by one batch: logits are computed for LOGIT_CHUNK_ELEMENTS at a time and dropped.
    """

    def __init__(
        self, sae: SAE, lm: LanguageModel, hook: str, special_ids: list[int] | None = None
    ) -> None:
        self.sae = sae
        self.lm = lm
        self.hook = hook
        self.special_ids = special_token_ids(lm.tokenizer) if special_ids is None else special_ids
        self.pad_id = lm.tokenizer.pad_token_id
        self.tensor = MetricsAccumulator(sae.cfg.d_sae)
        self.sums = dict.fromkeys(("ce_clean", "ce_sae", "ce_zero", "kl"), 0.0)
        self.n_predictions = 0
        self._prefix = SharedPrefix(lm.model, hook)
        vocab = lm.model.get_output_embeddings().weight.shape[0]
        self._chunk_rows = max(1, LOGIT_CHUNK_ELEMENTS // vocab)

    @torch.inference_mode()
    def update(self, input_ids: Tensor) -> int:
        """Evaluate one batch of contexts (batch, seq); returns its number of SAE positions."""
        ids = input_ids.to(self.lm.device)
        mask = sae_token_mask(ids, self.special_ids)
        x, clean = self._prefix.clean(ids)
        if x.shape[-1] != self.sae.cfg.d_in:
            raise ValueError(
                f"SAE d_in={self.sae.cfg.d_in} does not match the width {x.shape[-1]} of hook "
                f"{self.hook!r} on model {self.lm.name!r}."
            )
        x_in = x[mask].to(self.sae.device)
        f = self.sae.encode(x_in)
        x_hat = self.sae.decode(f)
        self.tensor.update(x_in, f, x_hat)  # SPEC §3 tensor metrics, BOS/EOS/pad excluded
        x_hat = x_hat.to(x.device)
        with_sae = self._prefix.replaced(lambda a: _spliced(a, mask, x_hat))
        zeroed = self._prefix.replaced(lambda a: _spliced(a, mask, torch.zeros_like(x_hat)))
        predicted = mask[:, :-1]
        if self.pad_id is not None:
            predicted = predicted & (ids[:, 1:] != self.pad_id)
        targets = ids[:, 1:][predicted]
        rows = [h[:, :-1][predicted] for h in (clean, with_sae, zeroed)]
        for start in range(0, len(targets), self._chunk_rows):
            chunk = slice(start, start + self._chunk_rows)
            self._score(*(r[chunk] for r in rows), targets[chunk])
        self.n_predictions += len(targets)
        return len(x_in)

    def _score(self, clean: Tensor, with_sae: Tensor, zeroed: Tensor, targets: Tensor) -> None:
        """Add the CE and KL sums of one chunk of predictions (SPEC §3), in place where possible."""
        index = targets[:, None]
        lp_clean = _log_probs(self.lm, clean)
        lp_sae = _log_probs(self.lm, with_sae)
        self.sums["ce_clean"] -= _total(lp_clean.gather(1, index))
        self.sums["ce_sae"] -= _total(lp_sae.gather(1, index))
        # KL(p_clean ‖ p_sae) = Σ_v p_clean · (log p_clean − log p_sae), per position
        log_ratio = torch.sub(lp_clean, lp_sae, out=lp_sae)
        self.sums["kl"] += _total(torch.linalg.vecdot(lp_clean.exp_(), log_ratio))
        del lp_clean, lp_sae, log_ratio
        self.sums["ce_zero"] -= _total(_log_probs(self.lm, zeroed).gather(1, index))

    def model_behavior(self) -> dict[str, float]:
        """CE clean/SAE/zero, delta LM loss, CE loss recovered and KL (SPEC §3)."""
        if self.n_predictions == 0:
            raise ValueError(
                "no next-token predictions were evaluated (empty or all-special tokens)"
            )
        n = self.n_predictions
        ce_clean, ce_sae, ce_zero = (self.sums[k] / n for k in ("ce_clean", "ce_sae", "ce_zero"))
        denominator = ce_zero - ce_clean
        return {
            "ce_clean": ce_clean,
            "ce_sae": ce_sae,
            "ce_zero": ce_zero,
            "delta_lm_loss": ce_sae - ce_clean,
            "ce_loss_recovered": (ce_zero - ce_sae) / denominator if denominator else math.nan,
            "kl": self.sums["kl"] / n,
        }

    def result(self) -> dict[str, float]:
        """Tensor metrics (saelab.evaluate keys) + model-behaviour metrics + n_predictions."""
        return {
            **self.tensor.result(),
            **self.model_behavior(),
            "n_predictions": self.n_predictions,
        }


def evaluate_spliced(
    sae: SAE,
    lm: LanguageModel,
    hook: str,
    token_batches: Iterable[Tensor],
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """SPEC §3 tensor + spliced-LM metrics of `sae` at `hook` over batches of token ids.

    on_batch(n) is called after each batch with its number of SAE positions (for progress).
    """
    evaluator = SplicedEvaluator(sae, lm, hook)
    for batch in token_batches:
        n = evaluator.update(batch)
        if on_batch is not None:
            on_batch(n)
    return evaluator.result()
