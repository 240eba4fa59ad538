"""Feature absorption on the first-letter task (SPEC §3; Chanin et al. 2024, as SAEBench runs it).

Words are single vocabulary tokens made of ASCII letters. Each is read at its own position in an
in-context prompt ("tartan has the first letter: T" lines, then the word), so the model is
primed to know its first letter. On the training words, a one-vs-rest logistic probe per letter
finds the letter's direction p in the raw activations (the ground truth). For each letter the
"main" latents come from k-sparse probing on the SAE's codes: k grows from 1 while the test F1
rises by more than F1_JUMP (more than one main latent means the letter is split). Then, on every
test word of the letter that the ground-truth probe detects:

- absorption fraction: the share of the probe projection x·p̂ carried by up to MAX_ABSORBERS
  other latents aligned with p (cos ≥ ABSORBER_COS, positive projection) instead of the main
  ones, when those carry at least PROJECTION_SHARE of it (else 0; 1 when the main latents
  project nothing);
- full absorption: every main latent is silent, the latent projecting most onto p has
  cos ≥ FULL_ABSORPTION_COS, and it alone carries at least PROJECTION_SHARE of x·p̂.

A latent's projection is that of its contribution f_i·d_i to the reconstruction, f_i (d_i·p̂),
in the activations' units; SAEBench writes f_i·cos(d_i, p̂), the same for unit-norm decoder rows.
Departure from SAEBench: the k candidate latents per letter are ranked by the difference of
their mean activation on the letter's training words and the others' (the rule of saelab's
sparse probing), not by the weights of an L1-regularised probe trained with Adam: deterministic
and without an optimiser's settings. The probes are L-BFGS fits, so reruns agree exactly.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.evals.probing import fit_logistic
from saelab.evals.reference import KEEP_BYTES, prune_references
from saelab.files import save_safetensors

LETTERS = string.ascii_lowercase
ICL_LINE = "{word} has the first letter: {letter}"
DEFAULT_WORDS = 8000
ICL_EXAMPLES = 10
TRAIN_FRACTION = 0.8
# SAEBench's settings (sae_bench/evals/absorption: eval_config.py and
# feature_absorption_calculator.py).
MAX_K = 10
F1_JUMP = 0.03
MIN_PROBE_F1 = 0.6
MIN_POSITIVES = 20
ABSORBER_COS = 0.1
FULL_ABSORPTION_COS = 0.025
PROJECTION_SHARE = 0.4
MAX_ABSORBERS = 3
PROBE_L2 = 1e-4
SILENT = 1e-8


def first_letter(word: str) -> str:
    """The lower-case first letter of a vocabulary word (a leading space ignored)."""
    return word.strip()[0].lower()


def alphabetic_tokens(tokenizer) -> list[tuple[int, str]]:
    """(id, text) of the tokens whose text is ASCII letters after at most one leading space."""
    special = set(tokenizer.all_special_ids)
    ids = sorted(i for i in tokenizer.get_vocab().values() if i not in special)
    words = []
    for i, text in zip(ids, tokenizer.batch_decode([[i] for i in ids]), strict=True):
        bare = text[1:] if text.startswith(" ") else text
        if bare.isascii() and bare.isalpha():
            words.append((i, text))
    return words


@dataclass
class LetterSet:
    """Activations (N, d) at each word's position, its letter index (N,), the words, and which
    rows are training words (N,) bool; the rest are the test words."""

    activations: Tensor
    letters: Tensor
    words: list[str]
    train: Tensor


def letter_prompts(
    tokenizer, words: int, seed: int, icl_examples: int = ICL_EXAMPLES
) -> tuple[list[list[int]], list[str], list[bool]]:
    """(token ids ending at the word, words, is-train) for up to `words` sampled vocabulary words.

    Each prompt is icl_examples lines of other words of the same split with their answers, then
    the word as its own token. The text after the word (" has the first letter:") cannot change
    a causal model's activation at the word, so it is not run.
    """
    vocabulary = alphabetic_tokens(tokenizer)
    if len(vocabulary) < 2 * (icl_examples + 1):
        raise ValueError(
            f"the tokenizer has {len(vocabulary)} alphabetic tokens; the first-letter task needs "
            f"at least {2 * (icl_examples + 1)}"
        )
    rng = random.Random(seed)
    chosen = rng.sample(vocabulary, min(words, len(vocabulary)))
    cut = int(TRAIN_FRACTION * len(chosen))
    if min(cut, len(chosen) - cut) < icl_examples + 1:
        least = next(
            n for n in itertools.count(1)
            if min(int(TRAIN_FRACTION * n), n - int(TRAIN_FRACTION * n)) > icl_examples
        )  # fmt: skip
        raise ValueError(
            f"--absorption-words {words} is too few: each split needs {icl_examples + 1} words "
            f"for its in-context examples; give at least {least}"
        )
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts, texts, train = [], [], []
    for is_train, group in ((True, chosen[:cut]), (False, chosen[cut:])):
        for token_id, text in group:
            examples = [w for w in rng.sample(group, icl_examples + 1) if w[0] != token_id]
            lines = [
                ICL_LINE.format(word=word, letter=first_letter(word).upper())
                for _, word in examples[:icl_examples]
            ]
            prefix = tokenizer("\n".join(lines) + "\n", add_special_tokens=False)["input_ids"]
            prompts.append(bos + prefix + [token_id])
            texts.append(text)
            train.append(is_train)
    return prompts, texts, train


@torch.no_grad()
def build_letter_set(
    lm,
    hook: str,
    words: int = DEFAULT_WORDS,
    seed: int = 0,
    batch_size: int = 16,
    on_progress: Callable[[int], None] | None = None,
) -> LetterSet:
    """Activations at `hook` of sampled vocabulary words in first-letter prompts (SPEC §3)."""
    prompts, texts, train = letter_prompts(lm.tokenizer, words, seed)
    pad = lm.tokenizer.pad_token_id or 0
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([p + [pad] * (width - len(p)) for p in batch])
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch])
        acts = lm.activations(ids, hook, attention_mask=mask)[hook]
        last = torch.tensor([len(p) - 1 for p in batch], device=acts.device)
        rows.append(acts[torch.arange(len(batch), device=acts.device), last].float().cpu())
        if on_progress is not None:
            on_progress(start + len(batch))
    letters = torch.tensor([LETTERS.index(first_letter(w)) for w in texts])
    return LetterSet(torch.cat(rows), letters, texts, torch.tensor(train))


def save_letter_set(path: Path, data: LetterSet) -> Path:
    """Write a letter set atomically (safetensors; the words as metadata) to reuse it for
    every SAE of the same model and hook: its LM passes are most of the metric's cost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"activations": data.activations, "letters": data.letters, "train": data.train}
    save_safetensors(tensors, path, {"words": json.dumps(data.words)})
    prune_references(path.parent, KEEP_BYTES)
    return path


def load_letter_set(path: Path) -> LetterSet | None:
    """The letter set saved at `path` (None when there is none or it cannot be read)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            words = json.loads(f.metadata()["words"])
            tensors = [f.get_tensor(name) for name in ("activations", "letters", "train")]
    except (SafetensorError, KeyError, ValueError, OSError):
        return None
    return LetterSet(tensors[0], tensors[1], words, tensors[2])


def fit_letter_probes(x: Tensor, letters: Tensor, l2: float = PROBE_L2) -> tuple[Tensor, Tensor]:
    """(W (26, d), b (26,)) float64 in x's own units: per letter, a logistic regression of it
    against the rest, positives weighted by negatives/positives (SAEBench's pos_weight),
    minimising mean weighted log-loss + (l2/2)‖w‖² on x centred and divided by one global scale
    (which keeps every probe's direction that of raw x)."""
    x = x.double()
    mean = x.mean(0)
    scale = (x - mean).pow(2).mean().sqrt().clamp_min(1e-12)
    z = (x - mean) / scale
    y = torch.nn.functional.one_hot(letters, len(LETTERS)).double()
    positives = y.sum(0)
    pos_weight = (len(y) - positives) / positives.clamp_min(1)
    w = torch.zeros(x.shape[1], len(LETTERS), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(LETTERS), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=2000, tolerance_grad=1e-10, tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def objective() -> Tensor:
        opt.zero_grad()
        logits = z @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, pos_weight=pos_weight, reduction="none"
        ).mean(0)
        loss = loss.sum() + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    W = (w.detach() / scale).T
    return W, b.detach() - W @ mean


def f1_score(predicted: Tensor, y: Tensor) -> float:
    """2TP / (2TP + FP + FN); 0 when there is nothing to find and nothing found."""
    predicted, y = predicted.bool(), y.bool()
    tp = int((predicted & y).sum())
    wrong = int((predicted ^ y).sum())
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def main_latents(
    f_train: Tensor, y_train: Tensor, f_test: Tensor, y_test: Tensor, max_k: int = MAX_K
) -> tuple[list[int], list[float]]:
    """(the letter's main latents, test F1 of the k-sparse probe for k = 1..max_k).

    Candidates are ranked by mean(f | letter) − mean(f | other) on the training words (ties:
    lower index); the k-sparse probe is a class-balanced logistic regression on the top k. The
    main latents are the top k of the last step in which F1 rose by more than F1_JUMP; the
    first step that does not stops the search (its F1 is the last one returned).
    """
    y_train = y_train.bool()
    diff = f_train[y_train].double().mean(0) - f_train[~y_train].double().mean(0)
    order = torch.sort(-diff, stable=True).indices
    scores, main, best = [], [], -float("inf")
    for k in range(1, min(max_k, f_train.shape[1]) + 1):
        top = order[:k]
        w, b, mean, std = fit_logistic(f_train[:, top], y_train.double(), balanced=True)
        predicted = ((f_test[:, top].double() - mean) / std) @ w + b > 0
        scores.append(f1_score(predicted, y_test))
        if scores[-1] <= best + F1_JUMP:
            break
        best, main = scores[-1], top.tolist()
    return main, scores


def absorption_of_word(
    x_projection: float, latent_projection: Tensor, cos: Tensor, main: list[int], f: Tensor
) -> tuple[float, bool]:
    """(absorption fraction, full absorption) of one detected word (module docstring).

    x_projection: x·p̂; latent_projection: f_i (d_i·p̂) per latent; cos: cos(d_i, p̂); f: codes.
    """
    main_projection = float(latent_projection[main].sum())
    others = torch.ones_like(cos, dtype=torch.bool)
    others[main] = False
    candidates = latent_projection[others & (cos >= ABSORBER_COS) & (latent_projection > 0)]
    absorbers = float(candidates.topk(min(MAX_ABSORBERS, candidates.numel())).values.sum())
    enough = x_projection > 0 and absorbers >= PROJECTION_SHARE * x_projection
    if main_projection >= x_projection or not enough:
        fraction = 0.0
    elif main_projection <= 0:
        fraction = 1.0
    else:
        absorbed = min(absorbers, x_projection - main_projection)
        fraction = min(max(absorbed / (absorbed + main_projection), 0.0), 1.0)
    top = int(latent_projection.argmax())
    full = (
        bool((f[main] < SILENT).all())
        and float(cos[top]) >= FULL_ABSORPTION_COS
        and x_projection > 0
        and float(latent_projection[top]) >= PROJECTION_SHARE * x_projection
    )
    return fraction, full


def absorption(
    encode: Callable[[Tensor], Tensor],
    W_dec: Tensor,
    data: LetterSet,
    min_probe_f1: float = MIN_PROBE_F1,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:
    """eval.json's "absorption": per letter and averaged over the letters whose ground-truth
    probe reaches min_probe_f1 on the test words and detects at least min_positives of them.

    encode maps activations (N, d) to codes (N, n); W_dec (n, d) writes the codes back into the
    activations' space (SPEC §3)."""
    x_train, x_test = data.activations[data.train], data.activations[~data.train]
    l_train, l_test = data.letters[data.train], data.letters[~data.train]
    W, b = fit_letter_probes(x_train, l_train)
    f_train, f_test = encode(x_train), encode(x_test)
    decoder = W_dec.double().cpu()
    letters: dict[str, dict[str, Any]] = {}
    for c, letter in enumerate(LETTERS):
        y_test = l_test == c
        if not bool((l_train == c).any()) or not bool(y_test.any()):
            continue
        detected = x_test.double() @ W[c] + b[c] > 0
        row: dict[str, Any] = {"probe_f1": f1_score(detected, y_test)}
        main, scores = main_latents(f_train, l_train == c, f_test, y_test)
        p = W[c] / W[c].norm()
        along = decoder @ p
        cos = along / decoder.norm(dim=1).clamp_min(1e-12)
        words = (y_test & detected).nonzero().squeeze(1)
        fractions, full = [], 0
        for i in words.tolist():
            fi = f_test[i].double()
            fraction, is_full = absorption_of_word(
                float(x_test[i].double() @ p), fi * along, cos, main, fi
            )
            fractions.append(fraction)
            full += is_full
        positives = len(fractions)
        row |= {
            "positives": positives,
            "main_latents": main,
            "k_sparse_f1": scores,
            "mean_absorption_fraction": sum(fractions) / positives if positives else 0.0,
            "full_absorption_rate": full / positives if positives else 0.0,
            "evaluated": row["probe_f1"] >= min_probe_f1 and positives >= min_positives,
        }
        letters[letter] = row
    scored = [r for r in letters.values() if r["evaluated"]]
    mean = {
        "letters": len(scored),
        "probe_f1": _mean([r["probe_f1"] for r in letters.values()]),
    }
    if scored:
        mean |= {
            "absorption_fraction": _mean([r["mean_absorption_fraction"] for r in scored]),
            "full_absorption_rate": _mean([r["full_absorption_rate"] for r in scored]),
            "main_latents": _mean([len(r["main_latents"]) for r in scored]),
        }
    return {
        "words": len(data.words),
        "train": int(data.train.sum()),
        "test": int((~data.train).sum()),
        "mean": mean,
        "letters": letters,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
