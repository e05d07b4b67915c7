"""Request bodies of the OpenAI-compatible routes, and the response objects.

Unknown fields are refused (a misspelt sampler knob must not silently fall back to a default);
OpenAI fields this server cannot honour are accepted only at their neutral values.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dllm_jax.sampling.presets import DreamConfig, LLaDAConfig
from dllm_jax.serve.errors import RequestError

# Sampler knobs a request may set besides temperature and top_p (see docs/serving.md): those
# of every served preset.
KNOB_FIELDS = tuple(dict.fromkeys(k for cls in (LLaDAConfig, DreamConfig)
                                  for k in cls.REQUEST_KNOBS if k not in ("temperature", "top_p")))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Request(_Strict):
    """Fields shared by ``/v1/completions`` and ``/v1/chat/completions``."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(default=None, ge=0, lt=2 ** 63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # sampler knobs (extra fields; each belongs to the llada or dream preset or both)
    steps: int | None = None
    block_length: int | None = None
    remasking: str | None = None
    alg: str | None = None
    threshold: float | None = None
    cache: str | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    eps: float | None = None

    def knobs(self) -> dict[str, Any]:
        """The sampler knobs the request sets (temperature and top_p included)."""
        names = ("temperature", "top_p") + KNOB_FIELDS
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def stop_strings(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise RequestError("stop takes up to 4 non-empty strings", "stop")
        return stop

    def check_supported(self) -> None:
        """Refuses OpenAI options this server does not implement (400 naming the field)."""
        if self.n != 1:
            raise RequestError("n must be 1 (one choice per request)", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise RequestError(f"{name} is not supported (must be 0)", name)
        if self.logit_bias:
            raise RequestError("logit_bias is not supported", "logit_bias")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise RequestError("one prompt per request", "prompt")
            prompt = prompt[0]
        return prompt

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise RequestError("echo is not supported", "echo")
        if self.logprobs:
            raise RequestError("logprobs is not supported", "logprobs")
        if self.best_of not in (None, 1):
            raise RequestError("best_of must be 1", "best_of")
        if self.suffix:
            raise RequestError("suffix is not supported", "suffix")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name"

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_template_input(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs or self.top_logprobs:
            raise RequestError("logprobs is not supported", "logprobs")


# ------------------------------------------------------------------ responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(rid: str, model: str, text: str, finish: str | None, *, chat: bool,
                      chunk: bool, role: bool = False) -> dict[str, Any]:
    """A completion (or a streamed chunk of one) with a single choice."""
    if chat:
        if chunk:
            delta = ({"role": "assistant", "content": text} if role
                     else {"content": text} if text else {})
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
        obj = "text_completion"
    choice["finish_reason"] = finish
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice]}
