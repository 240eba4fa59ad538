"""Sparse probing (SPEC §3): Python-token labels, and every number against a brute-force
numpy/scipy reference on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import saelab
from saelab.data.corpora import stdlib_files
from saelab.evals import probing
from saelab.evals.probing import KINDS, ProbingSet

HOOK = "blocks.1.hook_resid_post"


def test_tokens_are_labelled_by_the_python_token_of_their_first_visible_character():
    text = "if x == 10:  # done\n    y = 'a b'\n"
    words = ["if", " x", " ==", " 10", ":", "  #", " done", "\n", "    y", " =", " 'a", " b'", "\n"]
    offsets, at = [], 0
    for w in words:
        offsets.append((at, at + len(w)))
        at += len(w)
    assert at == len(text)
    names = [KINDS[i] if i >= 0 else None for i in probing.label_tokens(text, offsets)]
    assert names == [
        "keyword", "name", "operator", "number", "operator", "comment", "comment", None,
        "name", "operator", "string", "string", None,
    ]  # fmt: skip
    # Source that stops tokenising keeps the labels before the error.
    unclosed = probing.label_tokens("x = (\n", [(0, 1), (1, 3), (3, 5)])
    assert unclosed[:2] == [KINDS.index("name"), KINDS.index("operator")]


def _reference_fit(
    x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """scipy L-BFGS-B on the same objective: mean log-loss + (l2/2)‖w‖², standardised x."""
    mean, std = x.mean(0), np.maximum(x.std(0, ddof=1), 1e-8)
    z = (x - mean) / std

    def objective(theta):
        w, b = theta[:-1], theta[-1]
        logits = z @ w + b
        loss = np.mean(np.logaddexp(0, logits) - y * logits) + 0.5 * probing.L2 * w @ w
        p = 1 / (1 + np.exp(-logits))
        grad = np.append(z.T @ (p - y) / len(y) + probing.L2 * w, np.mean(p - y))
        return loss, grad

    res = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})  # fmt: skip
    return res.x[:-1], res.x[-1], mean, std


def _reference_accuracy(x, y, fit) -> float:
    w, b, mean, std = fit
    return float(np.mean((((x - mean) / std) @ w + b > 0) == (y > 0.5)))


def test_logistic_probe_equals_scipy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g) * torch.tensor([1.0, 3.0, 0.1, 1.0, 2.0, 1.0])
    y = ((x[:, 0] - 0.5 * x[:, 1] + 0.3 * torch.randn(400, generator=g)) > 0).double()
    w, b, _, _ = probing.fit_logistic(x, y)
    w_ref, b_ref, _, _ = _reference_fit(x.double().numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-5, atol=1e-6)
    assert float(b) == pytest.approx(b_ref, abs=1e-6)


@pytest.fixture(scope="module")
def probing_set(tiny_lm) -> ProbingSet:
    documents = (path.read_text() for path in stdlib_files()[:40])
    return probing.build_probing_set(tiny_lm, HOOK, documents, tokens=3000, context_size=64)


def test_probing_set_labels_every_kind(probing_set):
    assert probing_set.activations.shape == (3000, 64)
    counts = torch.bincount(probing_set.labels, minlength=len(KINDS))
    assert (counts > 20).all(), dict(zip(KINDS, counts.tolist(), strict=True))


def test_sparse_probing_equals_a_brute_force_reference(probing_set):
    sae = saelab.create_sae("topk", 64, 256, k=16, seed=0)
    with torch.no_grad():
        results = probing.sparse_probing(sae.encode, probing_set, ks=(1, 2, 5), seed=3)
        f = sae.encode(probing_set.activations).double().numpy()
    x = probing_set.activations.double().numpy()
    assert set(results) == {*KINDS, "mean"}
    for kind, name in enumerate(KINDS):
        train, y_train, test, y_test = (
            t.numpy() for t in probing.balanced_split(probing_set.labels, kind, 3)
        )
        dense = _reference_accuracy(x[test], y_test, _reference_fit(x[train], y_train))
        assert results[name]["dense"] == pytest.approx(dense, abs=1.5 / len(test)), name
        diff = np.abs(f[train][y_train > 0.5].mean(0) - f[train][y_train < 0.5].mean(0))
        for k in (1, 2, 5):
            top = np.argsort(-diff, kind="stable")[:k]
            fit = _reference_fit(f[train][:, top], y_train)
            acc = _reference_accuracy(f[test][:, top], y_test, fit)
            # Equal up to a test token on the decision boundary of two solvers of one objective.
            assert results[name][f"k{k}"] == pytest.approx(acc, abs=1.5 / len(test)), (name, k)
    mean_k1 = np.mean([results[name]["k1"] for name in KINDS])
    assert results["mean"]["k1"] == pytest.approx(mean_k1)
