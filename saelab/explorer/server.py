"""Run the explorer app with uvicorn: in the foreground (`saelab serve`) or in a thread."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # uvicorn and fastapi load when serving, not when the CLI starts
    from fastapi import FastAPI

DEFAULT_HOST = "127.0.0.1"  # loopback only unless the user asks otherwise
DEFAULT_PORT = 8765


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on host right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """ValueError (one line naming host and port) unless a server can listen on host:port now.

    Binds and releases every address host resolves to, with SO_REUSEADDR as uvicorn's asyncio
    server sets it, so a port in TIME_WAIT counts as free and one with a listener as in use.
    """
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}.")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ValueError(
            f"--host {host!r} is neither an address nor a known host name ({error.strerror})."
        ) from error
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise ValueError(
                        f"port {port} on {host} is in use; pass --port with a free port."
                    ) from error
                raise ValueError(
                    f"cannot listen on {host}:{port}: {error.strerror}; pass --host with an "
                    "address of this machine, or another --port."
                ) from error


def serve(app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until Ctrl-C."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def running_server(
    app: FastAPI, host: str = DEFAULT_HOST, port: int | None = None, start_timeout: float = 20.0
) -> Iterator[str]:
    """Serve app from a background thread for the duration of the block; yields its base URL.

    The server is told to exit when the block ends and the thread is joined (bounded wait).
    """
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"saelab-explorer-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the explorer server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
