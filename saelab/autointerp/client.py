"""LLM backends for autointerp: any OpenAI-compatible chat endpoint, or a local transformers model.

Both expose `await backend.complete(messages, max_tokens) -> Reply` and count tokens in
`backend.usage`. The OpenAI-compatible backend bounds concurrent requests with a semaphore,
retries 408/409/429/5xx answers and network errors with exponential backoff (honouring
Retry-After), and applies a per-request timeout. A failed request raises LLMError (recorded for
that latent); a backend that cannot work at all (unreachable, bad key, unknown model) raises
LLMUnavailable so the run stops with a clear message instead of failing every latent.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from saelab.autointerp.prompts import Messages

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = {
    401: "the API key was rejected",
    403: "access denied",
    404: "no such endpoint or model",
}
MAX_BACKOFF_S = 60.0


class LLMError(RuntimeError):
    """One request failed (after its retries); the latent's stage is recorded as an error."""


class LLMUnavailable(LLMError):
    """The backend cannot serve any request (unreachable, rejected key, unknown model)."""


@dataclass
class Reply:
    """One chat completion: the text and its token counts (from the response's `usage`)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0


@dataclass
class Usage:
    """Running totals over a backend's requests, for token and cost reporting."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0

    def add(self, reply: Reply) -> None:
        self.requests += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens

    def cost(self, per_1k_prompt: float, per_1k_completion: float) -> float:
        """Estimated cost from prices per 1,000 prompt and completion tokens."""
        return (
            self.prompt_tokens * per_1k_prompt + self.completion_tokens * per_1k_completion
        ) / 1000


class ChatBackend(Protocol):
    """What the explainer and scorers need from an LLM."""

    model: str
    usage: Usage

    async def complete(self, messages: Messages, max_tokens: int) -> Reply: ...

    async def aclose(self) -> None: ...


@dataclass
class OpenAIBackend:
    """POST {base_url}/chat/completions with retries, backoff, timeouts and a concurrency limit."""

    base_url: str
    model: str
    api_key: str | None = None
    concurrency: int = 4
    max_retries: int = 4
    timeout: float = 60.0
    backoff: float = 1.0
    temperature: float = 0.0
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}.")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}.")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base URL {self.base_url!r} must start with http:// or https:// "
                "(e.g. http://127.0.0.1:8000/v1)."
            )
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=self.concurrency),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Backoff before retry `attempt`: Retry-After when given, else base·2^attempt with jitter."""
        header = response.headers.get("retry-after") if response is not None else None
        if header is not None:
            try:
                return min(max(float(header), 0.0), MAX_BACKOFF_S)
            except ValueError:
                pass
        return min(self.backoff * 2**attempt * (1 + random.random() / 2), MAX_BACKOFF_S)

    async def complete(self, messages: Messages, max_tokens: int) -> Reply:
        """One chat completion, retried on transient failures."""
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        problem, unreachable = "", False
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                async with self._semaphore:
                    response = await self._http.post(self.url, json=payload)
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
                problem, unreachable = f"no answer within {self.timeout:g} s (--timeout)", False
            except httpx.TransportError as error:
                problem = f"cannot reach the server ({type(error).__name__}: {error})"
                unreachable = True
            else:
                if response.status_code == 200:
                    reply = self._reply(response, attempt)
                    self.usage.add(reply)
                    return reply
                problem = f"HTTP {response.status_code}: {response.text[:200]!r}"
                unreachable = False
                if response.status_code in FATAL_STATUS:
                    self.usage.failures += 1
                    raise LLMUnavailable(
                        f"{self.url} answered {problem} ({FATAL_STATUS[response.status_code]}; "
                        "check --base-url, --llm-model and the API key variable)."
                    )
                if response.status_code not in RETRY_STATUS:
                    break
            if attempt < self.max_retries:
                self.usage.retries += 1
                await asyncio.sleep(self._delay(attempt, response))
        self.usage.failures += 1
        kind = LLMUnavailable if unreachable else LLMError
        raise kind(f"{self.url}: {problem}, after {self.max_retries} retries.")

    def _reply(self, response: httpx.Response, retries: int) -> Reply:
        """Text and usage of a 200 answer; a body that is not a chat completion is an LLMError."""
        try:
            body = response.json()
            text = body["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as error:
            self.usage.failures += 1
            raise LLMError(
                f"{self.url}: the answer is not a chat completion ({error!r}): {response.text[:200]!r}"
            ) from error
        usage = body.get("usage") or {}
        return Reply(
            text=str(text),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            retries=retries,
        )


class TransformersBackend:
    """A local causal LM (saelab.lm.load_model) answering with its chat template, greedy decoding."""

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None) -> None:
        from saelab.lm import load_model

        self.lm = load_model(model, device=device, dtype=dtype)
        self.model = model
        self.usage = Usage()
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        return None

    async def complete(self, messages: Messages, max_tokens: int) -> Reply:
        """Generate in a worker thread, one request at a time."""
        async with self._lock:
            reply = await asyncio.to_thread(self._generate, messages, max_tokens)
        self.usage.add(reply)
        return reply

    def _prompt_ids(self, messages: Messages) -> list[int]:
        """Token ids of the conversation (chat template when the tokenizer has one)."""
        tokenizer = self.lm.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
        return tokenizer(text + "Assistant:")["input_ids"]

    def _generate(self, messages: Messages, max_tokens: int) -> Reply:
        import torch

        ids = self._prompt_ids(messages)
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        if limit is not None and len(ids) + max_tokens > limit:
            self.usage.failures += 1
            raise LLMError(
                f"{self.model}: prompt of {len(ids)} tokens + {max_tokens} new tokens exceeds "
                f"the model's context of {limit}; show fewer examples (--explain-top, --explain-quantile)."
            )
        tokenizer = self.lm.tokenizer
        input_ids = torch.tensor([ids], device=self.lm.device)
        with torch.no_grad():
            output = self.lm.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        new = output[0, len(ids) :].tolist()
        return Reply(
            text=tokenizer.decode(new, skip_special_tokens=True),
            prompt_tokens=len(ids),
            completion_tokens=len(new),
        )


def make_backend(
    backend: str,
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = 4,
    max_retries: int = 4,
    timeout: float = 60.0,
    backoff: float = 1.0,
    device: str | None = None,
) -> ChatBackend:
    """An OpenAIBackend ("openai") or TransformersBackend ("transformers")."""
    if backend == "openai":
        if not base_url:
            raise ValueError(
                "--base-url is required with --backend openai (e.g. http://127.0.0.1:8000/v1)."
            )
        return OpenAIBackend(
            base_url=base_url, model=model, api_key=api_key, concurrency=concurrency,
            max_retries=max_retries, timeout=timeout, backoff=backoff,
        )  # fmt: skip
    if backend == "transformers":
        return TransformersBackend(model, device=device)
    raise ValueError(f"backend must be 'openai' or 'transformers', got {backend!r}.")
