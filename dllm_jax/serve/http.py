"""HTTP plumbing below the routes: a request-body limit checked before anything is parsed, and
uvicorn with a bounded shutdown (see docs/serving.md, "Limits and errors" and "Shutdown")."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from fastapi.responses import JSONResponse

from dllm_jax.serve.errors import BodyTooLarge, body_of

log = logging.getLogger("dllm_jax.serve")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` gets HTTP 413 without being
    parsed (refused on its ``Content-Length`` before any byte is read, or as soon as a chunked
    body passes the limit). The body is read here and handed on whole."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False

        async def replay() -> Message:  # the body once, then the client's own messages
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        e = BodyTooLarge(f"the request body is over the server's limit of {self.max_bytes} "
                         "bytes")
        await JSONResponse(body_of(e), status_code=e.status,
                           headers={"Connection": "close"})(scope, receive, send)


class GracefulServer(uvicorn.Server):
    """uvicorn whose shutdown (SIGTERM, SIGINT) is bounded: ``on_shutdown(deadline)`` tells the
    app when in-flight requests must be answered (``time.monotonic()`` based), connections get
    until then to finish, and a signal ends the process with status 0 (uvicorn re-raises it)."""

    def __init__(self, config: uvicorn.Config, grace_s: float,
                 on_shutdown: Callable[[float], None]):
        super().__init__(config)
        self.grace_s = grace_s
        self.on_shutdown = on_shutdown
        self.deadline: float | None = None

    async def shutdown(self, sockets: Any = None) -> None:
        self.deadline = time.monotonic() + self.grace_s
        log.info("shutting down: in-flight requests have %.1f s", self.grace_s)
        self.on_shutdown(self.deadline)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
