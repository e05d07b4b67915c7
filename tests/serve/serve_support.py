"""What the server tests share: a tiny character-level HF tokenizer with a chat template (built
here, so a fresh clone tests the server without any tokenizer files), a tiny checkpoint saved
with it, raw HTTP on 127.0.0.1, and a ``dllm-jax serve`` subprocess. Every wait is bounded."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

from helpers import tiny_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dllm_jax.data.tokenizer import load_tokenizer
from dllm_jax.weights import save_checkpoint

WAIT_S = 60.0
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARS = string.ascii_letters + string.digits + " .,:;!?'\"-+*/=()\n"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def save_tiny_tokenizer(path: Path):
    """A one-character-per-token HF tokenizer (ASCII letters, digits, some punctuation, three
    special tokens; no unknown token, so any other character cannot be encoded) with a
    ChatML-style chat template, saved to ``path`` and loaded back as the server loads it."""
    vocab = {t: i for i, t in enumerate([*SPECIALS, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return load_tokenizer(path)


def save_tiny_checkpoint(path: Path):
    """A tiny Dream-family model (vocabulary: the tokenizer's ids and MASK) saved to ``path``
    with the tiny tokenizer; returns the tokenizer."""
    tokenizer = save_tiny_tokenizer(path.parent / f"{path.name}-tokenizer")
    model = tiny_model("dream", seed=3, vocab_size=len(tokenizer) + 1,
                       mask_token_id=len(tokenizer), bos_token_id=None,
                       eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                       pad_token_id=tokenizer.pad_token_id, hidden_size=16, num_heads=2,
                       num_kv_heads=1, head_dim=8, intermediate_size=32)
    save_checkpoint(model, path)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def wait_until(cond, timeout=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """Raw HTTP to a server (stdlib only): JSON posts and server-sent-event lines."""

    def __init__(self, port: int):
        self.port = port

    def _send(self, method: str, path: str, body: bytes | None = None, timeout=WAIT_S,
              headers: dict[str, str] | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        return conn, conn.getresponse()

    def request(self, method: str, path: str, body=None, raw: bytes | None = None,
                timeout=WAIT_S, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn, resp = self._send(method, path, data, timeout, headers)
        try:
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def post(self, path: str, body=None, raw: bytes | None = None, timeout=WAIT_S,
             headers: dict[str, str] | None = None) -> tuple[int, dict]:
        return self.request("POST", path, body, raw, timeout, headers)

    def health(self, timeout=WAIT_S) -> dict:
        return self.request("GET", "/health", timeout=timeout)[1]

    def up(self) -> bool:
        with contextlib.suppress(OSError):
            return self.health(timeout=1)["status"] == "ok"
        return False

    @contextlib.contextmanager
    def stream(self, path: str, body, timeout=WAIT_S):
        """Yields an iterator over the non-empty lines of a streamed response; leaving the
        block closes the connection (a client that drops)."""
        conn, resp = self._send("POST", path, json.dumps(body).encode(), timeout)

        def lines():
            for _ in range(10_000):
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield line.decode().strip()

        try:
            yield lines()
        finally:
            conn.close()


def sse_json(line: str) -> dict:
    assert line.startswith("data: ") and line != "data: [DONE]", line
    return json.loads(line[len("data: "):])


class ServeProcess:
    """``python -m dllm_jax.cli serve --model MODEL --port FREE ARGS...`` on 127.0.0.1, its
    stderr in ``log``; killed on exit if still running."""

    def __init__(self, model: Path, log: Path, *args: str):
        self.port = free_port()
        self.http = Http(self.port)
        self.log_path = log
        self.cmd = [sys.executable, "-m", "dllm_jax.cli", "serve", "--model", str(model),
                    "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self._log, stderr=self._log)
        try:
            wait_until(lambda: self.http.up() or self.proc.poll() is not None, timeout=180,
                       what="the serve subprocess")
            assert self.proc.poll() is None, f"the serve subprocess exited:\n{self.log()}"
        except BaseException:
            self.__exit__()
            raise
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        self._log.close()
