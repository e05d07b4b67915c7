"""The HTTP API: OpenAI-compatible routes over a :class:`Scheduler` (see docs/serving.md).

``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true``
sends server-sent events, one chunk per final block, ending with ``data: [DONE]``) and
``GET /health`` (queue and batch counters). Every request is validated and resolved into a
program before it is queued, so bad input gets a 400 without any model work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from dllm_jax.serve.engine import Engine
from dllm_jax.serve.errors import RequestError, RequestTimeout, Unavailable, body_of, error_body
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

    async def blocks(self) -> AsyncIterator[str]:
        """The text each block makes final (possibly empty), in order, until EOS, a stop
        string or the last block; ``self.text.finish()`` then gives what is left."""
        loop = asyncio.get_running_loop()
        getter: asyncio.Future[Event] | None = None
        try:
            while not self.text.done:
                left = self.deadline - loop.time()
                if left <= 0:
                    raise RequestTimeout("the request timed out")
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

    def check_model(self, model: str) -> None:
        if model != self.engine.name:
            raise RequestError(f"unknown model {model!r}; this server serves "
                               f"{self.engine.name!r}", "model", "model_not_found")

    def accept(self, body: CompletionRequest | ChatRequest, prompt: list[int],
               max_tokens: int | None, request: Request) -> _Call:
        """Resolves the request's program (400s come from here) and queues its job."""
        program = self.engine.program(len(prompt), max_tokens, body.knobs())
        text = TextAssembler(self.engine.decode, self.engine.eos_id, body.stop_strings())
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(event: Event) -> None:  # from the worker or the sampler's host callback
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(prompt, program, body.seed, deliver)
        self.scheduler.submit(job)
        return _Call(job, events, text, len(prompt), loop.time() + self.request_timeout_s,
                     request)

    async def respond(self, body: CompletionRequest | ChatRequest, prompt: list[int],
                      max_tokens: int | None, request: Request, chat: bool) -> Response:
        call = self.accept(body, prompt, max_tokens, request)
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
               request_timeout_s: float = 600.0) -> FastAPI:
    """The FastAPI application serving ``engine``; its lifespan starts and drains the worker.

    Args:
      engine: the loaded model (see :class:`Engine`).
      max_queue: live requests (queued or decoding) admitted at once; more get HTTP 429.
      batch_wait_s: how long the oldest queued request waits for others to batch with.
      request_timeout_s: a request not answered by then gets HTTP 504 (or an error event).
    """
    scheduler = Scheduler(engine, max_queue=max_queue, batch_wait_s=batch_wait_s)
    server = _Server(engine, scheduler, request_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.close)

    app = FastAPI(title="dllm-jax", lifespan=lifespan)
    app.state.server = server
    _add_error_handlers(app)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model",
                                            "created": server.created, "owned_by": "dllm-jax"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "sampler": engine.sampler,
                **scheduler.stats()}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        body.check_supported()
        server.check_model(body.model)
        prompt = engine.completion_prompt(body.single_prompt())
        return await server.respond(body, prompt, body.max_tokens, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        body.check_supported()
        server.check_model(body.model)
        prompt = engine.chat_prompt([m.as_template_input() for m in body.messages])
        return await server.respond(body, prompt, body.token_budget(), request, chat=True)

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
               log_level: str = "info") -> None:
    """Serves ``app`` until SIGINT/SIGTERM, then drains: the listening socket closes, requests
    in flight are answered, and the worker finishes before the process exits."""
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level)).run()
