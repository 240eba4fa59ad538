"""Evaluate several SAEs on the same held-out tokens with one LM, sharing the clean passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelab.data.progress import token_progress
from saelab.evals.command import save_eval
from saelab.evals.reference import find_reference, save_reference
from saelab.evals.settings import EvalSettings
from saelab.evals.spliced import MultiSplicedEvaluator, input_hook
from saelab.evals.tokens import heldout_batches
from saelab.lm.dtypes import dtype_name
from saelab.lm.model import LanguageModel
from saelab.sae import SAE


@dataclass
class EvalTarget:
    """One SAE to evaluate: its name, the hook it is spliced in at (a transcoder's target hook,
    SPEC §2.6), where it was loaded from and its eval.json path."""

    name: str
    sae: SAE
    hook: str
    sae_path: Path
    out: Path


def evaluate_targets(
    lm: LanguageModel,
    model_name: str,
    targets: list[EvalTarget],
    settings: EvalSettings,
    log: Callable[[str], None] = print,
    reuse_reference: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Evaluate every target on the same tokens and write its eval.json (+ stats, plot).

    SAEs at one hook share the clean and zero-ablation passes (MultiSplicedEvaluator), which
    with reuse_reference are read from (or saved to) saelab's cache (saelab.evals.reference);
    an SAE whose evaluation or file writing fails is reported without losing the others.
    Returns (eval.json documents by name, error messages by name).
    """
    start = time.perf_counter()
    device, dtype = str(lm.device), dtype_name(lm.dtype)
    by_hook: dict[str, list[int]] = {}
    for i, target in enumerate(targets):
        by_hook.setdefault(target.hook, []).append(i)
        target.sae.to(lm.device)
    batches = heldout_batches(
        settings.corpus, lm.tokenizer, settings.tokens, context_size=settings.context_size,
        batch_size=settings.batch_size, seed=settings.seed,
    )  # fmt: skip
    held = list(batches)  # small (token ids): checked against cached references' tokens
    found = {
        hook: find_reference(
            lm, hook, settings.eval_config(model_name, hook, device, dtype), held, reuse_reference
        )
        for hook in by_hook
    }
    evaluators = {
        hook: MultiSplicedEvaluator(
            [targets[i].sae for i in indices],
            lm,
            hook,
            isolate_failures=True,
            record_reference=found[hook][0] is not None and found[hook][1] is None,
        )
        for hook, indices in by_hook.items()
    }
    failures: dict[str, str] = {}
    total = settings.tokens * len(targets)
    done = 0
    with token_progress(f"evaluating {len(targets)} SAE(s), tokens × SAEs", total) as progress:
        for b, batch in enumerate(held):
            for hook, evaluator in list(evaluators.items()):
                reference = found[hook][1]
                try:
                    n = evaluator.update(batch, reference[b] if reference else None)
                except Exception as error:  # a failure shared by every SAE at this hook
                    for i in evaluator.active():
                        failures[targets[by_hook[hook][i]].name] = (
                            f"{type(error).__name__}: {error}"
                        )
                    del evaluators[hook]
                    continue
                done += n * len(evaluator.active())
                progress(done, max(total, done))
    reports: dict[str, dict[str, Any]] = {}
    for hook, evaluator in evaluators.items():
        if evaluator.reference_batches is not None:
            save_reference(found[hook][0], evaluator.reference_batches)
        for j, i in enumerate(by_hook[hook]):
            target = targets[i]
            if j in evaluator.failed:
                failures[target.name] = evaluator.failed[j]
                continue
            try:
                reports[target.name], _ = save_eval(
                    target.out, metrics=evaluator.result(j), tensor=evaluator.tensors[j],
                    sae=target.sae, sae_path=target.sae_path,
                    eval_config=settings.eval_config(
                        model_name, hook, device, dtype, input_hook(target.sae, hook)
                    ),
                    started=start,
                )  # fmt: skip
            except (ValueError, OSError, RuntimeError) as error:
                failures[target.name] = f"{type(error).__name__}: {error}"
    for name, message in failures.items():
        log(f"evaluation of {name} failed: {message}")
    return reports, failures
