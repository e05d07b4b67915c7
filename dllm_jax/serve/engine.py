"""The model side of the server: request preparation on the host, and one batched sampler call
per batch that reports every block to the host as soon as it is final.

Streaming: ``generate`` decodes all blocks in one compiled program. The engine hands it the
model wrapped in :class:`BlockWatch`, which forwards every call unchanged and, at the first
forward pass of each block, sends the block just finished (``[B, N]`` token ids) to the host
through an ordered ``io_callback``. Blocks before the window start are final (semi-autoregressive
decoding never revisits them), so the server streams block ``k`` while block ``k + 1`` is being
denoised, and the tokens are exactly those a plain ``generate`` call returns. The cost is one
small device-to-host transfer per block and a program that the persistent compilation cache
does not store (it holds a host callback). See docs/serving.md, "Streaming".

The same host call is where a batch is dropped: when the batch's ``keep_going()`` turns False
(every client timed out or left, or the server is shutting down) the callback raises, which
ends the compiled program at that block boundary, and :meth:`Engine.run` raises
:class:`~dllm_jax.serve.errors.BatchDropped`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jinja2
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from dllm_jax.data.batching import DEFAULT_BUCKETS, bucket_for, left_pad
from dllm_jax.data.tokenizer import load_tokenizer, render_prompt
from dllm_jax.errors import ConfigError
from dllm_jax.sampling import DreamConfig, LLaDAConfig, generate
from dllm_jax.sampling.presets import PRESETS
from dllm_jax.serve.errors import BatchDropped, RequestError
from dllm_jax.serve.settings import served_name
from dllm_jax.weights import from_pretrained

ServedConfig = LLaDAConfig | DreamConfig

SERVED = (LLaDAConfig, DreamConfig)  # the presets a request's knobs apply to
SAMPLER_NAMES = {cls: name for name, cls in PRESETS.items()}

# emit(block_index, tokens [rows, N]) for the real rows of a batch.
Emit = Callable[[int, np.ndarray], None]


@dataclasses.dataclass(frozen=True)
class Program:
    """What one compiled sampler call is keyed on (with the batch size): the prompt bucket and
    the resolved preset (generation length, steps, temperature and every other knob)."""

    bucket: int
    config: ServedConfig

    @property
    def num_blocks(self) -> int:
        g, n = self.config.geometry()
        return g // n


def _not_a_drop(record: logging.LogRecord) -> bool:
    """JAX logs every exception a host callback raises; a dropped batch is not a failure."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, BatchDropped)


logging.getLogger("jax._src.callback").addFilter(_not_a_drop)


def _check_text(text: str, param: str) -> None:
    """Refuses text that is not valid Unicode (a lone surrogate, which JSON's ``\\ud800``
    escapes can carry) with the position of the first bad character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"{param} holds a lone surrogate (U+{ord(text[e.start]):04X}) at "
                           f"position {e.start}, which is not valid Unicode text",
                           param) from None


class BlockWatch(nnx.Module):
    """The model, reporting the block that just finished whenever a block's forward pass starts.

    Forwards ``__call__``, ``with_attention``, ``prefill`` and ``decode_block`` (the methods the
    sampler calls) unchanged. A forward pass whose window is still all MASK starts a block;
    only then ``report(block_BN, start)`` runs on the host, with the window start and the ``N``
    canvas slots before it (the host drops repeats: a step may commit nothing).
    """

    def __init__(self, model: nnx.Module, report: Callable[[np.ndarray, np.ndarray], None],
                 mask_id: int):
        self.model = model
        self.config = model.config
        self.report = report
        self.mask_id = mask_id

    def _watch(self, tokens_BL: jax.Array, window: tuple[Any, int]) -> None:
        start, n = window
        done_BN = jax.lax.dynamic_slice_in_dim(tokens_BL, jnp.maximum(start - n, 0), n, axis=1)
        fresh = jnp.all(jax.lax.dynamic_slice_in_dim(tokens_BL, start, n, axis=1)
                        == self.mask_id)

        def report():
            io_callback(self.report, None, done_BN, jnp.asarray(start, jnp.int32), ordered=True)

        jax.lax.cond(fresh, report, lambda: None)

    def __call__(self, tokens_BL, attention_mask=None, **kw):
        self._watch(tokens_BL, kw["window"])
        return self.model(tokens_BL, attention_mask, **kw)

    def with_attention(self, tokens_BL, attention_mask=None, **kw):
        self._watch(tokens_BL, kw["window"])
        return self.model.with_attention(tokens_BL, attention_mask, **kw)

    def prefill(self, tokens_BL, attention_mask=None, window=None):
        self._watch(tokens_BL, window)
        return self.model.prefill(tokens_BL, attention_mask, window=window)

    def decode_block(self, *args, **kw):
        return self.model.decode_block(*args, **kw)


@dataclasses.dataclass
class _InFlight:
    """The batch being decoded: where its blocks sit on the canvas and who gets them."""

    rows: int
    width: int
    block_length: int
    num_blocks: int
    emit: Emit
    keep_going: Callable[[], bool] | None = None
    reported: int = -1  # last block index already emitted
    dropped: bool = False

    def report(self, block_BN: np.ndarray, start: int) -> None:
        if self.keep_going is not None and not self.keep_going():
            self.dropped = True  # raising here ends the compiled program at this block
            raise BatchDropped("the batch was dropped between blocks")
        k = (start - self.width) // self.block_length - 1  # the block before the window
        if k > self.reported:
            self.reported = k
            self.emit(k, block_BN[:self.rows])

    def finish(self, seqs_BL: np.ndarray) -> None:
        """Emits the blocks no forward pass reported (always the last one)."""
        n = self.block_length
        for k in range(self.reported + 1, self.num_blocks):
            lo = self.width + k * n
            self.emit(k, seqs_BL[:self.rows, lo:lo + n])
        self.reported = self.num_blocks - 1


class Engine:
    """A loaded model and tokenizer, the sampler defaults, and the batched, streaming call.

    Args:
      model: a :class:`dllm_jax.model.transformer.Transformer`.
      tokenizer: an HF tokenizer (or the dllm-jax character tokenizer).
      name: the model id clients send.
      defaults: the preset whose knobs a request may override (``LLaDAConfig`` or
        ``DreamConfig``); its length knob is the default ``max_tokens``.
      prompt_buckets: allowed prompt widths (default: the standard buckets up to
        ``max_position_embeddings``).
      batch_sizes: allowed batch sizes; a batch is padded with filler rows to the next one.
      max_steps: the most denoising steps a request may ask for; None: its generation length
        (one token per step).
    """

    def __init__(self, model: nnx.Module, tokenizer: Any, *, name: str, defaults: ServedConfig,
                 prompt_buckets: Sequence[int] | None = None,
                 batch_sizes: Sequence[int] = (1, 4, 16), max_steps: int | None = None):
        if type(defaults) not in SERVED:
            raise ConfigError("serve supports the llada and dream samplers, "
                              f"got {type(defaults).__name__}")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        g = defaults.geometry()[0]
        if defaults.steps > (max_steps or g):
            raise ConfigError(
                f"the default steps ({defaults.steps}) exceed "
                + (f"max_steps ({max_steps})" if max_steps else
                   f"the generation length ({g}); serve decodes at most one token per step "
                   "unless --max-steps allows more"))
        defaults.plan(model.config, 1)  # e.g. a checkpoint without a MASK token: refuse now
        self.max_positions = model.config.max_position_embeddings
        if prompt_buckets is None:
            prompt_buckets = [b for b in DEFAULT_BUCKETS if b < self.max_positions]
            prompt_buckets.append(self.max_positions)
        if not prompt_buckets or min(prompt_buckets) < 1 or not batch_sizes or min(batch_sizes) < 1:
            raise ConfigError("prompt buckets and batch sizes must be positive integers")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.defaults = defaults
        self.max_steps = max_steps
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.batch_sizes = tuple(sorted(batch_sizes))
        cfg = model.config
        self.vocab_size = cfg.vocab_size
        self.eos_id = cfg.eos_token_id
        self.pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
        self.batches = 0  # batches decoded
        self.rows = 0  # real (non-filler) rows decoded
        mask_id = defaults.mask_id if defaults.mask_id is not None else cfg.mask_token_id
        self._watched = BlockWatch(model, self._on_block, mask_id)
        self._lock = threading.Lock()
        self._in_flight: _InFlight | None = None

    @classmethod
    def load(cls, model_dir: str | Path, *, defaults: ServedConfig, name: str | None = None,
             tokenizer_dir: str | Path | None = None, dtype: str = "float32",
             **kw: Any) -> Engine:
        """Loads a checkpoint directory and its tokenizer (default: the same directory)."""
        tokenizer = load_tokenizer(tokenizer_dir or model_dir)
        model = from_pretrained(model_dir, dtype=dtype)
        return cls(model, tokenizer, name=name or served_name(model_dir), defaults=defaults,
                   **kw)

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    @property
    def sampler(self) -> str:
        return SAMPLER_NAMES[type(self.defaults)]

    # ---------------------------------------------------------------- preparation (host only)
    def completion_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a completion prompt: text as the tokenizer encodes it, or ids."""
        if not isinstance(prompt, str):
            return self._checked([int(t) for t in prompt], "prompt")
        _check_text(prompt, "prompt")
        try:
            ids = render_prompt(self.tokenizer, prompt, chat_template=False)
        except Exception as e:  # tokenizers raise plain Exception for an unknown character
            raise RequestError(self._untokenizable([prompt], e), "prompt") from None
        return self._checked(ids, "prompt")

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a conversation through the checkpoint's chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(f"model {self.name} has no chat template; use /v1/completions",
                               "messages")
        for i, m in enumerate(messages):
            _check_text(m["content"], f"messages.{i}.content")
        try:
            enc = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=True,
                return_dict=True)
        except jinja2.TemplateError as e:  # the template refuses this conversation
            raise RequestError(f"the chat template refused the messages: {e}",
                               "messages") from None
        except Exception as e:  # tokenizers raise plain Exception for an unknown character
            raise RequestError(self._untokenizable([m["content"] for m in messages], e),
                               "messages") from None
        return self._checked(list(enc["input_ids"]), "messages")

    def _untokenizable(self, texts: Sequence[str], error: Exception) -> str:
        """One line on why the tokenizer refused ``texts``: the first character it cannot
        encode on its own, else the tokenizer's own first line."""
        for text in texts:
            seen: set[str] = set()
            for i, ch in enumerate(text):
                if ch in seen:
                    continue
                seen.add(ch)
                try:
                    self.tokenizer.encode(ch)
                except Exception:  # noqa: BLE001 - the same refusal, now for one character
                    return (f"character {ch!r} (U+{ord(ch):04X}) at position {i} is not in "
                            "the tokenizer's vocabulary")
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"the tokenizer cannot encode the prompt: {first[:200]}"

    def _checked(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise RequestError("the prompt is empty", param)
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"prompt token id {bad[0]} is outside the vocabulary "
                               f"(size {self.vocab_size})", param)
        return ids

    def program(self, prompt_length: int, max_tokens: int | None,
                knobs: Mapping[str, Any]) -> Program:
        """Resolves a request's length and knobs into a :class:`Program` (raises
        :class:`RequestError`). ``max_tokens`` is rounded up to whole blocks; without
        ``steps`` the defaults' steps per generated token are kept (at most the step limit).
        Every bound (context, steps) is checked before the schedule is planned."""
        cls = type(self.defaults)
        for k in knobs:
            if k not in cls.REQUEST_KNOBS:
                raise RequestError(f"{k} is not used by the {self.sampler} sampler", k)
        default_g, default_n = self.defaults.geometry()
        length = default_g if max_tokens is None else max_tokens
        if length < 1:
            raise RequestError(f"max_tokens must be >= 1, got {length}", "max_tokens")
        block = knobs.get("block_length", default_n if self.defaults.block_length else None)
        if block is not None and block < 1:
            raise RequestError(f"block_length must be >= 1, got {block}", "block_length")
        g = length if block is None else block * -(-length // block)
        if prompt_length + g > self.max_positions:
            raise RequestError(
                f"the prompt ({prompt_length} tokens) plus max_tokens rounded up to whole blocks "
                f"({g}) exceeds the model's max_position_embeddings ({self.max_positions})",
                "max_tokens", "context_length_exceeded")
        if prompt_length > self.prompt_buckets[-1]:
            raise RequestError(f"the prompt has {prompt_length} tokens; the longest accepted is "
                               f"{self.prompt_buckets[-1]}", "prompt", "context_length_exceeded")
        steps = self._steps(knobs.get("steps"), g, block or g, default_g)
        changes = {**knobs, self.defaults.length_knob: g, "block_length": block, "steps": steps}
        if changes.get("top_p") == 1.0:  # the OpenAI default: no filtering, one program
            changes["top_p"] = None
        try:
            config = dataclasses.replace(self.defaults, **changes)
            bucket = bucket_for(prompt_length, self.prompt_buckets)
            config.plan(self.model.config, bucket)  # schedule errors before any compile
        except ConfigError as e:
            raise RequestError(str(e)) from None
        return Program(bucket, config)

    def step_limit(self, g: int) -> int:
        """The most steps a request generating ``g`` tokens may take."""
        return self.max_steps if self.max_steps is not None else g

    def _steps(self, steps: int | None, g: int, block: int, default_g: int) -> int:
        limit, blocks = self.step_limit(g), g // block
        if steps is None:
            per_block = max(1, round(self.defaults.steps * block / default_g))
            steps = min(per_block, max(1, limit // blocks)) * blocks
        if steps > limit:
            where = (f"the server's --max-steps ({limit})" if self.max_steps is not None else
                     f"the generation length ({g} tokens: max_tokens rounded up to whole "
                     "blocks; one token per step at most)")
            raise RequestError(f"steps ({steps}) exceeds {where}", "steps", "steps_limit")
        return steps

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    # ---------------------------------------------------------------- model work
    def run(self, prompts: Sequence[Sequence[int]], program: Program, seeds: Sequence[int],
            emit: Emit, keep_going: Callable[[], bool] | None = None) -> None:
        """Decodes one batch; ``emit(k, tokens [rows, N])`` gets every block in order, each as
        soon as it is final. Rows are left-padded to the bucket and the batch is padded with
        filler rows to a batch size; row ``b`` decodes as it would alone with
        ``PRNGKey(seeds[b])``.

        ``keep_going()`` is asked at the start of every block; False drops the batch there
        (raises :class:`BatchDropped`; the blocks already emitted stay emitted)."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        ids, mask = left_pad([list(p) for p in prompts], self.pad_id, buckets=(program.bucket,),
                             batch_buckets=self.batch_sizes)
        seeds = [*seeds, *[0] * (len(ids) - len(seeds))]  # filler rows
        _, n = program.config.geometry()
        live = _InFlight(len(prompts), program.bucket, n, program.num_blocks, emit, keep_going)
        with self._lock:  # one batch at a time: the host callback reports to it
            self._in_flight = live
            try:
                out = generate(self._watched, ids, mask, config=program.config, key=seeds)
                seqs = np.asarray(out.sequences)
            except Exception:
                if live.dropped:  # the host callback ended the program
                    raise BatchDropped("the batch was dropped between blocks") from None
                raise
            finally:
                self._in_flight = None
        live.finish(seqs)
        self.batches += 1
        self.rows += len(prompts)

    def _on_block(self, block_BN: np.ndarray, start: np.ndarray) -> None:
        live = self._in_flight
        if live is not None:
            live.report(np.asarray(block_BN), int(start))
