"""The demo's API: the real app under uvicorn in a background thread on 127.0.0.1, and tokens for its users."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from twotower.errors import DemoError, InputError
from twotower.serve import create_app
from twotower.serve.auth import SERVICE_ROLE, mint_token
from twotower.settings import Settings

__all__ = ["TOKEN_HOURS", "background_server", "check_port", "service_token", "user_token"]

TOKEN_HOURS = 12  # lifetime of the tokens the demo prints


@contextmanager
def background_server(settings: Settings, port: int) -> Iterator[tuple[str, threading.Event, Any]]:
    """Serve ``create_app(settings)`` until the block ends: ``(url, stopped, server)``; ``stopped`` is set if it
    ends early."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error", access_log=False,
                            lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    # an Event, not Thread.join: a join interrupted by Ctrl-C can report a running thread as finished
    stopped = threading.Event()

    def run() -> None:
        try:
            server.run()
        finally:
            stopped.set()

    threading.Thread(target=run, name="twotower-demo-api", daemon=True).start()
    deadline = time.monotonic() + 120
    while not server.started:
        if stopped.is_set():
            check_port(port)  # the usual cause; otherwise:
            raise DemoError("the API server did not start (see the messages above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise DemoError("the API server did not start within 120 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", stopped, server
    finally:
        server.should_exit = True
        stopped.wait(timeout=30)  # the app's shutdown detaches from the database before the demo does


def check_port(port: int) -> None:
    """Raise a clear InputError when 127.0.0.1:``port`` cannot be listened on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise InputError(f"port {port} is in use; pass --port") from None


def user_token(settings: Settings, user: uuid.UUID) -> str:
    """A user's token for the demo's API (signed with the demo's secret)."""
    return mint_token(settings, TOKEN_HOURS * 3600, user=user)


def service_token(settings: Settings) -> str:
    """A service-role token for the console."""
    return mint_token(settings, TOKEN_HOURS * 3600, role=SERVICE_ROLE)
