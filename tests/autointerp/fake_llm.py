"""A local OpenAI-compatible chat server for autointerp tests (Starlette + uvicorn in a thread).

It answers deterministically from the prompt, like a perfectly literal LLM:
- explain: 'Explanation: the token "X".' with X the most often marked <<token>>;
- detection: the excerpts containing the word X (from the prompt's explanation);
- fuzzing: the excerpts whose marked tokens include X.
It can fail the next N requests with an HTTP status, answer malformed text or a body that is
not JSON, answer slowly,
require an API key, or shut itself down after N answers ("server down"). It stops itself after
`lifetime` seconds at the latest.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

MARK = re.compile(r"<<(.*?)>>")
EXPLAINED = re.compile(r'Explanation: the token "(.*?)"')
EXCERPT = re.compile(r"^(\d+)\. (.*)$", re.M)
# several lines, no "Explanation:" and no JSON list: unparsed by every parser
MALFORMED = "I am not sure what you mean.\nCould you show more excerpts?"


def kind_of(system: str) -> str:
    """Which question a system prompt asks."""
    if "one-sentence explanation" in system:
        return "explanation"
    return "fuzzing" if "correctly highlighted" in system else "detection"


def answer(kind: str, user: str) -> str:
    """The literal LLM's reply."""
    if kind == "explanation":
        marked = Counter(token.strip() for token in MARK.findall(user))
        return f'Explanation: the token "{marked.most_common(1)[0][0]}".'
    word = EXPLAINED.search(user).group(1)
    chosen = []
    for number, text in EXCERPT.findall(user):
        if kind == "detection":
            hit = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", MARK.sub(r"\1", text))
        else:
            hit = word in {token.strip() for token in MARK.findall(text)}
        if hit:
            chosen.append(int(number))
    return f"The matching excerpts are {chosen}."


@dataclass
class Logged:
    """One answered request."""

    kind: str
    user: str
    status: int
    reply: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class FakeLLM:
    """Chat-completions server on 127.0.0.1 (free port); see the module docstring."""

    lifetime: float = 120.0
    delay: float = 0.0
    malformed: set[str] = field(default_factory=set)
    api_key: str | None = None
    shutdown_after: int | None = None
    garbage_body: bool = False
    log: list[Logged] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._failures: list[tuple[int, str | None]] = []
        self._in_flight = 0
        self._answered = 0
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._timer = threading.Timer(self.lifetime, self.stop)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        self._thread.start()
        self._timer.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake LLM server did not start within 10 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self._server.should_exit = True
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        self._sock.close()

    def fail(self, status: int, times: int, retry_after: str | None = None) -> None:
        """Answer the next `times` requests with HTTP `status`."""
        self._failures += [(status, retry_after)] * times

    def replies(self, kind: str) -> list[Logged]:
        """Successful answers of one kind."""
        return [entry for entry in self.log if entry.kind == kind and entry.status == 200]

    async def _chat(self, request: Request) -> JSONResponse | PlainTextResponse:
        body = await request.json()
        messages = body["messages"]
        kind, user = kind_of(messages[0]["content"]), messages[-1]["content"]
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            failure = self._failures.pop(0) if self._failures else None
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                self.log.append(Logged(kind, user, 401, None))
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            if failure is not None:
                status, retry_after = failure
                self.log.append(Logged(kind, user, status, None))
                headers = {"Retry-After": retry_after} if retry_after is not None else None
                return JSONResponse({"error": {"message": "busy"}}, status, headers=headers)
            if self.garbage_body:
                self.log.append(Logged(kind, user, 200, None))
                return PlainTextResponse("<html>gateway says hi</html>")
            reply = MALFORMED if kind in self.malformed else answer(kind, user)
            prompt_tokens = sum(len(m["content"].split()) for m in messages)
            entry = Logged(kind, user, 200, reply, prompt_tokens, len(reply.split()))
            self.log.append(entry)
            with self._lock:
                self._answered += 1
                if self.shutdown_after is not None and self._answered >= self.shutdown_after:
                    self._server.should_exit = True
            return JSONResponse(
                {
                    "id": f"chatcmpl-{len(self.log)}",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": entry.prompt_tokens,
                        "completion_tokens": entry.completion_tokens,
                        "total_tokens": entry.prompt_tokens + entry.completion_tokens,
                    },
                }
            )
        finally:
            with self._lock:
                self._in_flight -= 1
