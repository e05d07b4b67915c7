"""The ``dllm-jax serve`` command as a real process on 127.0.0.1: bounded work per request, the
request timeout and a dropped client cutting a running batch short, SIGTERM within the grace
period, and the defaults a training run saved beside its checkpoint.

One server process (module fixture) serves a tiny checkpoint laid out as a training run
(``<run>/config.yaml`` and ``<run>/model``) with no geometry flags, so its defaults come from
the run; the SIGTERM test starts its own. The long request decodes 64 one-token blocks of
10,000 steps each (allowed by ``--max-steps``): a minute or more on a CPU, so a batch that
ends early was dropped. The request timeout must outlast the long request's compilation and
its first two blocks (one block took 3.3 s on a quiet 2-core machine, the first arrived after
6.7 s), yet stay well under its 64 blocks: 30 s holds for blocks of about 1 to 13 s.
Every call has a timeout and every process is killed in ``finally``.
"""

from __future__ import annotations

import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_support import WAIT_S, ServeProcess, save_tiny_checkpoint, sse_json, wait_until

from dllm_jax.programs.config import DataSpec, ModelSpec, RLConfig, RLProgram
from dllm_jax.programs.demo import DemoConfig, sft_program
from dllm_jax.sampling import LLaDAConfig
from dllm_jax.serve.settings import saved_generation, served_name
from dllm_jax.tasks import get_puzzle
from dllm_jax.train.loop import dump_config
from dllm_jax.train.overrides import to_dict

RUN = "tiny-run"
MAX_STEPS = 1_000_000
TIMEOUT_S = 30.0
BLOCKS, STEPS_PER_BLOCK = 64, 10_000
LONG = {"model": RUN, "prompt": "Hi", "max_tokens": BLOCKS, "block_length": 1,
        "steps": BLOCKS * STEPS_PER_BLOCK, "stream": True}
SHORT = {"model": RUN, "prompt": "Hello", "max_tokens": 8}


def write_run(root, program) -> None:
    """``config.yaml`` as the Trainer writes it for ``program`` (see train/loop.py)."""
    dump_config(root / "config.yaml", {"train": to_dict(program.train),
                                       "program": to_dict(program)})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An RL run on a file: its sampler generates 8 tokens in blocks of 4 with 4 steps."""
    root = tmp_path_factory.mktemp("serve_process") / RUN
    save_tiny_checkpoint(root / "model")
    program = RLProgram(out=str(root), model=ModelSpec(init=str(root / "model")),
                        data=DataSpec(task=None, path="records.jsonl"),
                        rl=RLConfig(sampler=LLaDAConfig(steps=4, gen_length=8,
                                                        block_length=4))).resolved()
    write_run(root, program)
    return root


@pytest.fixture(scope="module")
def served(run_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    with ServeProcess(run_dir / "model", log, "--prompt-buckets", "64", "--batch-sizes", "1",
                      "--max-steps", str(MAX_STEPS), "--request-timeout", str(TIMEOUT_S),
                      "--max-body-bytes", "65536") as proc:
        status, out = proc.http.post("/v1/completions", SHORT)  # compiles SHORT's program
        assert status == 200, (out, proc.log())
        yield proc
        assert "Traceback" not in proc.log(), proc.log()


def test_run_name_and_saved_generation_are_the_defaults(served):
    http = served.http
    assert [m["id"] for m in http.request("GET", "/v1/models")[1]["data"]] == [RUN]
    defaults = http.health()["defaults"]
    assert defaults == {"max_tokens": 8, "block_length": 4, "steps": 4, "max_steps": MAX_STEPS}
    assert "defaults from" in served.log() and "rl.sampler" in served.log()


def test_saved_generation_of_a_task_run_and_the_served_name(tmp_path):
    """The demo's SFT run on a task: one block of the task's answer, one token per step."""
    root = tmp_path / "sft"
    (root / "model").mkdir(parents=True)
    write_run(root, sft_program(DemoConfig.quick(), root).resolved())
    a = get_puzzle("addition").answer_length
    settings, where = saved_generation(root / "model")
    assert settings == {"gen_length": a, "block_length": a, "steps": a}
    assert "task addition" in where
    assert served_name(root / "model") == "sft" and served_name(root) == "sft"
    assert saved_generation(tmp_path) == ({}, None)  # no run config: nothing


def test_steps_are_bounded_before_anything_is_queued(served):
    http = served.http
    batches = http.health()["batches"]
    t0 = time.monotonic()
    status, out = http.post("/v1/completions", {**SHORT, "steps": 20_000_000, "block_length": 8})
    assert time.monotonic() - t0 < 2.0
    assert status == 400, out
    assert out["error"]["param"] == "steps" and out["error"]["code"] == "steps_limit"
    assert f"--max-steps ({MAX_STEPS})" in out["error"]["message"]
    assert http.health()["batches"] == batches


@pytest.mark.parametrize("body,status,code", [
    ({**SHORT, "model": "gpt-5"}, 404, "model_not_found"),
    ({**SHORT, "prompt": "\u00e9t\u00e9"}, 400, "invalid_value"),
    ({**SHORT, "prompt": "a\u0000"}, 400, "invalid_value"),
    ({**SHORT, "prompt": "a\ud800"}, 400, "invalid_value"),
    ({**SHORT, "stream": True, "stream_options": {"include_usage": True, "extra": 1}}, 400,
     "invalid_value"),
    ({**SHORT, "user": "u" * 70_000}, 413, "request_too_large"),
])
def test_hostile_input_is_a_4xx(served, body, status, code):
    got, out = served.http.post("/v1/completions", body)
    assert (got, out["error"]["code"]) == (status, code), out


def _stream_long(http, until_first_chunk, then=None):
    """Streams LONG; ``then()`` runs once the first block arrived (the batch is decoding).
    Returns the lines and the arrival time of each block chunk."""
    lines, times = [], []
    with http.stream("/v1/completions", LONG) as it:
        for line in it:
            lines.append(line)
            if line.startswith('data: {"id"'):
                times.append(time.monotonic())
            if len(times) == until_first_chunk and then is not None:
                if then() == "drop":
                    break
                then = None
    return lines, times


def test_request_timeout_drops_the_running_batch(served):
    http = served.http
    dropped = http.health()["dropped"]
    with ThreadPoolExecutor(1) as pool:
        short = []

        def queue_short():
            def post():
                out = http.post("/v1/completions", SHORT)
                return out, time.monotonic()

            short.append(pool.submit(post))
            wait_until(lambda: http.health()["active"] == 2, what="SHORT queued behind LONG")

        t0 = time.monotonic()
        lines, times = _stream_long(http, 2, queue_short)
        t_error = time.monotonic()
        (status, out), t_short = short[0].result(WAIT_S)
    assert lines[-1] == "data: [DONE]"
    assert sse_json(lines[-2])["error"]["type"] == "timeout_error"
    assert TIMEOUT_S - 0.5 <= t_error - t0 <= TIMEOUT_S + 2.0
    assert status == 200, out
    wait_until(lambda: http.health()["dropped"] == dropped + 1, what="the dropped batch")
    # the worker was free long before LONG's 64 blocks would have ended
    block_s = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
    assert t_short < times[0] + (BLOCKS - 1) * block_s / 2, (t_short - times[0], block_s)


def test_a_client_that_leaves_drops_the_running_batch(served):
    http = served.http
    dropped = http.health()["dropped"]
    with ThreadPoolExecutor(1) as pool:
        short = []

        def queue_short_and_leave():
            short.append(pool.submit(lambda: (http.post("/v1/completions", SHORT),
                                              time.monotonic())))
            wait_until(lambda: http.health()["active"] == 2, what="SHORT queued behind LONG")
            return "drop"

        _, times = _stream_long(http, 2, queue_short_and_leave)
        (status, out), t_short = short[0].result(WAIT_S)
    assert status == 200, out
    wait_until(lambda: http.health()["dropped"] == dropped + 1, what="the dropped batch")
    block_s = times[1] - times[0]
    assert t_short < times[0] + (BLOCKS - 1) * block_s / 2, (t_short - times[0], block_s)


def test_sigterm_answers_in_flight_requests_and_exits_0_in_the_grace_period(run_dir,
                                                                            tmp_path):
    grace = 3.0
    with ServeProcess(run_dir / "model", tmp_path / "serve.log", "--prompt-buckets", "64",
                      "--batch-sizes", "1", "--max-steps", str(MAX_STEPS),
                      "--shutdown-timeout", str(grace), "--log-level", "info") as proc:
        http = proc.http
        with ThreadPoolExecutor(1) as pool:
            queued, sent = [], []

            def queue_then_sigterm():
                queued.append(pool.submit(http.post, "/v1/completions", SHORT))
                wait_until(lambda: http.health()["active"] == 2, what="SHORT queued")
                sent.append(time.monotonic())
                proc.proc.send_signal(signal.SIGTERM)

            lines, _ = _stream_long(http, 1, queue_then_sigterm)
            answered = time.monotonic()
            status, out = queued[0].result(WAIT_S)
            code = proc.proc.wait(timeout=WAIT_S)
            exited = time.monotonic()
        log = proc.log()
    assert code == 0, log
    assert exited - sent[0] < grace + 1.0, (exited - sent[0], log)
    assert answered - sent[0] < grace, log
    assert lines[-1] == "data: [DONE]", lines
    assert sse_json(lines[-2])["error"]["code"] == "shutting_down", lines
    assert status == 503 and out["error"]["code"] == "shutting_down", out
    assert "Application shutdown complete" in log and "Traceback" not in log, log
