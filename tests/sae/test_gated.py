"""Gated SAE (SPEC §2.3): L0 falls as λ grows and the known dictionary is recovered (issue 15).

One lockstep run of four λ spanning 10× each on a toy dictionary (128 true features in 32 dims,
~5 active per token; width 256, 1M tokens): about 20 s on one CPU core.
"""

import itertools

import pytest
import torch

import saelab
from saelab.evals.toy import SyntheticDictionary, mmcs

LAMBDAS = (0.001, 0.01, 0.1, 1.0)
BUDGET = {"total_tokens": 1_000_000, "batch_size": 1024, "lr": 1e-3, "seed": 0}


@pytest.fixture(scope="module")
def trained():
    """(toy, held-out samples, {λ: SAE trained at λ})."""
    toy = SyntheticDictionary(d=32, m=128, active=5.0, seed=0)
    train_x, eval_x = toy.sample(200_000), toy.sample(20_000)
    saes = [saelab.create_sae("gated", 32, 256, seed=0) for _ in LAMBDAS]
    configs = [saelab.TrainConfig(**BUDGET, sparsity_coefficient=lam) for lam in LAMBDAS]
    # One thread: these matmuls are small, and a second thread on a shared machine only waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        saelab.train(saes, train_x, configs)
    finally:
        torch.set_num_threads(threads)
    return toy, eval_x, dict(zip(LAMBDAS, saes, strict=True))


@pytest.mark.slow
def test_l0_falls_monotonically_with_sparsity_coefficient(trained):
    _, eval_x, saes = trained
    l0 = [saelab.evaluate(sae, eval_x)["l0"] for sae in saes.values()]
    # Measured: 175, 116, 60, 3.5; the RI-L1 variant gave 178, 250, 256 (all), 6.6.
    assert all(a > b for a, b in itertools.pairwise(l0)), f"L0 by λ {LAMBDAS}: {l0}"
    for sae in saes.values():
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))


@pytest.mark.slow
def test_recovers_the_dictionary_with_few_dead_latents(trained):
    toy, eval_x, saes = trained
    sae = saes[1.0]
    with torch.no_grad():
        f = sae.encode(eval_x)
    l0 = float((f > 0).sum(-1).float().mean())
    never_fired = float((f > 0).sum(0).eq(0).float().mean())
    score = mmcs(toy.features, sae.W_dec.detach())
    # Measured: MMCS 0.98, L0 3.5 (true L0 ~5), no latent silent on the held-out samples.
    assert score >= 0.9, f"MMCS {score:.3f}"
    assert 2.0 <= l0 <= 10.0, f"L0 {l0:.2f}"
    assert never_fired <= 0.1, f"{never_fired:.1%} of latents never fire"
