"""The settings of one evaluation's held-out tokens and the eval.json eval_config they give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saelab.data.corpora import Corpus
from saelab.evals.tokens import document_tokens

# eval.json eval_config keys that decide whether an existing evaluation can be reused
# (the device is left out: the same settings on another device give the same metrics).
SETTING_KEYS = (
    "model", "hook", "input_hook", "corpus", "split", "tokens", "document_tokens", "context_size",
    "batch_size", "seed",
)  # fmt: skip


@dataclass
class EvalSettings:
    """The held-out tokens every SAE of one evaluation sees."""

    corpus: Corpus
    tokens: int
    context_size: int
    batch_size: int
    seed: int = 0

    def eval_config(
        self, model: str, hook: str, device: str, dtype: str, input_hook: str | None = None
    ) -> dict[str, Any]:
        """The eval.json eval_config (docs/eval-schema.md) of one SAE spliced in at `hook`
        (reading `input_hook` when it is a transcoder's other hook, SPEC §2.6)."""
        config = {
            "model": model,
            "hook": hook,
            "corpus": self.corpus.spec,
            "split": "heldout",
            "tokens": self.tokens,
            "document_tokens": document_tokens(self.tokens, self.context_size),
            "context_size": self.context_size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "device": device,
            "dtype": dtype,
        }
        if input_hook is not None and input_hook != hook:
            config["input_hook"] = input_hook
        return config


def same_settings(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether an eval.json eval_config was made with the wanted settings (device aside)."""
    return all(found.get(key) == wanted.get(key) for key in (*SETTING_KEYS, "dtype"))
