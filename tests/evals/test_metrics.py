"""SPEC §3 tensor metrics equal direct numpy computations of their definitions."""

import numpy as np
import pytest
import torch

import saelab
from saelab.evals.toy import SyntheticDictionary, mmcs


class FixedSAE(saelab.SAE):
    """A "SAE" whose encode/decode return given arrays, to test the metrics alone."""

    architecture = "fixed"

    def __init__(self, f, x_hat):
        super().__init__(saelab.SAEConfig("jumprelu", x_hat.shape[1], f.shape[1]))
        self.f, self.x_hat, self.row = f, x_hat, 0

    def encode(self, x):
        out = self.f[self.row : self.row + len(x)]
        self.x_hat_batch = self.x_hat[self.row : self.row + len(x)]
        self.row += len(x)
        return out

    def decode(self, f):
        return self.x_hat_batch

    def train_forward(self, x, sparsity_coefficient, dead_mask=None):
        raise AssertionError("not used")


def numpy_metrics(x, f, x_hat):
    err = ((x - x_hat) ** 2).sum(1)
    freq = (f != 0).mean(0)
    cos = (x * x_hat).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1))
    fvu = err.sum() / ((x - x.mean(0)) ** 2).sum()
    return {
        "l0": (f != 0).sum(1).mean(),
        "l1": np.abs(f).sum(1).mean(),
        "mse": err.mean(),
        "mse_per_element": ((x - x_hat) ** 2).mean(),
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "cosine": cos.mean(),
        "shrinkage": (x_hat**2).sum(1).mean() / (x_hat * x).sum(1).mean(),
        "dead_fraction": (freq == 0).mean(),
        "dense_fraction": (freq > 0.1).mean(),
    }


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_metrics_equal_numpy(batch_size):
    rng = np.random.default_rng(0)
    n, d, m = 300, 12, 40
    x = rng.normal(size=(n, d)) + 3.0  # a non-zero mean: FVU must use variance about the mean
    f = np.maximum(rng.normal(size=(n, m)) - 1.0, 0)
    f[:, :5] = 0  # dead latents
    f[:, 5:8] = rng.uniform(0.5, 1, size=(n, 3))  # dense latents
    x_hat = x + 0.3 * rng.normal(size=(n, d)) - 0.2
    sae = FixedSAE(torch.tensor(f), torch.tensor(x_hat))
    got = saelab.evaluate(sae, torch.tensor(x), batch_size=batch_size)
    want = numpy_metrics(x, f, x_hat)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert got["n_tokens"] == n
    # Variance about zero would give a very different (wrong) FVU on this data.
    assert got["fvu"] > 2 * (((x - x_hat) ** 2).sum() / (x**2).sum())


def test_evaluate_streams_an_iterable_of_batches():
    sae = saelab.create_sae("topk", 8, 32, k=4, seed=0)
    x = torch.randn(500, 8)
    whole = saelab.evaluate(sae, x)
    streamed = saelab.evaluate(sae, iter(x.split(37)))
    for key in whole:
        assert streamed[key] == pytest.approx(whole[key], rel=1e-9), key


def test_mmcs_of_the_true_dictionary_is_one_and_random_is_low():
    toy = SyntheticDictionary(d=64, m=256)
    assert mmcs(toy.features, toy.features) == pytest.approx(1.0)
    assert mmcs(toy.features, torch.randn(512, 64)) < 0.6
    shuffled = toy.features[torch.randperm(256)] * 3.0
    assert mmcs(toy.features, shuffled) == pytest.approx(1.0)


def test_gemma_scope_npz_metrics_equal_numpy(tmp_path):
    """evaluate() on a loaded params.npz equals numpy metrics of its JumpReLU encode/decode."""
    rng = np.random.default_rng(1)
    d, m = 16, 40
    params = {
        "W_enc": rng.normal(size=(d, m)).astype(np.float32) / 4,
        "W_dec": rng.normal(size=(m, d)).astype(np.float32) / 4,
        "b_enc": rng.normal(size=m).astype(np.float32) / 4,
        "b_dec": rng.normal(size=d).astype(np.float32),
        "threshold": rng.uniform(0.1, 1.0, size=m).astype(np.float32),
    }
    params["threshold"][:4] = 100.0  # dead latents
    np.savez(tmp_path / "params.npz", **params)
    sae = saelab.load_sae(tmp_path / "params.npz")
    x = (rng.normal(size=(300, d)) + 1.0).astype(np.float32)
    pre = x.astype(np.float64) @ params["W_enc"] + params["b_enc"]
    f = pre * (pre > params["threshold"])
    x_hat = f @ params["W_dec"] + params["b_dec"]
    got = saelab.evaluate(sae, torch.from_numpy(x), batch_size=64)
    want = numpy_metrics(x.astype(np.float64), f, x_hat)
    assert 0 < want["dead_fraction"] < 1 and want["l0"] > 1
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
