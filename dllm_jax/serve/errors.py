"""Errors a request can end with, each mapped to an HTTP status and an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}`` (see docs/serving.md, "Errors")."""

from __future__ import annotations

from typing import Any

from dllm_jax.errors import ConfigError


class RequestError(ConfigError):
    """Bad request input (HTTP 400), found before any model work.

    Attributes:
      param: the request field at fault, or None.
      code: a short machine-readable reason (``invalid_value``, ``model_not_found``,
        ``context_length_exceeded``, ...).
    """

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFound(RequestError):
    """The request names a model this server does not serve (HTTP 404, as OpenAI answers)."""

    status = 404

    def __init__(self, message: str):
        super().__init__(message, "model", "model_not_found")


class BodyTooLarge(RequestError):
    """The request body is over the server's limit (HTTP 413), refused before it is parsed."""

    status = 413

    def __init__(self, message: str):
        super().__init__(message, None, "request_too_large")


class Unavailable(Exception):
    """The server cannot answer this request now; ``status``, ``kind`` and ``code`` say why."""

    status = 503
    kind = "server_error"
    code = "shutting_down"
    param: str | None = None


class QueueFull(Unavailable):
    status = 429
    kind = "rate_limit_error"
    code = "queue_full"


class RequestTimeout(Unavailable):
    status = 504
    kind = "timeout_error"
    code = "timeout"


class EngineFailure(Unavailable):
    status = 500
    kind = "server_error"
    code = "engine_error"


class BatchDropped(Exception):
    """A running batch was abandoned between blocks: every client left (timed out or
    disconnected) or the server is shutting down."""


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None
               ) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def body_of(e: RequestError | Unavailable) -> dict[str, Any]:
    return error_body(str(e), e.kind, e.param, e.code)
