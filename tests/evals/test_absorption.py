"""First-letter feature absorption (SPEC §3, SAEBench's metric): prompts, probes against scipy,
every number against a brute-force reference on a tiny model, and a planted absorber found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor

import saelab
from saelab.evals import absorption as ab
from saelab.evals.absorption import LETTERS, LetterSet

HOOK = "blocks.1.hook_resid_post"


def test_prompts_end_at_the_word_after_examples_of_its_own_split(tiny_lm):
    tokenizer = tiny_lm.tokenizer
    prompts, words, train = ab.letter_prompts(tokenizer, 1000, seed=0)
    vocabulary = dict(ab.alphabetic_tokens(tokenizer))
    assert len(prompts) == len(vocabulary) == len(set(words))
    assert sum(train) == int(ab.TRAIN_FRACTION * len(words))
    split = {w: t for w, t in zip(words, train, strict=True)}
    for ids, word in zip(prompts, words, strict=True):
        assert ids[0] == tokenizer.bos_token_id and vocabulary[ids[-1]] == word
        lines = tokenizer.decode(ids[1:-1]).split("\n")
        assert lines[-1] == "" and len(lines) == ab.ICL_EXAMPLES + 1
        for line in lines[:-1]:
            example, answer = line.split(" has the first letter: ")
            assert answer == example.strip()[0].upper() and example != word
            assert split[example] == split[word]
    assert ab.letter_prompts(tokenizer, 1000, seed=0) == (prompts, words, train)


def test_a_tokenizer_without_enough_words_is_a_clear_error():
    class Few:
        all_special_ids = (0,)
        bos_token_id = 0

        def get_vocab(self):
            return {"<bos>": 0, "a": 1, "b": 2}

        def batch_decode(self, ids):
            return [{1: "a", 2: "b"}[i[0]] for i in ids]

    with pytest.raises(ValueError, match="has 2 alphabetic tokens; the first-letter task needs"):
        ab.letter_prompts(Few(), 100, seed=0)


def test_too_few_words_for_the_in_context_examples_is_a_clear_error(tiny_lm):
    with pytest.raises(ValueError, match=r"--absorption-words 50 is too few: .* at least 51"):
        ab.letter_prompts(tiny_lm.tokenizer, 50, seed=0)
    assert len(ab.letter_prompts(tiny_lm.tokenizer, 51, seed=0)[0]) == 51  # 40 + 11


def _reference_letter_probe(z: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """scipy L-BFGS-B on one letter's objective: mean pos-weighted log-loss + (l2/2)‖w‖²."""
    pos_weight = (len(y) - y.sum()) / y.sum()

    def objective(theta):
        w, b = theta[:-1], theta[-1]
        s = z @ w + b
        weight = np.where(y > 0.5, pos_weight, 1.0)
        loss = np.mean(weight * np.logaddexp(0, -s) * y + np.logaddexp(0, s) * (1 - y))
        p = 1 / (1 + np.exp(-s))
        r = (pos_weight * y * (p - 1) + (1 - y) * p) / len(y)
        return loss + 0.5 * l2 * w @ w, np.append(z.T @ r + l2 * w, r.sum())

    res = minimize(objective, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})  # fmt: skip
    return res.x


def test_letter_probes_equal_scipy():
    g = torch.Generator().manual_seed(0)
    letters = torch.arange(600) % 4  # a, b, c, d
    centres = torch.randn(4, 12, generator=g) * 2
    x = 40 + 10 * (centres[letters] + 1.5 * torch.randn(600, 12, generator=g))
    W, b = ab.fit_letter_probes(x, letters)
    xd = x.double().numpy()
    mean = xd.mean(0)
    scale = np.sqrt(((xd - mean) ** 2).mean())
    for c in range(4):
        theta = _reference_letter_probe((xd - mean) / scale, (letters == c).double().numpy(), 1e-4)
        w_ref = theta[:-1] / scale
        np.testing.assert_allclose(W[c].numpy(), w_ref, rtol=1e-5, atol=1e-7)
        assert float(b[c]) == pytest.approx(theta[-1] - w_ref @ mean, abs=1e-5)
    assert W.shape == (26, 12) and W[4:].abs().max() < 1e-12  # letters without words: no probe


@pytest.fixture(scope="module")
def letter_set(tiny_lm) -> LetterSet:
    return ab.build_letter_set(tiny_lm, HOOK, words=1000, seed=0, batch_size=7)


def test_letter_set_reads_each_word_at_its_position(tiny_lm, letter_set):
    prompts, words, train = ab.letter_prompts(tiny_lm.tokenizer, 1000, seed=0)
    assert letter_set.words == words and letter_set.train.tolist() == train
    for i in (0, 100, len(prompts) - 1):
        acts = tiny_lm.activations(torch.tensor([prompts[i]]), HOOK)[HOOK][0, -1]
        torch.testing.assert_close(letter_set.activations[i], acts, rtol=1e-5, atol=1e-5)
        assert LETTERS[int(letter_set.letters[i])] == words[i].strip()[0].lower()


def _reference_balanced_fit(x: np.ndarray, y: np.ndarray, l2: float):
    """scipy on fit_logistic(balanced=True)'s objective, standardised x."""
    mean, std = x.mean(0), np.maximum(x.std(0, ddof=1), 1e-8)
    z = (x - mean) / std
    weight = len(y) / 2 * (y / max(y.sum(), 1) + (1 - y) / max(len(y) - y.sum(), 1))

    def objective(theta):
        w, b = theta[:-1], theta[-1]
        s = z @ w + b
        loss = np.mean(weight * (np.logaddexp(0, s) - y * s)) + 0.5 * l2 * w @ w
        r = weight * (1 / (1 + np.exp(-s)) - y) / len(y)
        return loss, np.append(z.T @ r + l2 * w, r.sum())

    res = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})  # fmt: skip
    return lambda xs: ((xs - mean) / std) @ res.x[:-1] + res.x[-1] > 0


def _reference_f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _reference_word(x_proj, proj, cos, main, f):
    """SAEBench's per-word rules, written out one latent at a time."""
    main_proj = sum(proj[i] for i in main)
    others = [proj[i] for i in range(len(proj)) if i not in main and cos[i] >= 0.1 and proj[i] > 0]
    top3 = sum(sorted(others, reverse=True)[:3])
    if main_proj >= x_proj or x_proj <= 0 or top3 / x_proj < 0.4:
        fraction = 0.0
    elif main_proj <= 0:
        fraction = 1.0
    else:
        absorbed = min(top3, x_proj - main_proj)
        fraction = float(np.clip(absorbed / (absorbed + main_proj), 0, 1))
    top = max(range(len(proj)), key=lambda i: (proj[i], -i))
    full = (
        all(f[i] < 1e-8 for i in main)
        and cos[top] >= 0.025
        and x_proj > 0
        and proj[top] / x_proj >= 0.4
    )
    return fraction, full


def test_absorption_equals_a_brute_force_reference(letter_set):
    # A random tiny model cannot spell: give its activations a direction per first letter.
    g = torch.Generator().manual_seed(1)
    acts = letter_set.activations
    directions = torch.randn(26, acts.shape[1], generator=g) * acts.std()
    letter_set = LetterSet(
        acts + directions[letter_set.letters], letter_set.letters, letter_set.words,
        letter_set.train,
    )  # fmt: skip
    sae = saelab.create_sae("topk", 64, 256, k=8, seed=0)
    with torch.no_grad():
        result = ab.absorption(sae.encode, sae.W_dec, letter_set, min_probe_f1=0, min_positives=1)
        f = sae.encode(letter_set.activations).double().numpy()
    train = letter_set.train.numpy()
    x, letters = letter_set.activations.double().numpy(), letter_set.letters.numpy()
    train_t = letter_set.train
    fit = ab.fit_letter_probes(letter_set.activations[train_t], letter_set.letters[train_t])
    W, b = (t.numpy() for t in fit)
    decoder = sae.W_dec.detach().double().numpy()
    assert result["words"] == len(x) and result["test"] == int((~train).sum())
    checked, seen = 0, []
    for c, letter in enumerate(LETTERS):
        y_train, y_test = letters[train] == c, letters[~train] == c
        if not y_train.any() or not y_test.any():
            assert letter not in result["letters"]
            continue
        row = result["letters"][letter]
        detected = x[~train] @ W[c] + b[c] > 0
        assert row["probe_f1"] == pytest.approx(_reference_f1(detected, y_test))
        diff = f[train][y_train].mean(0) - f[train][~y_train].mean(0)
        order = np.argsort(-diff, kind="stable")
        main, best = [], -np.inf
        for k in range(1, 11):
            predict = _reference_balanced_fit(f[train][:, order[:k]], y_train.astype(float), 1e-3)
            score = _reference_f1(predict(f[~train][:, order[:k]]), y_test)
            assert row["k_sparse_f1"][k - 1] == pytest.approx(score, abs=2 / len(y_test))
            if score <= best + 0.03:
                break
            best, main = score, order[:k].tolist()
        assert row["main_latents"] == main
        p = W[c] / np.linalg.norm(W[c])
        along = decoder @ p
        cos = along / np.linalg.norm(decoder, axis=1)
        fractions, full = [], 0
        for i in np.flatnonzero(y_test & detected):
            fi = f[~train][i]
            fraction, is_full = _reference_word(x[~train][i] @ p, fi * along, cos, main, fi)
            fractions.append(fraction)
            full += is_full
        assert row["positives"] == len(fractions)
        seen += fractions
        if fractions:
            checked += 1
            assert row["mean_absorption_fraction"] == pytest.approx(np.mean(fractions), abs=1e-9)
            assert row["full_absorption_rate"] == pytest.approx(full / len(fractions))
    assert checked >= 15
    # Every branch of the per-word rule was taken: none, partial and whole absorption.
    assert 0 in seen and 1 in seen and any(0 < v < 1 for v in seen), seen
    scored = [r for r in result["letters"].values() if r["evaluated"]]
    assert result["mean"]["letters"] == len(scored) == checked
    assert result["mean"]["absorption_fraction"] == pytest.approx(
        np.mean([r["mean_absorption_fraction"] for r in scored])
    )


def _planted(absorbed_words: int) -> tuple[LetterSet, callable, Tensor]:
    """26 letters with orthonormal directions e_c (x = 2e_c + noise), 40 test words each. In the
    test split, `absorbed_words` words of "a" also carry a token feature u_j, and the SAE reads
    them with a token latent whose decoder is (e_a + u_j)/√2 while the "a" latent stays silent."""
    g = torch.Generator().manual_seed(0)
    d, per_train, per_test = 40, 120, 40
    letters = torch.arange(26).repeat(per_train + per_test)
    train = torch.arange(len(letters)) < 26 * per_train
    x = 2 * torch.eye(d)[letters] + 0.1 * torch.randn(len(letters), d, generator=g)
    a_test = ((letters == 0) & ~train).nonzero().squeeze(1)[:absorbed_words]
    for j, row in enumerate(a_test.tolist()):
        x[row, 26 + j] += 2
    W_dec = torch.zeros(26 + absorbed_words, d)
    W_dec[:26, :26] = torch.eye(26)
    for j in range(absorbed_words):
        W_dec[26 + j, 0] = W_dec[26 + j, 26 + j] = 1 / math.sqrt(2)

    def encode(acts: Tensor) -> Tensor:
        token = acts[:, 26 : 26 + absorbed_words]
        f = torch.cat([acts[:, :26].clamp_min(0), (token > 1) * token * math.sqrt(2)], dim=1)
        f[:, 0] *= ~(token > 1).any(1)
        return f

    words = [f"w{i}" for i in range(len(letters))]
    return LetterSet(x, letters, words, train), encode, W_dec


def test_a_planted_absorber_is_found_and_nothing_else():
    data, encode, W_dec = _planted(absorbed_words=4)
    result = ab.absorption(encode, W_dec, data)
    a = result["letters"]["a"]
    assert a["probe_f1"] == 1.0 and a["positives"] == 40 and a["main_latents"] == [0]
    assert a["mean_absorption_fraction"] == pytest.approx(4 / 40)
    assert a["full_absorption_rate"] == pytest.approx(4 / 40)
    for letter in LETTERS[1:]:
        row = result["letters"][letter]
        assert row["main_latents"] == [LETTERS.index(letter)] and row["evaluated"]
        assert row["mean_absorption_fraction"] == 0 and row["full_absorption_rate"] == 0
    assert result["mean"]["letters"] == 26
    assert result["mean"]["absorption_fraction"] == pytest.approx(0.1 / 26)
    assert result["mean"]["main_latents"] == 1


def test_a_letter_split_over_two_latents_counts_both_as_main():
    """Half of the "b" words fire a second "b" latent instead: feature splitting, found by the
    F1 jump at k = 2, and not absorption."""
    data, encode, W_dec = _planted(absorbed_words=0)
    b_words = data.letters == 1
    half = b_words & (b_words.cumsum(0) % 2 == 0)
    W_dec = torch.cat([W_dec, W_dec[1:2]])

    def split(acts: Tensor) -> Tensor:
        f = encode(acts)
        second = f[:, 1] * half_of(acts)
        return torch.cat([f[:, :1], f[:, 1:2] - second[:, None], f[:, 2:], second[:, None]], 1)

    rows = {tuple(r.tolist()): bool(h) for r, h in zip(data.activations, half, strict=True)}

    def half_of(acts: Tensor) -> Tensor:
        return torch.tensor([rows[tuple(r.tolist())] for r in acts], dtype=acts.dtype)

    result = ab.absorption(split, W_dec, data)
    b = result["letters"]["b"]
    assert sorted(b["main_latents"]) == [1, 26] and b["k_sparse_f1"][1] == 1.0, b
    assert b["mean_absorption_fraction"] == 0 and b["full_absorption_rate"] == 0
    assert result["mean"]["main_latents"] == pytest.approx(27 / 26)
