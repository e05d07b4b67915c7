"""``dllm-jax serve`` against real servers on 127.0.0.1, driven by the official ``openai`` client.

One tiny Dream-family checkpoint with a tiny character-level tokenizer built here (see
``tests/serve/serve_support.py``) is served by uvicorn threads in this process, sharing one
engine, so few programs compile: batch 1 and 16, prompt bucket 64, 8 tokens in two blocks. The
engine here can hold a batch right after its first block, so tests see a batch mid-flight
deterministically. ``tests/serve/test_serve_process.py`` runs the ``dllm-jax serve`` command
itself. Every wait is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import openai
import pytest
import uvicorn
from helpers import tiny_model
from serve_support import WAIT_S, Http, free_port, save_tiny_checkpoint, wait_until

from dllm_jax.cli import main
from dllm_jax.sampling import DreamConfig, LLaDAConfig, generate
from dllm_jax.serve import Engine, create_app
from dllm_jax.serve import engine as serve_engine
from dllm_jax.serve.errors import RequestError
from dllm_jax.serve.http import GracefulServer
from dllm_jax.serve.text import TextAssembler

NAME = "tiny"
DEFAULTS = LLaDAConfig(steps=4, gen_length=8, block_length=4)  # 2 blocks of 2 steps


class HeldEngine(Engine):
    """An engine that can hold a batch right after emitting its first block."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gate = threading.Event()
        self.gate.set()
        self.holding = threading.Event()

    def run(self, prompts, program, seed, emit, keep_going=None):
        def emit_then_hold(k, tokens):
            emit(k, tokens)
            if k == 0 and not self.gate.is_set():
                self.holding.set()
                self.gate.wait(WAIT_S)

        super().run(prompts, program, seed, emit_then_hold, keep_going)

    @contextlib.contextmanager
    def held(self):
        self.holding.clear()
        self.gate.clear()
        try:
            yield
        finally:
            self.gate.set()


class ThreadServer:
    """uvicorn serving an app from a thread on a free port."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started, what="server start")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(WAIT_S)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0,
                             timeout=WAIT_S)

    @property
    def http(self) -> Http:
        return Http(self.port)

    def health(self) -> dict:
        return self.http.health()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny Dream-family model (vocab = tokenizer + MASK) saved with its tokenizer."""
    return tmp_path_factory.mktemp("serve") / NAME


@pytest.fixture(scope="module")
def tokenizer(ckpt):
    return save_tiny_checkpoint(ckpt)


@pytest.fixture(scope="module")
def engine(ckpt, tokenizer):
    return HeldEngine.load(ckpt, defaults=DEFAULTS, name=NAME, prompt_buckets=(64,),
                           batch_sizes=(1, 16))


@pytest.fixture(scope="module")
def server(engine):
    with ThreadServer(create_app(engine, batch_wait_s=0.05)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def reference_text(engine, tokenizer, prompt_ids, config=DEFAULTS, key=0):
    """What ``generate`` alone returns for one prompt, cut at EOS and decoded."""
    seq = np.asarray(generate(engine.model, [prompt_ids], config=config, key=key).sequences)
    tokens = [int(t) for t in seq[0, len(prompt_ids):]]
    eos = engine.model.config.eos_token_id
    if eos in tokens:
        tokens = tokens[:tokens.index(eos)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def test_models_lists_the_checkpoint(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_completion_equals_generate_and_counts_usage(client, engine, tokenizer):
    ids = tokenizer.encode("The capital of France is")
    out = client.completions.create(model=NAME, prompt="The capital of France is",
                                    max_tokens=8)
    assert out.choices[0].text == reference_text(engine, tokenizer, ids)
    assert out.usage.prompt_tokens == len(ids)
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 8
    assert out.usage.total_tokens == len(ids) + out.usage.completion_tokens
    # max_tokens is rounded up to whole blocks (4): 5 -> 8 generated tokens, same text
    again = client.completions.create(model=NAME, prompt=ids, max_tokens=5)
    assert again.choices[0].text == out.choices[0].text


def test_chat_uses_the_chat_template(client, engine, tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."}]
    ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"])
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == reference_text(engine, tokenizer, ids)
    assert out.usage.prompt_tokens == len(ids)


def test_stream_sends_each_block_as_it_finishes(server, client, engine, monkeypatch):
    full = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=8)
    batches = engine.batches
    texts, first_arrived, program_done = [], threading.Event(), threading.Event()

    def generate_and_wait(*args, **kw):  # notes when the compiled program has finished
        out = generate(*args, **kw)
        jax.block_until_ready(out.sequences)
        program_done.set()
        return out

    monkeypatch.setattr(serve_engine, "generate", generate_and_wait)

    def read():
        stream = client.completions.create(model=NAME, prompt="Once upon a time",
                                           max_tokens=8, stream=True)
        for chunk in stream:
            texts.append(chunk.choices[0].text)
            first_arrived.set()

    with engine.held():
        reader = threading.Thread(target=read)
        reader.start()
        wait_until(first_arrived.is_set, what="the first block")
        assert not program_done.is_set()  # block 0 reached the client mid-program
        assert engine.holding.is_set() and engine.batches == batches
        assert len(texts) == 1
    reader.join(WAIT_S)
    assert "".join(texts) == full.choices[0].text
    if full.choices[0].finish_reason == "length":
        assert len(texts) == 3  # block 0, block 1, the finish chunk

    # on the wire: ordered data events ending with [DONE]
    body = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}
    with server.http.stream("/v1/completions", body) as it:
        lines = list(it)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[len("data: "):]) for ln in lines[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] <= 8 and chunks[-1]["choices"] == []
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == full.choices[0].text
    assert chunks[-2]["choices"][0]["finish_reason"] == full.choices[0].finish_reason


def test_chat_stream(client):
    messages = [{"role": "user", "content": "Hello"}]
    full = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8)
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, stream=True)]
    assert "".join(parts) == full.choices[0].message.content


def test_stop_string_cuts_the_completion(client):
    full = client.completions.create(model=NAME, prompt="Count: one two", max_tokens=8)
    text = full.choices[0].text
    assert len(text) >= 6, text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    expected = text[:text.find(stop)]
    out = client.completions.create(model=NAME, prompt="Count: one two", max_tokens=8,
                                    stop=[stop])
    assert out.choices[0].text == expected and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < full.usage.completion_tokens
    streamed = client.completions.create(model=NAME, prompt="Count: one two", max_tokens=8,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_sixteen_concurrent_clients_are_batched(server, client, engine):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(16)]
    one_by_one = [client.completions.create(model=NAME, prompt=p, max_tokens=8).choices[0].text
                  for p in prompts]
    batches, rows = engine.batches, engine.rows
    with ThreadPoolExecutor(17) as pool:
        with engine.held():  # a first batch decodes (held) while the 16 queue behind it
            first = pool.submit(client.completions.create, model=NAME, prompt="Hi",
                                max_tokens=8)
            wait_until(engine.holding.is_set, what="the first batch")
            futures = [pool.submit(client.completions.create, model=NAME, prompt=p,
                                   max_tokens=8) for p in prompts]
            wait_until(lambda: server.health()["queued"] == 16, what="16 queued requests")
        texts = [f.result(WAIT_S).choices[0].text for f in futures]
        first.result(WAIT_S)
    assert texts == one_by_one  # a row's output does not depend on its batch
    assert engine.rows - rows == 17
    assert engine.batches - batches == 2  # the held one and all 16 together


def test_seeded_sampling_is_reproducible(client, engine, tokenizer, server):
    def sample(seed):
        return client.completions.create(model=NAME, prompt="Pick a word:", max_tokens=8,
                                         temperature=1.0, seed=seed).choices[0].text

    batches = engine.batches
    with ThreadPoolExecutor(5) as pool, engine.held():  # all four queue behind a held batch
        first = pool.submit(sample, 3)
        wait_until(engine.holding.is_set, what="the first batch")
        futures = [pool.submit(sample, s) for s in (7, 7, 8, None)]
        wait_until(lambda: server.health()["queued"] == 4, what="4 queued requests")
    a, b, c, _ = (f.result(WAIT_S) for f in futures)
    first.result(WAIT_S)
    assert engine.batches - batches == 2  # the seeded and unseeded requests shared one batch
    hot = dataclasses.replace(DEFAULTS, temperature=1.0)
    prompt = tokenizer.encode("Pick a word:")
    assert a == b == reference_text(engine, tokenizer, prompt, hot, 7)
    assert c == reference_text(engine, tokenizer, prompt, hot, 8) != a


@pytest.mark.parametrize("body,param,fragment", [
    ({"max_tokens": -3}, "max_tokens", "max_tokens must be >= 1"),
    ({"max_tokens": 10 ** 9}, "max_tokens", "max_position_embeddings"),
    ({"prompt": [3 + i % 70 for i in range(200)], "max_tokens": 64}, "max_tokens",
     "exceeds the model's max_position_embeddings (256)"),
    ({"alg": "entropy"}, "alg", "not used by the llada sampler"),
    ({"stepz": 4}, "stepz", "unknown field"),
    ({"steps": 3}, None, "not divisible by the number of blocks"),
    ({"steps": 16}, "steps", "steps (16) exceeds the generation length (8 tokens"),
    ({"steps": 10 ** 12, "max_tokens": 4}, "steps", "exceeds the generation length (4 tokens"),
    ({"prompt": "caf\u00e9"}, "prompt", "'\u00e9' (U+00E9) at position 3 is not in the"),
    ({"prompt": "a\u0000b"}, "prompt", "(U+0000) at position 1 is not in the tokenizer"),
    ({"prompt": "ab\ud800"}, "prompt", "lone surrogate (U+D800) at position 2"),
    ({"stream": True, "stream_options": {"include_usage": True, "x": 1}},
     "stream_options.x", "unknown field"),
    ({"block_length": 0}, "block_length", "block_length must be >= 1"),
    ({"n": 2}, "n", "n must be 1"),
    ({"prompt": ""}, "prompt", "the prompt is empty"),
    ({"temperature": -1}, None, "temperature must be >= 0"),
])
def test_bad_input_is_a_400_before_model_work(server, engine, body, param, fragment):
    batches = engine.batches
    status, out = server.http.post("/v1/completions",
                                   {"model": NAME, "prompt": "Hi", "max_tokens": 8, **body})
    assert status == 400, out
    err = out["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fragment in err["message"], err["message"]
    assert engine.batches == batches


def test_malformed_json_and_client_errors(server, client):
    status, out = server.http.post("/v1/chat/completions", raw=b'{"model": "tiny", "mess')
    assert status == 400 and "malformed JSON" in out["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=[], max_tokens=8)


def test_full_queue_timeout_and_dropped_client(engine):
    """max_queue 1: a dropped stream frees its slot while its batch is still decoding; a
    second live request fills the queue (429); a held request times out (504)."""
    app = create_app(engine, max_queue=1, request_timeout_s=30.0)
    body = {"model": NAME, "prompt": "Hi", "max_tokens": 8}
    with ThreadServer(app) as s, engine.held():
        with s.http.stream("/v1/completions", {**body, "stream": True}) as it:
            first = next(it)  # block 0, then the client drops
        assert first.startswith("data: ")
        wait_until(lambda: s.health()["active"] == 0, what="the dropped slot to free")
        assert engine.holding.is_set()  # ... while its batch is still held mid-flight
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(s.http.post, "/v1/completions", body)
            wait_until(lambda: s.health()["active"] == 1, what="a queued request")
            status, out = s.http.post("/v1/completions", body)
            assert status == 429 and out["error"]["code"] == "queue_full"
            engine.gate.set()
            assert queued.result(WAIT_S)[0] == 200
        assert s.health()["active"] == 0

    impatient = create_app(engine, request_timeout_s=1.0)
    with ThreadServer(impatient) as s, engine.held():
        status, out = s.http.post("/v1/completions", body)
        assert status == 504 and out["error"]["type"] == "timeout_error"
        wait_until(engine.holding.is_set, what="the held batch")


def test_unknown_model_is_404_and_bad_text_in_chat_is_400(server, engine):
    batches = engine.batches
    status, out = server.http.post("/v1/completions",
                                   {"model": "gpt-4", "prompt": "Hi", "max_tokens": 8})
    assert status == 404, out
    assert out["error"]["code"] == "model_not_found" and out["error"]["param"] == "model"
    assert "'gpt-4' does not exist" in out["error"]["message"]
    for content, fragment in [("caf\u00e9", "'\u00e9' (U+00E9) at position 3"),
                              ("x\ud800", "lone surrogate (U+D800) at position 1")]:
        body = {"model": NAME, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Hi"},
                             {"role": "user", "content": content}]}
        status, out = server.http.post("/v1/chat/completions", body)
        assert status == 400 and fragment in out["error"]["message"], out
    assert engine.batches == batches


def test_body_limit_is_checked_before_parsing(engine):
    app = create_app(engine, max_body_bytes=200)
    body = {"model": NAME, "prompt": "Hi", "max_tokens": 8}
    big = json.dumps({**body, "user": "u" * 300}).encode()
    with ThreadServer(app) as s:
        status, out = s.http.post("/v1/completions", raw=big)
        assert status == 413 and out["error"]["code"] == "request_too_large", out
        assert "limit of 200 bytes" in out["error"]["message"]
        # not JSON at all: still 413, so nothing was parsed
        status, out = s.http.post("/v1/completions", raw=b"{" * 300)
        assert status == 413, out
        # a chunked body (no Content-Length) is cut as soon as it passes the limit
        chunks = (big[i:i + 64] for i in range(0, len(big), 64))
        status, out = s.http.post("/v1/completions", raw=chunks)  # http.client: chunked
        assert status == 413, out
        assert s.http.post("/v1/completions", body)[0] == 200


def test_tokenising_and_planning_run_off_the_event_loop(server, engine, monkeypatch):
    """A slow tokenizer or schedule holds only its own request: /health answers meanwhile."""
    started, release = threading.Event(), threading.Event()
    for name in ("completion_prompt", "program"):
        original = getattr(Engine, name)

        def slow(self, *args, _original=original, **kw):
            started.set()
            release.wait(WAIT_S)
            return _original(self, *args, **kw)

        monkeypatch.setattr(engine, name, slow.__get__(engine))
        started.clear()
        release.clear()
        with ThreadPoolExecutor(1) as pool:
            slow_request = pool.submit(server.http.post, "/v1/completions",
                                       {"model": NAME, "prompt": "Hi", "max_tokens": 8})
            wait_until(started.is_set, what=f"the slow {name}")
            t0 = time.monotonic()
            assert server.health()["status"] == "ok"
            assert time.monotonic() - t0 < 1.0, name
            release.set()
            assert slow_request.result(WAIT_S)[0] == 200
        monkeypatch.undo()


def test_graceful_shutdown_lets_a_short_request_finish(engine):
    """A shutdown (what SIGTERM starts) while a batch is held mid-flight: the listener closes,
    the request still completes within the grace period, the worker stops."""
    app = create_app(engine)
    port = free_port()
    uv = GracefulServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                       timeout_graceful_shutdown=4.0), 5.0,
                        lambda deadline: app.state.server.begin_shutdown(
                            asyncio.get_running_loop(), 4.0))
    thread = threading.Thread(target=uv.run, daemon=True)
    http = Http(port)
    full = None
    with engine.held(), ThreadPoolExecutor(1) as pool:
        thread.start()
        wait_until(lambda: uv.started, what="server start")
        answer = pool.submit(http.post, "/v1/completions",
                             {"model": NAME, "prompt": "Hi", "max_tokens": 8})
        wait_until(engine.holding.is_set, what="the held batch")
        uv.handle_exit(signal.SIGTERM, None)
        wait_until(lambda: not http.up(), timeout=10, what="the listener to close")
        engine.gate.set()
        status, full = answer.result(WAIT_S)
    thread.join(WAIT_S)
    assert not thread.is_alive() and app.state.stopped
    assert status == 200 and full["choices"][0]["finish_reason"] in ("length", "stop")


def test_cli_refuses_bad_flags_in_one_line(ckpt, capsys):
    assert main(["serve", "--model", str(ckpt), "--sampler", "imh"]) == 2
    assert main(["serve", "--model", str(ckpt), "--batch-sizes", "1,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--sampler llada and dream" in err[0] and "--batch-sizes" in err[1]


# ------------------------------------------------------------------ host-side pieces


def test_program_resolution_rounds_to_blocks_and_keeps_steps_per_token():
    model = tiny_model("dream", seed=0)
    llada = Engine(model, None, name=NAME, defaults=LLaDAConfig(steps=8, gen_length=16,
                                                                block_length=4))
    p = llada.program(5, 6, {})  # 6 -> 8 tokens (2 blocks); 8 steps per 16 tokens -> 4
    assert (p.bucket, p.config.gen_length, p.config.steps, p.num_blocks) == (32, 8, 4, 2)
    assert llada.program(5, 6, {"top_p": 1.0}).config.top_p is None
    dream = Engine(model, None, name=NAME, defaults=DreamConfig(steps=8, max_new_tokens=16))
    p = dream.program(5, 6, {})  # no blocks: exactly 6 tokens, 3 steps
    assert (p.config.max_new_tokens, p.config.steps, p.num_blocks) == (6, 3, 1)
    assert dream.program(5, 6, {"block_length": 4}).config.max_new_tokens == 8
    with pytest.raises(RequestError, match="remasking is not used by the dream sampler"):
        dream.program(5, 6, {"remasking": "random"})


def _chars(ids):
    return "".join(chr(ord("a") + i) if i < 26 else "\ufffd" for i in ids)


def test_text_assembler_eos_stop_and_partial_characters():
    t = TextAssembler(_chars, eos_id=99, stop=["cd"])
    assert t.add([0, 1, 2]) == "ab"  # "c" could start "cd": held back
    assert t.add([3, 4]) == "" and t.finish_reason == "stop"
    assert t.completion_tokens == 2  # "ab" needs tokens 0, 1
    t = TextAssembler(_chars, eos_id=99, stop=["cd"])
    assert t.add([0, 2]) == "a" and t.add([4, 5]) == "cef" and t.finish() == ""
    assert (t.finish_reason, t.completion_tokens) == ("length", 4)
    t = TextAssembler(_chars, eos_id=99)
    assert t.add([0, 30]) == "a"  # an unfinished character waits for the next block
    assert t.add([1, 99, 2]) == "\ufffdb" and t.finish_reason == "stop"
    assert t.completion_tokens == 4  # three tokens and the EOS
