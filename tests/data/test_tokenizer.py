"""The tokenizer loader: local files only, no custom code, nothing on the console, and a missing
tokenizer is one ConfigError line (also through ``dllm-jax generate --json``)."""

import json
import sys

import pytest

from dllm_jax.cli import main
from dllm_jax.data.chartok import CharTokenizer
from dllm_jax.data.tokenizer import load_tokenizer
from dllm_jax.errors import ConfigError
from dllm_jax.weights.hf import export_hf

# What LLaDA's own config.json has: model classes in the checkpoint's custom code.
AUTO_MAP = {"AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}


@pytest.fixture
def no_console_questions(monkeypatch):
    """Fails the test if anything calls input() (transformers' "run the custom code? [y/N]")."""
    asked = []

    def answer(prompt=""):
        asked.append(prompt)
        raise EOFError

    monkeypatch.setattr("builtins.input", answer)
    return asked


@pytest.fixture
def checkpoint_without_tokenizer(tmp_path, tiny_llada):
    """An HF checkpoint (config.json with auto_map, model.safetensors) and no tokenizer files."""
    ckpt = export_hf(tiny_llada, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "auto_map": AUTO_MAP}))
    return ckpt


def _one_line(e):
    return len(str(e).splitlines()) == 1


def test_checkpoint_without_tokenizer_is_one_line(checkpoint_without_tokenizer, capsys,
                                                  no_console_questions):
    with pytest.raises(ConfigError) as e:
        load_tokenizer(checkpoint_without_tokenizer)
    assert str(e.value) == (f"no tokenizer in {checkpoint_without_tokenizer}: none of "
                            "tokenizer.json, tokenizer_config.json, tokenizer.model, "
                            "vocab.json, vocab.txt")
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    assert no_console_questions == []


def test_generate_json_without_tokenizer_keeps_stdout_clean(checkpoint_without_tokenizer, capsys,
                                                            no_console_questions):
    rc = main(["generate", "--model", str(checkpoint_without_tokenizer), "--prompt", "hi",
               "--json"])
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dllm-jax: error: no tokenizer in ")
    assert no_console_questions == []


def test_tokenizer_config_without_vocabulary(shared_dir, capsys, no_console_questions):
    """LLaDA's tokenizer_config.json (which asks for trust_remote_code) without its vocabulary
    file: transformers fails, and says so in one line, quietly."""
    path = shared_dir / "tokenizers" / "llada-8b-instruct-config"
    with pytest.raises(ConfigError, match=f"cannot load a tokenizer in {path}: ") as e:
        load_tokenizer(path)
    assert _one_line(e.value)
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""  # transformers' warnings are hushed too
    assert no_console_questions == []


def test_a_console_question_never_reaches_stdout(tmp_path, monkeypatch, capsys):
    """Where a transformers version asks "run the custom code? [y/N]" (it calls input()), the
    question goes to stderr and is answered at once (stdin reads as empty), never waiting."""
    import transformers

    (tmp_path / "tokenizer_config.json").write_text("{}")
    stdin, stdout = sys.stdin, sys.stdout

    def asking(*args, **kwargs):
        try:
            answer = input("Do you wish to run the custom code? [y/N] ")
        except Exception as e:  # transformers turns a failed question into a ValueError
            raise ValueError("custom code needs trust_remote_code=True") from e
        raise AssertionError(f"the question was answered {answer!r}")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", asking)
    with pytest.raises(ConfigError, match="custom code needs trust_remote_code=True"):
        load_tokenizer(tmp_path)
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "[y/N]" in cap.err
    assert sys.stdin is stdin and sys.stdout is stdout


def test_missing_directory_is_one_line():
    with pytest.raises(ConfigError, match="no tokenizer at /nonexistent/tok: not a directory"):
        load_tokenizer("/nonexistent/tok")


def test_real_tokenizer_directory_loads(shared_dir):
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    tok = load_tokenizer(shared_dir / "tokenizers" / "qwen2.5")
    assert tok.encode("Hello world") == [9707, 1879]
    assert len(tok) == 151665 and tok.chat_template
    assert hf_logging.get_verbosity() == verbosity  # put back after loading


def test_character_tokenizer_directory_loads(tmp_path):
    CharTokenizer().save(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, CharTokenizer) and tok.decode(tok.encode("12+34=")) == "12+34="
