"""Spliced-LM evaluation (SPEC §3): next-token CE clean, with each SAE spliced in, zero-ablated.

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
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from saelab.data import sae_token_mask, special_token_ids
from saelab.evals.metrics import MetricsAccumulator
from saelab.evals.reference import ReferenceBatch, supports_reference
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


def input_hook(sae: SAE, hook: str) -> str:
    """The hook an SAE spliced in at `hook` reads: `hook`, or a transcoder's input hook."""
    if not sae.cfg.transcoder:
        return hook
    if sae.cfg.hook_name is None:
        raise ValueError("this transcoder's cfg.json has no hook_name: its input hook is unknown")
    return sae.cfg.hook_name


def _total(values: Tensor) -> float:
    """Sum in float64 (the sums run over all evaluated tokens)."""
    return float(values.double().sum())


def _log_probs(lm: LanguageModel, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """float32 log-softmax (computed in place) and logsumexp of the logits of final hidden
    states (rows, d)."""
    logits = head_logits(lm.model, hidden).float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    return logits.sub_(lse), lse


class MultiSplicedEvaluator:
    """Streams token batches and accumulates the SPEC §3 metrics of several SAEs at one hook.

    The SAEs share the clean and zero-ablation runs (and the layers before the hook,
    `SharedPrefix`); only the run with x̂ spliced in is per SAE. update() one (batch, seq)
    LongTensor at a time; results() gives each SAE's metrics so far. Memory is bounded by one
    batch: logits are computed for LOGIT_CHUNK_ELEMENTS rows×vocab at a time and dropped.
    With isolate_failures, an SAE whose evaluation raises is recorded in `failed` (index →
    message) and skipped from then on, so the others' results survive.

    update(ids, reference) with the batch's ReferenceBatch (saelab.evals.reference) skips the
    clean and zero-ablation runs. With record_reference (and a linear head), the evaluator
    collects each batch's ReferenceBatch in `reference_batches` as it runs them.
    """

    def __init__(
        self,
        saes: Sequence[SAE],
        lm: LanguageModel,
        hook: str,
        special_ids: list[int] | None = None,
        *,
        isolate_failures: bool = False,
        record_reference: bool = False,
        inputs: Sequence[str] | None = None,
    ) -> None:
        if not saes:
            raise ValueError("MultiSplicedEvaluator needs at least one SAE")
        self.saes = list(saes)
        self.lm = lm
        self.hook = hook
        self.special_ids = special_token_ids(lm.tokenizer) if special_ids is None else special_ids
        self.pad_id = lm.tokenizer.pad_token_id
        self.isolate_failures = isolate_failures
        self.failed: dict[int, str] = {}
        self.tensors = [MetricsAccumulator(sae.cfg.d_sae) for sae in self.saes]
        self.shared_sums = {"ce_clean": 0.0, "ce_zero": 0.0}
        self.sae_sums = [{"ce_sae": 0.0, "kl": 0.0} for _ in self.saes]
        self.n_predictions = 0
        # What each SAE reads: `inputs` when given, else the hook itself or a transcoder's
        # recorded input hook (SPEC §2.6).
        self.reads = list(inputs or [input_hook(sae, hook) for sae in self.saes])
        self._prefix = SharedPrefix(lm.model, hook, [r for r in self.reads if r != hook])
        head = lm.model.get_output_embeddings()
        self._chunk_rows = max(1, LOGIT_CHUNK_ELEMENTS // head.weight.shape[0])
        self.reference_batches: list[ReferenceBatch] | None = (
            [] if record_reference and supports_reference(lm.model) else None
        )
        self._head_weight64: Tensor | None = None  # the head's W in float64, when recording

    def active(self) -> list[int]:
        """Indices of the SAEs still being evaluated (not failed)."""
        return [i for i in range(len(self.saes)) if i not in self.failed]

    def _fail(self, index: int, error: Exception) -> None:
        """Record a failed SAE, or re-raise when failures are not isolated."""
        if not self.isolate_failures:
            raise error
        self.failed[index] = f"{type(error).__name__}: {error}"

    def _splice(self, index: int, x: Tensor, mask: Tensor) -> Tensor:
        """Final hidden states with SAE `index`'s x̂ (a transcoder's ŷ) at the hook; updates its
        tensor metrics, which compare x̂ with the hook's clean activation."""
        sae, read = self.saes[index], self.reads[index]
        source = x if read == self.hook else self._prefix.inputs[read]
        widths = (("d_in", read, source, sae.cfg.d_in), ("d_out", self.hook, x, sae.cfg.out_dim))
        for field, name, have, want in widths:
            if have.shape[-1] != want:
                raise ValueError(
                    f"SAE {field}={want} does not match the width {have.shape[-1]} of hook "
                    f"{name!r} on model {self.lm.name!r}."
                )
        x_in = source[mask].to(sae.device)
        f = sae.encode(x_in)
        x_hat = sae.with_skip(sae.decode(f), x_in)
        target = x_in if read == self.hook else x[mask].to(sae.device)
        self.tensors[index].update(target, f, x_hat)  # SPEC §3 tensor metrics, BOS/EOS/pad excluded
        x_hat = x_hat.to(x.device)
        return self._prefix.replaced(lambda a: _spliced(a, mask, x_hat))

    @torch.inference_mode()
    def update(self, input_ids: Tensor, reference: ReferenceBatch | None = None) -> int:
        """Evaluate one batch of contexts (batch, seq); returns its number of SAE positions.

        reference: the batch's SAE-independent sums (same ids), so only the spliced runs happen.
        """
        ids = input_ids.to(self.lm.device)
        mask = sae_token_mask(ids, self.special_ids)
        if reference is None:
            x, clean = self._prefix.clean(ids)
        else:
            x = self._prefix.prefix(ids)
        spliced: dict[int, Tensor] = {}
        for i in self.active():
            try:
                spliced[i] = self._splice(i, x, mask)
            except Exception as error:  # isolated per SAE when asked, else re-raised
                self._fail(i, error)
        predicted = mask[:, :-1]
        if self.pad_id is not None:
            predicted = predicted & (ids[:, 1:] != self.pad_id)
        targets = ids[:, 1:][predicted]
        spliced_rows = {i: h[:, :-1][predicted] for i, h in spliced.items()}
        if reference is None:
            zero_values = torch.zeros(
                (int(mask.sum()), x.shape[-1]), dtype=x.dtype, device=x.device
            )
            zeroed = self._prefix.replaced(lambda a: _spliced(a, mask, zero_values))
            self._score_batch(
                clean[:, :-1][predicted], zeroed[:, :-1][predicted], spliced_rows, targets, ids
            )
        else:
            self._score_with_reference(spliced_rows, targets, reference)
        self.n_predictions += len(targets)
        return int(mask.sum())

    def _chunks(self, n: int) -> list[slice]:
        """Row slices of at most LOGIT_CHUNK_ELEMENTS logits each."""
        return [slice(start, start + self._chunk_rows) for start in range(0, n, self._chunk_rows)]

    def _score_batch(
        self,
        clean: Tensor,
        zeroed: Tensor,
        spliced: dict[int, Tensor],
        targets: Tensor,
        ids: Tensor,
    ) -> None:
        """Add the CE and KL sums of a batch, a chunk at a time; record its ReferenceBatch."""
        before = (self.shared_sums["ce_clean"], self.shared_sums["ce_zero"])
        offsets, duals = 0.0, []
        for chunk in self._chunks(len(targets)):
            offset, dual = self._score(
                clean[chunk], zeroed[chunk], {i: r[chunk] for i, r in spliced.items()},
                targets[chunk],
            )  # fmt: skip
            offsets += offset
            if dual is not None:
                duals.append(dual)
        if self.reference_batches is not None:
            self.reference_batches.append(
                ReferenceBatch(
                    input_ids=ids,
                    ce_clean=self.shared_sums["ce_clean"] - before[0],
                    ce_zero=self.shared_sums["ce_zero"] - before[1],
                    kl_offset=offsets,
                    clean_dual=torch.cat(duals) if duals else clean.new_zeros(0, 0).double(),
                )
            )

    def _score(
        self, clean: Tensor, zeroed: Tensor, spliced: dict[int, Tensor], targets: Tensor
    ) -> tuple[float, Tensor | None]:
        """Add the CE and KL sums of one chunk of predictions (SPEC §3), in place where possible.

        Returns the chunk's reference part when recording (KL offset, Wᵀp per prediction).
        """
        index = targets[:, None]
        self.shared_sums["ce_zero"] -= _total(_log_probs(self.lm, zeroed)[0].gather(1, index))
        lp_clean = _log_probs(self.lm, clean)[0]
        self.shared_sums["ce_clean"] -= _total(lp_clean.gather(1, index))
        p_clean = lp_clean.exp()
        for i, hidden in spliced.items():
            lp_sae = _log_probs(self.lm, hidden)[0]
            self.sae_sums[i]["ce_sae"] -= _total(lp_sae.gather(1, index))
            # KL(p_clean ‖ p_sae) = Σ_v p_clean · (log p_clean − log p_sae), per position
            log_ratio = torch.sub(lp_clean, lp_sae, out=lp_sae)
            self.sae_sums[i]["kl"] += _total(torch.linalg.vecdot(p_clean, log_ratio))
            del lp_sae, log_ratio
        if self.reference_batches is None:
            return 0.0, None
        head = self.lm.model.get_output_embeddings()
        offset = _total(torch.linalg.vecdot(p_clean, lp_clean))
        if head.bias is not None:
            offset -= _total(p_clean @ head.bias.float())
        if self._head_weight64 is None:
            self._head_weight64 = head.weight.detach().double()
        # Wᵀp in float64: (Wᵀp)·h, the expected logit, is two orders of magnitude larger than
        # KL; with a float32 sum over gemma's vocabulary the cached KL was 3.3e-6 off the
        # three-pass value, in float64 7e-7 (benchmarks/eval_reference.py).
        p64 = p_clean.double()
        return offset, p64 @ self._head_weight64

    def _score_with_reference(
        self, spliced: dict[int, Tensor], targets: Tensor, reference: ReferenceBatch
    ) -> None:
        """CE and KL sums of a batch from its reference (saelab.evals.reference) and the spliced
        runs: KL = (Σ_v p log p − p·b) − (Wᵀp)·h + logsumexp(W h + b) per prediction."""
        if len(reference.clean_dual) != len(targets):
            raise ValueError(
                f"reference batch holds {len(reference.clean_dual)} predictions, this batch "
                f"{len(targets)}: the reference belongs to other tokens"
            )
        self.shared_sums["ce_clean"] += reference.ce_clean
        self.shared_sums["ce_zero"] += reference.ce_zero
        for i in spliced:
            self.sae_sums[i]["kl"] += reference.kl_offset
        for chunk in self._chunks(len(targets)):
            index, dual = targets[chunk][:, None], reference.clean_dual[chunk]
            for i, rows in spliced.items():
                hidden = rows[chunk]
                lp_sae, lse = _log_probs(self.lm, hidden)
                self.sae_sums[i]["ce_sae"] -= _total(lp_sae.gather(1, index))
                del lp_sae
                cross = torch.linalg.vecdot(dual, hidden.double())
                self.sae_sums[i]["kl"] += _total(lse) - _total(cross)

    def model_behavior(self, index: int) -> dict[str, float]:
        """CE clean/SAE/zero, delta LM loss, CE loss recovered and KL of SAE `index` (SPEC §3)."""
        if self.n_predictions == 0:
            raise ValueError(
                "no next-token predictions were evaluated (empty or all-special tokens)"
            )
        n = self.n_predictions
        ce_clean = self.shared_sums["ce_clean"] / n
        ce_zero = self.shared_sums["ce_zero"] / n
        ce_sae = self.sae_sums[index]["ce_sae"] / n
        denominator = ce_zero - ce_clean
        return {
            "ce_clean": ce_clean,
            "ce_sae": ce_sae,
            "ce_zero": ce_zero,
            "delta_lm_loss": ce_sae - ce_clean,
            "ce_loss_recovered": (ce_zero - ce_sae) / denominator if denominator else math.nan,
            "kl": self.sae_sums[index]["kl"] / n,
        }

    def result(self, index: int) -> dict[str, float]:
        """Tensor metrics (saelab.evaluate keys) + model-behaviour metrics + n_predictions."""
        if index in self.failed:
            raise ValueError(f"SAE {index} failed: {self.failed[index]}")
        return {
            **self.tensors[index].result(),
            **self.model_behavior(index),
            "n_predictions": self.n_predictions,
        }

    def results(self) -> list[dict[str, float]]:
        """result(i) of every SAE, in order (raises for a failed SAE)."""
        return [self.result(i) for i in range(len(self.saes))]


class SplicedEvaluator(MultiSplicedEvaluator):
    """The single-SAE case of MultiSplicedEvaluator (same passes, same numbers)."""

    def __init__(
        self,
        sae: SAE,
        lm: LanguageModel,
        hook: str,
        special_ids: list[int] | None = None,
        *,
        record_reference: bool = False,
        input_hook: str | None = None,
    ) -> None:
        inputs = None if input_hook is None else [input_hook]
        super().__init__(
            [sae], lm, hook, special_ids, record_reference=record_reference, inputs=inputs
        )
        self.sae = sae
        self.tensor = self.tensors[0]

    def result(self, index: int = 0) -> dict[str, float]:
        """Tensor metrics + model-behaviour metrics + n_predictions of the SAE."""
        return super().result(index)


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
