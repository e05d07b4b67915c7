"""The ``dllm_jax`` model of lm-evaluation-harness, end to end on local tasks.

The tasks are ``tests/integrations/lm_eval_tasks/*.yaml`` over the jsonl file beside them
(nothing is downloaded); the model is a tiny random checkpoint with the character tokenizer.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from dllm_jax.cli.main import main as cli_main  # noqa: E402
from dllm_jax.data.chartok import CharTokenizer, model_config  # noqa: E402
from dllm_jax.errors import ConfigError  # noqa: E402
from dllm_jax.integrations.lm_eval import DllmJaxLM  # noqa: E402
from dllm_jax.model.transformer import init_model  # noqa: E402
from dllm_jax.sampling import LLaDAConfig, generate  # noqa: E402
from dllm_jax.weights import save_checkpoint  # noqa: E402

TASKS = Path(__file__).parent / "lm_eval_tasks"
REPO = Path(__file__).resolve().parents[2]
SAMPLER = dict(steps=4, gen_length=4, block_length=4, temperature=1.0)  # draws use the keys


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory) -> Path:
    from helpers import sharpened

    tok = CharTokenizer()
    cfg = model_config(tok, hidden_size=32, num_layers=2, num_heads=4,
                       max_position_embeddings=64)
    out = tmp_path_factory.mktemp("lm_eval") / "model"
    save_checkpoint(sharpened(init_model(cfg, seed=3)), out)
    tok.save(out)
    return out


@pytest.fixture(scope="module")
def lm(char_ckpt) -> DllmJaxLM:
    return DllmJaxLM(pretrained=str(char_ckpt), **SAMPLER, mc_num=8, batch_size=4)


def _key(seed: int, ids: list[int], repeat: int = 0) -> np.ndarray:
    """A request's key as docs/eval.md states it."""
    crc = zlib.crc32(np.asarray(ids, np.int32).tobytes()) & 0x7FFFFFFF
    return np.asarray(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), crc),
                                         repeat))


def _reference_text(lm: DllmJaxLM, prompt: str, config, until: list[str]) -> str:
    """``dllm_jax.generate`` of the prompt alone, decoded as LLaDA's adapter does."""
    ids = lm.tokenizer.encode(prompt)
    seqs = np.asarray(generate(lm.runner.model, [ids], config=config,
                               key=_key(0, ids)[None]).sequences)
    text = lm.tokenizer.decode(seqs[0, len(ids):], skip_special_tokens=False)
    for stop in until:
        text = text.split(stop)[0]
    return text.replace("<eos>", "").replace("<bos>", "")


def test_simple_evaluate_end_to_end(char_ckpt, lm, monkeypatch):
    monkeypatch.chdir(TASKS)  # the YAML files name their jsonl file relative to here
    res = lm_eval.simple_evaluate(
        model="dllm_jax", model_args={"pretrained": str(char_ckpt), **SAMPLER, "mc_num": 8,
                                      "is_check_greedy": True},
        tasks=["demo_addition_gen", "demo_addition_mc"], batch_size=4, log_samples=True,
        task_manager=TaskManager(include_path=str(TASKS)))
    gen, mc = res["results"]["demo_addition_gen"], res["results"]["demo_addition_mc"]
    assert 0.0 <= gen["exact_match,none"] <= 1.0 and 0.0 <= mc["acc,none"] <= 1.0
    samples = res["samples"]["demo_addition_gen"]
    assert len(samples) == 8
    for s in samples:
        prompt, kw = s["arguments"][0]
        assert s["resps"][0][0] == _reference_text(lm, prompt, LLaDAConfig(**SAMPLER),
                                                   kw["until"])
    mc_samples = res["samples"]["demo_addition_mc"]
    args = [a for s in mc_samples for a in s["arguments"]]
    lls = [r[0] for s in mc_samples for r in s["resps"]]
    assert all(np.isfinite(ll) and ll < 0 and isinstance(g, bool) for ll, g in lls)
    # The same requests again, reversed, through a model instance of its own: the same values
    # (the estimate depends on the seed and the request only).
    again = lm.loglikelihood([Instance("loglikelihood", {}, a, i)
                              for i, a in enumerate(args[::-1])])
    assert [ll for ll, _ in again[::-1]] == pytest.approx([ll for ll, _ in lls], abs=1e-5)


def test_max_gen_toks_is_honoured_or_refused(lm):
    req = [Instance("generate_until", {}, ("331+970=", {"until": [], "max_gen_toks": 8}), 0)]
    out = lm.generate_until(req)
    want = _reference_text(lm, "331+970=", LLaDAConfig(**{**SAMPLER, "gen_length": 8}), [])
    assert out == [want] and len(want) >= 1
    bad = [Instance("generate_until", {}, ("331+970=", {"until": [], "max_gen_toks": 6}), 0)]
    with pytest.raises(ConfigError, match="max_gen_toks 6 does not fit the sampler .*"
                                          "not divisible by block_length 4"):
        lm.generate_until(bad)


def test_rolling_is_the_elbo_of_the_whole_text(lm):
    text = "12+34=64"
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ((ll, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("", text), 0)])
    assert np.isfinite(rolling) and rolling == ll


def test_no_chat_template_is_one_line(lm):
    with pytest.raises(ConfigError, match="has no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "1+1="}])


BAD = [("stepz=3", "unknown model_args stepz"),
       ("gen_length=10,block_length=4", "gen_length 10 is not divisible by block_length 4"),
       ("sampler=dream,remasking=random", "model_args remasking not used by sampler=dream"),
       ("mc_num=6,batch_size=4", "mc_num 6 must be a positive multiple of batch_size 4"),
       ("steps=many", "model_args steps: expected an integer, got 'many'"),
       ("sampler=greedy", "model_args sampler='greedy': choose from llada, dream, imh")]


@pytest.mark.parametrize("args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_model_args_fail_before_loading(tmp_path, args, message):
    # tmp_path holds no model: loading it would fail with another message
    with pytest.raises(ConfigError) as e:
        DllmJaxLM.create_from_arg_string(f"pretrained={tmp_path},{args}")
    assert message in str(e.value) and "\n" not in str(e.value)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=TASKS, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def test_module_command_line_errors_are_one_line(char_ckpt):
    r = _run("-m", "dllm_jax.integrations.lm_eval", "--model", "dllm_jax", "--model_args",
             f"pretrained={char_ckpt},stepz=1", "--tasks", "demo_addition_gen",
             "--include_path", ".")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown model_args stepz;")
    hide = ("import importlib.util as u, runpy; f = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'lm_eval' else f(n, *a); "
            "runpy.run_module('dllm_jax.integrations.lm_eval', run_name='__main__')")
    r = _run("-c", hide)
    assert r.returncode != 0 and r.stderr.strip() == (
        "error: lm-eval is not installed; install it with: pip install 'dllm-jax[lm-eval]'")


def test_dllm_jax_eval_lm_eval(char_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(TASKS)
    common = ["eval", "lm-eval", "--model", "dllm_jax", "--tasks", "demo_addition_gen",
              "--include_path", ".", "--limit", "2"]
    args = ",".join(f"{k}={v}" for k, v in SAMPLER.items())
    assert cli_main([*common, "--model_args", f"pretrained={char_ckpt},{args}",
                     "--output_path", str(tmp_path / "out")]) == 0
    assert "demo_addition_gen" in capsys.readouterr().out
    assert list((tmp_path / "out").rglob("results_*.json"))
    assert cli_main([*common, "--model_args", f"pretrained={char_ckpt},stepz=1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "dllm-jax: error: unknown model_args stepz;")
    monkeypatch.setattr("dllm_jax.cli.eval.lm_eval_missing", lambda: True)
    assert cli_main([*common, "--model_args", f"pretrained={char_ckpt}"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dllm-jax: error: lm-eval is not installed; install it with: "
        "pip install 'dllm-jax[lm-eval]'")


def test_hf_tokenizer_rules():
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    from dllm_jax.integrations.requests import Codec, cut_at_stops, encode_pair, request_keys

    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, " ": 5}
    raw = Tokenizer(models.BPE(vocab, merges=[]))
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
        ("<s>", 0)])
    raw.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    codec = Codec(tok)
    assert codec.encode("ab") == [0, 2, 3]
    assert encode_pair(codec, "ab ", "c") == ([0, 2, 3], [5, 4])  # the space moves over
    assert encode_pair(codec, "", "ab") == ([0], [2, 3])
    text = codec.decode_raw([2, 3, 1, 4, 1])
    assert text == "ab</s>c</s>"
    assert codec.strip_special(cut_at_stops(text, ["</s>c", "b"])) == "a"
    # each stop string in turn, in the text cut so far (LLaDA's loop): the second one
    # straddles the first cut and no longer matches
    assert cut_at_stops(text, ["c", "b</s>c"]) == "ab</s>"
    assert codec.strip_special(text) == "abc"  # after an EOS, text stays (as LLaDA's adapter)
    k = request_keys(0, [[1, 2], [3], [1, 2]])
    assert (k[0] != k[2]).any() and (request_keys(0, [[3], [1, 2]]) == k[[1, 0]]).all()
