"""One LLM question of an autointerp run (explanation, detection or fuzzing) and its outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saelab.autointerp.client import ChatBackend, LLMError, LLMUnavailable
from saelab.autointerp.prompts import Messages


@dataclass
class StageResult:
    """What one question produced: raw reply, whether it parsed, the value, token counts, error."""

    kind: str
    value: Any = None
    raw: str | None = None
    parsed: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


async def ask(
    backend: ChatBackend,
    kind: str,
    messages: Messages,
    max_tokens: int,
    parse: Callable[[str], Any],
) -> tuple[StageResult, Any]:
    """Send one question; a failed request or unparsable reply becomes a StageResult, not an
    exception (only LLMUnavailable, which stops the run, propagates). Returns (result, parsed)."""
    try:
        reply = await backend.complete(messages, max_tokens)
    except LLMUnavailable:
        raise
    except LLMError as error:
        return StageResult(kind=kind, error=str(error)), None
    value = parse(reply.text)
    result = StageResult(
        kind=kind,
        raw=reply.text,
        parsed=value is not None,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
    )
    return result, value
