"""The HTTP API: OpenAI-compatible routes over a :class:`Scheduler` (see docs/serving.md).

``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true``
sends server-sent events, one chunk per final block, ending with ``data: [DONE]``) and
``GET /health`` (queue and batch counters). Every request is validated and resolved into a
program before it is queued, so bad input gets a 400 without any model work; tokenising and
resolving run on a small thread pool, never on the event loop. A request not answered within
the timeout, or by the end of a shutdown's grace period, is answered with an error, and its
batch is dropped at the next block once none of its clients is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from dllm_jax.serve.engine import Engine, Program
from dllm_jax.serve.errors import (
    ModelNotFound,
    RequestError,
    RequestTimeout,
    Unavailable,
    body_of,
    error_body,
)
from dllm_jax.serve.http import BodyLimit, GracefulServer
from dllm_jax.serve.scheduler import BlockEvent, DoneEvent, Event, Job, Scheduler
from dllm_jax.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    completion_object,
    new_id,
    usage,
)
from dllm_jax.serve.text import TextAssembler

POLL_S = 0.25  # how often a waiting request checks that its client is still connected
PREPARE_THREADS = 2  # tokenising and program resolution, off the event loop


class _ClientGone(Exception):
    """The client disconnected while its request was waiting."""


class _JobStream(StreamingResponse):
    """A server-sent-event stream that frees its job's slot however it ends (finished, client
    gone, or cancelled before its first byte)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@dataclasses.dataclass
class _Call:
    """An accepted request: its job, the events the worker sends it and its text so far."""

    job: Job
    events: asyncio.Queue[Event]
    text: TextAssembler
    prompt_tokens: int
    deadline: float
    request: Request
    closing_at: Callable[[], float]  # when a shutdown's grace period ends (inf: not closing)

    async def blocks(self) -> AsyncIterator[str]:
        """The text each block makes final (possibly empty), in order, until EOS, a stop
        string or the last block; ``self.text.finish()`` then gives what is left."""
        loop = asyncio.get_running_loop()
        getter: asyncio.Future[Event] | None = None
        try:
            while not self.text.done:
                now = loop.time()
                if now >= self.closing_at():
                    raise Unavailable("the server is shutting down")
                if now >= self.deadline:
                    raise RequestTimeout("the request timed out")
                left = min(self.deadline, self.closing_at()) - now
                getter = getter or asyncio.ensure_future(self.events.get())
                done, _ = await asyncio.wait({getter}, timeout=min(left, POLL_S))
                if not done:
                    if await self.request.is_disconnected():
                        raise _ClientGone
                    continue
                event, getter = getter.result(), None
                if isinstance(event, DoneEvent):
                    return
                if not isinstance(event, BlockEvent):
                    raise event.error
                yield self.text.add(event.tokens)
        finally:
            if getter is not None:
                getter.cancel()

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.text.completion_tokens)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _error_response(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _validation_message(err: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return f"malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
    param = ".".join(loc) or None
    if err.get("type") == "extra_forbidden":
        return f"unknown field {param!r}", param
    return (f"{param}: {err.get('msg')}" if param else str(err.get("msg"))), param


class _Server:
    """The routes' shared state: the engine, the scheduler and the limits."""

    def __init__(self, engine: Engine, scheduler: Scheduler, request_timeout_s: float):
        self.engine = engine
        self.scheduler = scheduler
        self.request_timeout_s = request_timeout_s
        self.created = int(time.time())
        self.pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="dllm-jax-prepare")
        self.closing_at = math.inf  # event-loop time; set when a shutdown starts
        self.close_by: float | None = None  # time.monotonic() by which the worker must stop

    def check_model(self, model: str) -> None:
        if model != self.engine.name:
            raise ModelNotFound(f"the model {model!r} does not exist; this server serves "
                                f"{self.engine.name!r}")

    def begin_shutdown(self, loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
        """From now on, a request unanswered after ``grace_s`` seconds gets HTTP 503."""
        self.closing_at = min(self.closing_at, loop.time() + grace_s)

    def _prepare(self, body: CompletionRequest | ChatRequest, tokenize: Callable[[], list[int]],
                 max_tokens: int | None) -> tuple[list[int], Program, list[str]]:
        """On the pool: the prompt's ids, its program (every bound checked before the
        schedule is planned) and the stop strings; raises the 400s."""
        stop = body.stop_strings()
        prompt = tokenize()
        return prompt, self.engine.program(len(prompt), max_tokens, body.knobs()), stop

    async def accept(self, body: CompletionRequest | ChatRequest,
                     tokenize: Callable[[], list[int]], max_tokens: int | None,
                     request: Request) -> _Call:
        """Prepares the request off the event loop (400s come from here) and queues its job."""
        loop = asyncio.get_running_loop()
        prompt, program, stop = await loop.run_in_executor(
            self.pool, self._prepare, body, tokenize, max_tokens)
        text = TextAssembler(self.engine.decode, self.engine.eos_id, stop)
        events: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(event: Event) -> None:  # from the worker or the sampler's host callback
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(prompt, program, body.seed, deliver)
        self.scheduler.submit(job)
        return _Call(job, events, text, len(prompt), loop.time() + self.request_timeout_s,
                     request, lambda: self.closing_at)

    async def respond(self, body: CompletionRequest | ChatRequest,
                      tokenize: Callable[[], list[int]], max_tokens: int | None,
                      request: Request, chat: bool) -> Response:
        call = await self.accept(body, tokenize, max_tokens, request)
        rid = new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            return _JobStream(self._stream(call, rid, chat, body.include_usage),
                              on_close=lambda: self.scheduler.release(call.job))
        try:
            text = "".join([d async for d in call.blocks()]) + call.text.finish()
        except _ClientGone:
            return Response(status_code=499)
        finally:
            self.scheduler.release(call.job)
        out = completion_object(rid, self.engine.name, text, call.text.finish_reason,
                                chat=chat, chunk=False)
        return JSONResponse({**out, "usage": call.usage()})

    async def _stream(self, call: _Call, rid: str, chat: bool, include_usage: bool
                      ) -> AsyncIterator[str]:
        name = self.engine.name
        try:
            if chat:
                yield _sse(completion_object(rid, name, "", None, chat=True, chunk=True,
                                             role=True))
            async for delta in call.blocks():  # one chunk per block
                yield _sse(completion_object(rid, name, delta, None, chat=chat, chunk=True))
            rest = call.text.finish()
            yield _sse(completion_object(rid, name, rest, call.text.finish_reason, chat=chat,
                                         chunk=True))
            if include_usage:
                last = completion_object(rid, name, "", None, chat=chat, chunk=True)
                yield _sse({**last, "choices": [], "usage": call.usage()})
        except _ClientGone:
            return
        except Unavailable as e:
            yield _sse(body_of(e))
        yield "data: [DONE]\n\n"


def create_app(engine: Engine, *, max_queue: int = 64, batch_wait_s: float = 0.01,
               request_timeout_s: float = 600.0, max_body_bytes: int = 1 << 20,
               close_timeout_s: float = 5.0) -> FastAPI:
    """The FastAPI application serving ``engine``; its lifespan starts the worker and stops
    it (see :meth:`Scheduler.close`).

    Args:
      engine: the loaded model (see :class:`Engine`).
      max_queue: live requests (queued or decoding) admitted at once; more get HTTP 429.
      batch_wait_s: how long the oldest queued request waits for others to batch with.
      request_timeout_s: a request not answered by then gets HTTP 504 (or an error event),
        and its batch is dropped at the next block once none of its clients is left.
      max_body_bytes: a larger request body gets HTTP 413 before it is parsed.
      close_timeout_s: how long the lifespan's end waits for the worker to stop.
    """
    scheduler = Scheduler(engine, max_queue=max_queue, batch_wait_s=batch_wait_s)
    server = _Server(engine, scheduler, request_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        scheduler.start()
        yield
        server.pool.shutdown(wait=False, cancel_futures=True)
        timeout = (close_timeout_s if server.close_by is None
                   else max(server.close_by - time.monotonic(), 0.1))
        app.state.stopped = await asyncio.to_thread(scheduler.close, timeout)

    app = FastAPI(title="dllm-jax", lifespan=lifespan)
    app.state.server = server
    app.state.stopped = False
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model",
                                            "created": server.created, "owned_by": "dllm-jax"}]}

    g, n = engine.defaults.geometry()
    generation = {"max_tokens": g, "block_length": engine.defaults.block_length and n,
                  "steps": engine.defaults.steps, "max_steps": engine.max_steps}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "sampler": engine.sampler,
                "defaults": generation, **scheduler.stats()}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        body.check_supported()
        server.check_model(body.model)
        prompt = body.single_prompt()
        return await server.respond(body, lambda: engine.completion_prompt(prompt),
                                    body.max_tokens, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        body.check_supported()
        server.check_model(body.model)
        messages = [m.as_template_input() for m in body.messages]
        return await server.respond(body, lambda: engine.chat_prompt(messages),
                                    body.token_budget(), request, chat=True)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI error object."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(e.errors()[0])
        return _error_response(400, error_body(message, "invalid_request_error", param,
                                               "invalid_value"))

    @app.exception_handler(RequestError)
    async def bad_request(_: Request, e: RequestError) -> JSONResponse:
        return _error_response(e.status, body_of(e))

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, e: Unavailable) -> JSONResponse:
        return _error_response(e.status, body_of(e))

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception) -> JSONResponse:
        return _error_response(500, error_body(f"internal error: {type(e).__name__}: {e}",
                                               "server_error"))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return _error_response(e.status_code, error_body(str(e.detail), "invalid_request_error"))


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info", shutdown_timeout_s: float = 5.0) -> bool:
    """Serves ``app`` until SIGINT/SIGTERM, then shuts down within ``shutdown_timeout_s``: the
    listening socket closes at once, requests in flight may finish until the grace period's
    last second (at least its first half) and are then answered with HTTP 503 (an error event
    when streaming), the running batch is dropped at its next block, queued jobs are failed,
    and the worker is waited for until the grace period ends. Returns whether the worker
    stopped in time (a batch still compiling, or in one long block, cannot be cut short)."""
    server: _Server = app.state.server
    answer_s = max(shutdown_timeout_s - 1.0, shutdown_timeout_s / 2)

    def on_shutdown(deadline: float) -> None:  # runs on the event loop
        server.begin_shutdown(asyncio.get_running_loop(), answer_s)
        server.close_by = deadline

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=answer_s + 0.3)
    GracefulServer(config, shutdown_timeout_s, on_shutdown).run()
    return bool(app.state.stopped)
