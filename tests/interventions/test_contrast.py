"""Contrastive latent ranking: planted latents first; statistics against scipy/brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.interventions.contrast import (
    average_ranks,
    benjamini_hochberg,
    mann_whitney,
    rank_contrast,
)
from saelab.interventions.documents import (
    document_activations,
    snippet,
    tokenize_documents,
    top_examples,
)
from saelab.interventions.prompt import sae_codes

HOOK = "blocks.1.hook_resid_post"


def _sparse(n: int, d: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Non-negative document scores: each latent fires with probability `rate`."""
    fires = torch.rand(n, d, generator=generator) < rate
    return torch.rand(n, d, generator=generator).mul(3) * fires


def _planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Background latents firing equally in both corpora, plus three positive-specific ones
    (firing on 90/80/70 % of positive documents, 4/6/8 % of negative ones, weakly) and one
    negative-specific latent (5)."""
    g = torch.Generator().manual_seed(seed)
    d = 300
    pos, neg = _sparse(40, d, 0.2, g), _sparse(50, d, 0.2, g)
    planted = [17, 123, 250]
    for rank, latent in enumerate(planted):
        fires = torch.arange(40) < 36 - 4 * rank
        pos[:, latent] = fires * (2 + torch.rand(40, generator=g))
        neg[:, latent] = (torch.arange(50) < 2 + rank) * torch.rand(50, generator=g)
    neg[:, 5] = 4.0
    return pos, neg, planted


@pytest.mark.parametrize("rank_by", ["auroc", "freq_diff", "ratio"])
def test_planted_positive_latents_rank_first(rank_by):
    pos, neg, planted = _planted()
    rows = rank_contrast(pos, neg, top=10, rank_by=rank_by)
    assert sorted(row.latent for row in rows[:3]) == planted
    assert 5 not in [row.latent for row in rows]
    if rank_by != "ratio":  # by separation: most frequent planted latent first
        assert [row.latent for row in rows[:3]] == planted
    assert all(row.q_value < 1e-6 for row in rows[:3])
    assert rows[3].q_value > 1e-3
    with pytest.raises(ValueError, match="valid: auroc, freq_diff, ratio"):
        rank_contrast(pos, neg, rank_by="p")


def test_excluded_latents_are_neither_ranked_nor_counted_in_q_values():
    pos, neg, planted = _planted()
    pos[:, 40], neg[:, 40] = 5.0, 1.0  # fires on every document of both, higher on A
    assert rank_contrast(pos, neg, top=1)[0].latent == 40
    exclude = torch.zeros(pos.shape[1], dtype=torch.bool)
    exclude[[40, planted[0]]] = True
    rows = rank_contrast(pos, neg, top=pos.shape[1], exclude=exclude)
    assert [row.latent for row in rows[:2]] == planted[1:]
    assert {40, planted[0]}.isdisjoint(row.latent for row in rows)
    _, p = mann_whitney(pos, neg)
    tested = ((pos > 0).any(0) | (neg > 0).any(0)) & ~exclude
    q = torch.ones_like(p)
    q[tested] = benjamini_hochberg(p[tested])
    assert [row.q_value for row in rows] == pytest.approx([q[row.latent].item() for row in rows])
    assert int(tested.sum()) == pos.shape[1] - 2  # every latent fires somewhere here


def test_statistics_match_brute_force_and_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    pos, neg = _sparse(23, 40, 0.4, g), _sparse(31, 40, 0.3, g)
    pos[:, 0] = neg[:, 0].max() + 1  # perfectly separated
    pos[:, 1], neg[:, 1] = 1.0, 1.0  # all tied
    pos[:, 2] = neg[:, 2] = 0  # never fires
    rows = {row.latent: row for row in rank_contrast(pos, neg, top=40)}
    u, p = mann_whitney(pos, neg)
    for i in range(40):
        a, b = pos[:, i].double().numpy(), neg[:, i].double().numpy()
        pairs = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
        assert u[i].item() / (23 * 31) == pytest.approx(pairs, abs=1e-12)
        if i in (1, 2):
            assert p[i] == 1.0
            continue
        ref = stats.mannwhitneyu(a, b, alternative="greater", method="asymptotic")
        assert u[i].item() == pytest.approx(ref.statistic)
        assert p[i].item() == pytest.approx(ref.pvalue, rel=1e-9)
        if i in rows:
            assert rows[i].auroc == pytest.approx(pairs)
            assert rows[i].freq_pos == pytest.approx((a > 0).mean())
            assert rows[i].freq_diff == pytest.approx((a > 0).mean() - (b > 0).mean())
            assert rows[i].mean_pos == pytest.approx(a.mean())
    assert 2 not in rows  # never fires on a positive document: not a candidate
    assert rows[0].auroc == 1.0 and rows[1].auroc == 0.5


def test_average_ranks_and_benjamini_hochberg_against_references():
    stats = pytest.importorskip("scipy.stats")
    values = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, 2.0], [2.0, 1.0]])
    expected = np.stack([stats.rankdata(values[:, j]) for j in range(2)], axis=1)
    np.testing.assert_allclose(average_ranks(values).numpy(), expected)
    p = torch.tensor([0.01, 0.04, 0.03, 0.5, 0.02], dtype=torch.float64)
    m = 5  # q_(i) = min_{j ≥ i} p_(j)·m/j in sorted order
    ordered = np.sort(p.numpy())
    q_sorted = np.minimum.accumulate((ordered * m / np.arange(1, m + 1))[::-1])[::-1]
    expected_q = q_sorted[np.argsort(np.argsort(p.numpy()))]
    np.testing.assert_allclose(benjamini_hochberg(p).numpy(), expected_q)
    np.testing.assert_allclose(
        benjamini_hochberg(p).numpy(), stats.false_discovery_control(p.numpy())
    )


def test_document_maxima_ignore_padding_and_bos(tiny_lm, sae):
    texts = ["def f(x):\n    return x", "import os", "class A:\n    pass\n\n# done here"]
    tokens = tokenize_documents(tiny_lm, texts, context_size=64)
    batched = document_activations(tiny_lm, sae, HOOK, tokens, batch_size=3)
    fired_tokens = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for n, ids in enumerate(tokens):
        codes = sae_codes(tiny_lm, sae, HOOK, torch.tensor([ids]))[0, 1:]  # drop BOS
        fired_tokens += (codes > 0).sum(dim=0)
        values, where = codes.max(dim=0)
        torch.testing.assert_close(batched.maxima[n], values, rtol=1e-5, atol=1e-5)
        fired = values > 0
        assert torch.equal(batched.argmax[n][fired].long(), where[fired] + 1)
    assert batched.n_scored == sum(len(ids) - 1 for ids in tokens)
    assert torch.equal(batched.fired, fired_tokens) and fired_tokens.sum() > 0
    torch.testing.assert_close(batched.frequency(), fired_tokens.double() / batched.n_scored)
    truncated = tokenize_documents(tiny_lm, texts, context_size=3)
    assert [len(ids) for ids in truncated] == [3, 3, 3]


def test_top_examples_mark_the_peak_token(tiny_lm, sae):
    texts = ["def f(x):\n    return x", "import os", "class A:\n    pass"]
    docs = document_activations(tiny_lm, sae, HOOK, tokenize_documents(tiny_lm, texts, 64))
    latent = int(docs.maxima.sum(0).argmax())
    examples = top_examples(tiny_lm.tokenizer, docs, latent, n=2)
    order = docs.maxima[:, latent].argsort(descending=True)[:2].tolist()
    assert [e["document"] for e in examples] == order
    first = examples[0]
    peak = int(docs.argmax[first["document"], latent])
    token = tiny_lm.tokenizer.decode([docs.tokens[first["document"]][peak]])
    assert f"«{token}»" in first["text"]
    assert first["activation"] == pytest.approx(float(docs.maxima[first["document"], latent]))
    ids = tiny_lm.tokenizer("abc def ghi", add_special_tokens=False)["input_ids"]
    assert snippet(tiny_lm.tokenizer, [1, *ids], 1, window=0).startswith("«")
