"""``dllm-jax serve``: an OpenAI-compatible HTTP server with dynamic batching and one streamed
chunk per final block (docs/serving.md).

Modules: ``engine`` (model, tokenizer, request resolution, the batched sampler call that reports
blocks as they finish), ``scheduler`` (bounded queue, grouping by compiled program, the worker
thread, dropping batches no client waits for), ``text`` (EOS, stop strings, streaming
deltas), ``schemas`` (request bodies and response objects), ``errors`` (HTTP errors in the
OpenAI shape), ``settings`` (a training run's name and saved generation length), ``http``
(the body limit, uvicorn with a bounded shutdown), ``app`` (routes, server-sent events,
``run_server``).
"""

from dllm_jax.serve.app import create_app, run_server
from dllm_jax.serve.engine import Engine, Program
from dllm_jax.serve.scheduler import Job, Scheduler

__all__ = ["Engine", "Job", "Program", "Scheduler", "create_app", "run_server"]
