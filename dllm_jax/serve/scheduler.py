"""Dynamic batching: a bounded queue of jobs and one worker thread that decodes them in batches.

A job's *group* is what must be equal for two jobs to share a batch: the compiled program
(prompt bucket, generation length, every sampler knob, temperature included, since the sampler
compiles it in). Seeds never split a batch: every row gets its own PRNG key, ``PRNGKey(seed)``
for a request with a seed and a fresh random one otherwise, and the sampler decodes each row
exactly as it would alone with its key, so a seeded request is reproducible and equals
``generate(model, [prompt], key=seed)`` whatever shares its batch. (Deterministic decoding
ignores the keys.)

The worker takes the oldest live job, waits up to ``batch_wait_s`` for more of its group, and
decodes up to ``engine.max_batch`` of them together. A job's slot (its place in the bound
``max_queue``) is freed as soon as its client is done with it (answered, timed out or
disconnected); a cancelled job still queued is dropped, one already decoding stays in its batch
as a filler row, and a batch whose jobs are all cancelled is dropped at the start of its next
block (the engine asks ``keep_going`` there), so the worker goes on to the next batch.
:meth:`Scheduler.close` drops the running batch the same way and fails what is queued.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from dllm_jax.serve.engine import Engine, Program
from dllm_jax.serve.errors import BatchDropped, EngineFailure, QueueFull, Unavailable

log = logging.getLogger("dllm_jax.serve")


class BlockEvent(NamedTuple):
    """Block ``index`` of a job's generation is final: its ``N`` token ids."""

    index: int
    tokens: list[int]


class DoneEvent(NamedTuple):
    """Every block was delivered."""


class FailedEvent(NamedTuple):
    error: Unavailable


Event = BlockEvent | DoneEvent | FailedEvent


@dataclasses.dataclass(eq=False)
class Job:
    """One request's generation.

    Attributes:
      prompt: token ids.
      program: the resolved program (see :meth:`Engine.program`).
      seed: the request's seed, or None.
      deliver: called with each :data:`Event` from the worker (must be thread-safe and never
        raise).
    """

    prompt: list[int]
    program: Program
    seed: int | None
    deliver: Callable[[Event], None]
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def group(self) -> tuple[Any, ...]:
        return (self.program,)


class Scheduler:
    """The queue and the worker thread in front of an :class:`Engine`.

    Args:
      engine: the engine (one batch at a time).
      max_queue: live jobs (queued or decoding) admitted at once; more get ``QueueFull``.
      batch_wait_s: how long the oldest job waits for others of its group.
    """

    def __init__(self, engine: Engine, *, max_queue: int = 64, batch_wait_s: float = 0.01):
        self.engine = engine
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self._queue: collections.deque[Job] = collections.deque()
        self._live: set[Job] = set()
        self._cond = threading.Condition()
        self._closing = False
        self.dropped = 0  # batches dropped between blocks
        self._rng = random.SystemRandom()
        self._worker = threading.Thread(target=self._loop, name="dllm-jax-serve", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def close(self, timeout: float | None = None) -> bool:
        """Stops admitting jobs, fails the queued ones (``Unavailable``), drops the running
        batch at its next block, and waits up to ``timeout`` for the worker; returns whether
        it stopped (a batch still compiling, or in one long block, can outlast the wait)."""
        with self._cond:
            self._closing = True
            queued, self._queue = list(self._queue), collections.deque()
            self._cond.notify_all()
        for job in queued:
            job.deliver(FailedEvent(Unavailable("the server is shutting down")))
        if self._worker.is_alive():
            self._worker.join(timeout)
        return not self._worker.is_alive()

    def submit(self, job: Job) -> None:
        """Queues a job (raises ``QueueFull`` or ``Unavailable`` when shutting down)."""
        with self._cond:
            if self._closing:
                raise Unavailable("the server is shutting down")
            if len(self._live) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests); retry later")
            self._live.add(job)
            self._queue.append(job)
            self._cond.notify_all()

    def release(self, job: Job) -> None:
        """The client is done with ``job`` (answered, timed out or gone): frees its slot."""
        job.cancelled.set()
        with self._cond:
            self._live.discard(job)
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"queued": sum(not j.cancelled.is_set() for j in self._queue),
                    "active": len(self._live), "batches": self.engine.batches,
                    "rows": self.engine.rows, "dropped": self.dropped}

    # ---------------------------------------------------------------- the worker
    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._decode(batch)

    def _next_batch(self) -> list[Job] | None:
        """The oldest live job and up to ``max_batch - 1`` others of its group (FIFO); None
        once closing with nothing left."""
        with self._cond:
            while True:
                self._queue = collections.deque(
                    j for j in self._queue if not j.cancelled.is_set())
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                head = self._queue[0]
                limit = self.engine.max_batch
                deadline = time.monotonic() + self.batch_wait_s
                while (not self._closing and self._count(head) < limit
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(left)
                batch = [j for j in self._queue
                         if j.group == head.group and not j.cancelled.is_set()][:limit]
                if batch:
                    taken = set(batch)
                    self._queue = collections.deque(j for j in self._queue if j not in taken)
                    return batch

    def _count(self, head: Job) -> int:
        return sum(j.group == head.group and not j.cancelled.is_set() for j in self._queue)

    def _decode(self, batch: list[Job]) -> None:
        head = batch[0]
        seeds = [self._rng.randrange(2 ** 63) if j.seed is None else j.seed for j in batch]

        def emit(k: int, tokens_RN: np.ndarray) -> None:
            for job, row in zip(batch, tokens_RN, strict=True):
                if not job.cancelled.is_set():
                    job.deliver(BlockEvent(k, [int(t) for t in row]))

        def keep_going() -> bool:  # asked at every block start
            return not self._closing and not all(j.cancelled.is_set() for j in batch)

        try:
            self.engine.run([j.prompt for j in batch], head.program, seeds, emit, keep_going)
        except BatchDropped:
            self.dropped += 1
            log.info("dropped a batch of %d between blocks (%s)", len(batch),
                     "shutting down" if self._closing else "every client left")
            for job in batch:
                job.deliver(FailedEvent(Unavailable("the server is shutting down")))
            return
        except Exception as e:  # the worker must outlive a failed batch
            first = (str(e).strip().splitlines() or [""])[0]
            failure = FailedEvent(EngineFailure(f"generation failed: {type(e).__name__}: {first}"))
            for job in batch:
                job.deliver(failure)
            return
        for job in batch:
            job.deliver(DoneEvent())
