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

pytestmark = [pytest.mark.gemma, pytest.mark.slow]


def test_saelab_eval_on_gemma_8k_tokens(gemma_sae, tmp_path, capsys):
    path = gemma_sae.save(tmp_path / "sae")
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
            f"\n`saelab eval` on gemma-3-270m {gemma_sae.cfg.hook_name}: {report['n_tokens']:,} tokens in "
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
