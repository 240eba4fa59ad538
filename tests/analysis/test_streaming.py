"""The bounded streaming buffers against brute force: top-k, reservoir, histograms, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.analysis.accumulator import AnalysisConfig, FeatureAccumulator
from saelab.analysis.buffers import PAD_TOKEN
from saelab.analysis.histograms import LatentHistograms


def _sparse_batches(n_batches: int, batch: int, seq: int, d_sae: int, seed: int = 0):
    """Random (ids, f, mask) batches: ~5% of entries fire, BOS at position 0 masked out."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        ids = torch.randint(3, 500, (batch, seq), generator=g)
        ids[:, 0] = 1
        f = torch.rand(batch, seq, d_sae, generator=g) * (
            torch.rand(batch, seq, d_sae, generator=g) < 0.05
        )
        yield ids, f, ids != 1


def test_top_k_examples_equal_brute_force_with_windows():
    d_sae, window, k = 16, 3, 5
    batches = list(_sparse_batches(6, 4, 20, d_sae))
    acc = FeatureAccumulator(d_sae, AnalysisConfig(top_k=k, window=window), torch.device("cpu"))
    for ids, f, mask in batches:
        acc.update(ids, f, mask)
    top = acc.top.sorted()
    ids = torch.cat([b[0] for b in batches])
    f = torch.cat([b[1] * b[2][..., None] for b in batches])
    seq = ids.shape[1]
    for latent in range(d_sae):
        values = f[..., latent].flatten()
        order = values.argsort(descending=True)[:k]
        assert torch.allclose(top.value[latent], values[order])
        for slot, flat in enumerate(order.tolist()):
            ctx, pos = divmod(flat, seq)
            assert top.where[latent, slot].tolist() == [ctx, pos]
            lo, hi = max(pos - window, 0), min(pos + window + 1, seq)
            tokens = top.tokens[latent, slot]
            kept = tokens[tokens != PAD_TOKEN]
            assert kept.tolist() == ids[ctx, lo:hi].tolist()
            acts = top.acts[latent, slot][tokens != PAD_TOKEN]
            assert torch.allclose(acts, f[ctx, lo:hi, latent])


def test_statistics_equal_numpy():
    d_sae = 8
    batches = list(_sparse_batches(5, 3, 16, d_sae, seed=1))
    acc = FeatureAccumulator(d_sae, AnalysisConfig(), torch.device("cpu"))
    for ids, f, mask in batches:
        acc.update(ids, f, mask)
    f = np.concatenate([b[1][b[2]].numpy() for b in batches])  # (tokens, d_sae), BOS excluded
    assert acc.n_tokens == len(f)
    np.testing.assert_allclose(acc.frequency().numpy(), (f > 0).mean(0))
    np.testing.assert_allclose(acc.max_act.numpy(), f.max(0), rtol=1e-6)
    mean_when_firing = f.sum(0) / np.maximum((f > 0).sum(0), 1)
    np.testing.assert_allclose(acc.mean_activation().numpy(), mean_when_firing, rtol=1e-5)
    np.testing.assert_array_equal(
        acc.l0_counts.numpy()[: d_sae + 1], np.bincount((f > 0).sum(1), minlength=d_sae + 1)
    )


def test_histograms_grow_exactly_and_match_numpy():
    hist = LatentHistograms(2, 8, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    all_values = [[], []]
    for scale in (0.3, 1.0, 5.0, 0.1, 40.0):  # the range has to double several times
        values = torch.rand(50, generator=g) * scale + 1e-3
        latents = torch.randint(0, 2, (50,), generator=g)
        hist.update(latents, values)
        for lat in (0, 1):
            all_values[lat] += values[latents == lat].tolist()
    for lat in (0, 1):
        edges = np.array(hist.edges(lat))
        assert edges[-1] >= max(all_values[lat]) > edges[-1] / 2
        expected, _ = np.histogram(all_values[lat], bins=edges)
        np.testing.assert_array_equal(hist.counts[lat].numpy(), expected)


def test_reservoir_is_a_uniform_sample_of_firing_events():
    d_sae, size, runs = 1, 10, 200
    counts = torch.zeros(200)
    f = torch.ones(5, 40, 1)  # 200 firing events, 40 per batch
    ids = torch.arange(200).reshape(5, 40) + 10
    for seed in range(runs):
        acc = FeatureAccumulator(
            d_sae, AnalysisConfig(reservoir=size, seed=seed), torch.device("cpu")
        )
        for b in range(5):
            acc.update(ids[b : b + 1], f[b : b + 1], torch.ones(1, 40, dtype=torch.bool))
        ctx, pos = acc.reservoir.where[0].T
        counts[ctx * 40 + pos] += 1
    # Each event is kept with probability size / 200 = 5%: 10 expected of 200 runs.
    assert counts.sum() == runs * size
    assert counts.min() >= 1 and counts.max() <= 25
    assert counts[:100].sum() / counts.sum() == pytest.approx(0.5, abs=0.06)


@pytest.mark.slow
def test_memory_stays_bounded_over_200k_tokens():
    """The state is the same size after 20k and 200k tokens, far below all activations."""
    d_sae, batch, seq = 64, 16, 250
    sizes = {}
    for n_tokens in (20_000, 200_000):
        acc = FeatureAccumulator(d_sae, AnalysisConfig(), torch.device("cpu"))
        for ids, f, mask in _sparse_batches(n_tokens // (batch * seq), batch, seq, d_sae):
            acc.update(ids, f, torch.ones_like(mask))
        assert acc.n_tokens == n_tokens
        sizes[n_tokens] = acc.nbytes()
    all_activations = 200_000 * d_sae * 4
    assert sizes[20_000] == sizes[200_000]
    assert sizes[200_000] < all_activations / 10
