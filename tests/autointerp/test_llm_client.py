"""OpenAIBackend against the fake server: retries with backoff, timeouts, fatal errors, usage."""

from __future__ import annotations

import asyncio
import time

import pytest

from saelab.autointerp.client import LLMError, LLMUnavailable, OpenAIBackend

MESSAGES = [
    {"role": "system", "content": "Give a one-sentence explanation."},
    {"role": "user", "content": "Excerpt 1: a <<cat>> sat"},
]


def complete(backend: OpenAIBackend, messages: list = MESSAGES) -> object:
    """One request in a fresh event loop, closing the backend afterwards."""

    async def go() -> object:
        try:
            return await backend.complete(messages, 20)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_reply_text_and_usage_come_from_the_response(fake_llm) -> None:
    server = fake_llm()
    backend = OpenAIBackend(server.base_url, "fake", backoff=0.01)
    reply = complete(backend)
    logged = server.log[-1]
    assert reply.text == 'Explanation: the token "cat".' == logged.reply
    assert (reply.prompt_tokens, reply.completion_tokens) == (logged.prompt_tokens, 4)
    assert backend.usage.requests == 1 and backend.usage.prompt_tokens == logged.prompt_tokens
    assert backend.usage.cost(2.0, 10.0) == pytest.approx(
        (logged.prompt_tokens * 2 + 4 * 10) / 1000
    )


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried_with_exponential_backoff(fake_llm, status: int) -> None:
    server = fake_llm()
    server.fail(status, 2)
    backend = OpenAIBackend(server.base_url, "fake", max_retries=3, backoff=0.1)
    start = time.perf_counter()
    reply = complete(backend)
    elapsed = time.perf_counter() - start
    assert [entry.status for entry in server.log] == [status, status, 200]
    assert reply.retries == 2 and backend.usage.retries == 2
    assert elapsed >= 0.1 + 0.2  # delays base·2^attempt (plus jitter) before each retry


def test_retry_after_header_sets_the_delay(fake_llm) -> None:
    server = fake_llm()
    server.fail(429, 1, retry_after="0.5")
    backend = OpenAIBackend(server.base_url, "fake", max_retries=1, backoff=0.001)
    start = time.perf_counter()
    complete(backend)
    assert time.perf_counter() - start >= 0.5


def test_retries_exhausted_raise_llm_error(fake_llm) -> None:
    server = fake_llm()
    server.fail(500, 5)
    backend = OpenAIBackend(server.base_url, "fake", max_retries=2, backoff=0.01)
    with pytest.raises(LLMError, match=r"HTTP 500.*after 2 retries") as caught:
        complete(backend)
    assert not isinstance(caught.value, LLMUnavailable)
    assert len(server.log) == 3 and backend.usage.failures == 1


def test_a_body_that_is_not_a_chat_completion_is_an_error(fake_llm) -> None:
    server = fake_llm(garbage_body=True)
    with pytest.raises(LLMError, match=r"not a chat completion.*gateway says hi"):
        complete(OpenAIBackend(server.base_url, "fake", backoff=0.01))


def test_client_errors_are_not_retried(fake_llm) -> None:
    server = fake_llm()
    server.fail(400, 1)
    with pytest.raises(LLMError, match="HTTP 400"):
        complete(OpenAIBackend(server.base_url, "fake", max_retries=3, backoff=0.01))
    assert len(server.log) == 1


def test_rejected_key_is_fatal_and_names_the_problem(fake_llm) -> None:
    server = fake_llm(api_key="secret")
    with pytest.raises(LLMUnavailable, match=r"401.*API key"):
        complete(OpenAIBackend(server.base_url, "fake", api_key="wrong", backoff=0.01))
    assert len(server.log) == 1
    reply = complete(OpenAIBackend(server.base_url, "fake", api_key="secret"))
    assert reply.text.startswith("Explanation:")


def test_unreachable_server_is_fatal_after_retries(dead_url: str) -> None:
    backend = OpenAIBackend(dead_url, "fake", max_retries=2, backoff=0.01)
    with pytest.raises(LLMUnavailable, match=r"cannot reach the server.*after 2 retries") as caught:
        complete(backend)
    assert dead_url in str(caught.value)
    assert backend.usage.retries == 2


def test_slow_answers_time_out(fake_llm) -> None:
    server = fake_llm(delay=1.0)
    backend = OpenAIBackend(server.base_url, "fake", timeout=0.2, max_retries=0)
    start = time.perf_counter()
    with pytest.raises(LLMError, match=r"no answer within 0.2 s") as caught:
        complete(backend)
    assert not isinstance(caught.value, LLMUnavailable)
    assert time.perf_counter() - start < 0.9


def test_concurrency_limit_bounds_requests_in_flight(fake_llm) -> None:
    server = fake_llm(delay=0.2)
    backend = OpenAIBackend(server.base_url, "fake", concurrency=3)

    async def go() -> None:
        try:
            await asyncio.gather(*(backend.complete(MESSAGES, 10) for _ in range(9)))
        finally:
            await backend.aclose()

    asyncio.run(go())
    assert len(server.log) == 9 and server.max_in_flight == 3


def test_bad_settings_are_rejected_with_the_valid_range() -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        OpenAIBackend("http://127.0.0.1:1/v1", "fake", concurrency=0)
    with pytest.raises(ValueError, match="must start with http"):
        OpenAIBackend("127.0.0.1:1/v1", "fake")
