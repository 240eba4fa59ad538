"""The local transformers backend, plumbing only: a tiny random model answers junk → unparsed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from saelab.autointerp.client import LLMError, TransformersBackend
from saelab.autointerp.run import AutointerpConfig, run_autointerp

CONFIG = AutointerpConfig(explain_top=2, explain_quantile=1)
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.slow
def test_junk_answers_are_recorded_unparsed_with_token_counts(
    features_db: Path, tiny_model
) -> None:
    llm = TransformersBackend(str(tiny_model("llama", max_position_embeddings=4096)), device="cpu")
    summary = run_autointerp(features_db, [0], llm, CONFIG)
    assert summary["results"][0]["status"] == "unparsed"
    with sqlite3.connect(features_db) as conn:
        kind, parsed, raw, prompt_tokens, completion_tokens = conn.execute(
            "SELECT kind, parsed, raw, prompt_tokens, completion_tokens FROM autointerp"
        ).fetchone()
    assert (kind, parsed) == ("explanation", 0) and isinstance(raw, str)
    assert prompt_tokens > 100 and 0 < completion_tokens <= 120
    assert summary["usage"]["prompt_tokens"] == prompt_tokens


def test_prompt_uses_the_chat_template_when_there_is_one(tiny_model) -> None:
    llm = TransformersBackend(str(tiny_model("llama", max_position_embeddings=4096)), device="cpu")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plain = llm.lm.tokenizer("System: Be brief.\n\nUser: Hi\n\nAssistant:")["input_ids"]
    assert llm._prompt_ids(messages) == plain
    llm.lm.tokenizer.chat_template = TEMPLATE
    templated = llm.lm.tokenizer(
        "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>", add_special_tokens=False
    )
    assert llm._prompt_ids(messages) == templated["input_ids"]
    reply = asyncio.run(llm.complete(messages, 5))
    assert reply.prompt_tokens == len(templated["input_ids"]) and reply.completion_tokens <= 5


def test_prompt_longer_than_the_context_is_an_error(tiny_model) -> None:
    llm = TransformersBackend(str(tiny_model("llama")), device="cpu")  # 256 positions
    messages = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(LLMError, match="exceeds the model's context of 256"):
        asyncio.run(llm.complete(messages, 10))
