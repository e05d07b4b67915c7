"""Training programs: config overrides, data loading, the train CLI, and exact resume after
SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from dllm_jax.errors import ConfigError
from dllm_jax.objectives import LOSSES, get_loss
from dllm_jax.programs.config import RLProgram, SFTProgram
from dllm_jax.tasks import get_puzzle
from dllm_jax.train.overrides import dump_yaml, load_config, to_dict
from dllm_jax.weights import generation_settings

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=4",
        "data.num_train=512", "train.batch_size=16", "train.log_every=1"]


def test_overrides_yaml_and_set(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: x\ntrain:\n  steps: 7\n  optim:\n    lr: 0.01\nrl:\n  budget: 2\n")
    prog = load_config(RLProgram, cfg, ["train.optim.lr=1e-5", "rl.sampler.temperature=0.5",
                                        "train.mesh=[1, 8, 1]"])
    assert prog.out == "x" and prog.train.steps == 7 and prog.train.optim.lr == 1e-5
    assert prog.rl.budget == 2 and prog.rl.sampler.temperature == 0.5
    assert prog.train.mesh == (1, 8, 1)
    assert prog.train.optim.schedule == "constant"  # untouched defaults survive
    dump_yaml(prog, tmp_path / "resolved.yaml")
    assert load_config(RLProgram, tmp_path / "resolved.yaml") == prog


@pytest.mark.parametrize("sets,msg", [
    (["trian.steps=3"], "unknown config key 'trian'"),
    (["train.optim.learning_rate=3"], "unknown config key 'train.optim.learning_rate'"),
    (["train.steps=abc"], "train.steps: expected an integer"),
    (["train.steps=0"], "steps and batch_size must be >= 1"),
    (["data.path=x.jsonl"], "exactly one of data.task and data.path"),
    (["rl.loss=ppo"], "rl.loss must be one of"),
    (["train.steps"], "expects key=value"),
    (["rl.delta=1.0"], "rl.delta does not apply to loss 'tracerl'"),
    (["rl.loss=wd1", "rl.beta=0.1"], "rl.beta does not apply to loss 'wd1'"),
    (["rl.loss=diffu_grpo", "rl.budget=2"], "rl.budget does not apply to loss 'diffu_grpo'"),
    (["rl.loss=agdo_rl", "rl.selector=atpo"], "rl.selector does not apply to loss 'agdo_rl'"),
    (["rl.budget=9"], r"rl.budget must be in \[1, 8\]"),
    (["rl.loss=diffu_grpo", "rl.eps=1.5"], "eps .PPO clip range. must be in"),
])
def test_override_errors(sets, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(RLProgram, None, sets)


@pytest.mark.parametrize("sets,msg", [
    (["sft.loss=tracerl"], r"sft.loss must be one of \['agdo_sft', 'sft'\]"),
    (["sft.gamma=1.0"], "sft.gamma does not apply to loss 'sft'"),
    (["sft.loss=agdo_sft", "sft.n_per_step=0"], "n_per_step must be >= 1"),
])
def test_sft_override_errors(sets, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(SFTProgram, None, sets)


@pytest.mark.parametrize("sets,want", [
    ([], {"loss": "tracerl", "eps": 0.2, "beta": 0.01, "advantage": "zscore",
          "inner_iterations": 1, "selector": "uniform", "budget": 1, "delta": None}),
    (["rl.loss=diffu_grpo"], {"eps": 0.5, "beta": 0.04, "inner_iterations": 12,
                              "p_mask_prompt": 0.15, "advantage": "center", "budget": None,
                              "selector": None}),
    (["rl.loss=diffu_grpo", "rl.eps=0.3", "rl.inner_iterations=2"],
     {"eps": 0.3, "beta": 0.04, "inner_iterations": 2}),
    (["rl.loss=wd1"], {"eps": None, "beta": None, "p_mask_prompt": 0.15, "advantage": "center"}),
    (["rl.loss=agdo_rl", "rl.budget=3"], {"delta": 5.0, "eps": 0.2, "beta": 0.0,
                                         "n_per_step": 1, "budget": 3}),
])
def test_printed_rl_config_shows_the_losses_published_defaults(capsys, sets, want):
    """Unset knobs are printed with the chosen loss's published default (written out here
    from the papers); on addition the sampler makes the 4-token answer in 4 steps, and the
    TraceRL budget is ceil(4 / shrinkage 8) = 1 state per rollout."""
    from dllm_jax.cli import main

    args = ["train", "rl", *[x for s in sets for x in ("--set", s)], "--print-config"]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {k: printed["rl"][k] for k in want} == want
    assert printed["rl"]["sampler"]["gen_length"] == 4 and printed["rl"]["sampler"]["steps"] == 4


def test_printed_agdo_rl_config_rolls_out_in_the_attention_guided_order(capsys):
    """AGDO-RL trains on the order its rollouts decode in, so the resolved sampler uses the
    attention-guided ``max_s`` rule (full attention, no KV cache)."""
    from dllm_jax.cli import main

    assert main(["train", "rl", "--set", "rl.loss=agdo_rl", "--print-config"]) == 0
    sampler = yaml.safe_load(capsys.readouterr().out)["rl"]["sampler"]
    assert (sampler["remasking"], sampler["cache"]) == ("max_s", "none")


def test_printed_sft_config_shows_the_losses_published_defaults(capsys):
    from dllm_jax.cli import main

    assert main(["train", "sft", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["sft"] == {
        "loss": "sft", "eps": 1e-3, "gamma": None, "n_per_step": None}
    assert main(["train", "sft", "--set", "sft.loss=agdo_sft", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["sft"] == {
        "loss": "agdo_sft", "eps": None, "gamma": 100.0, "n_per_step": 1}


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTProgram, tmp_path / "none.yaml")


def _chat_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>", "<mask>", "user", ":", "assistant", "what", "is", "two", "four", "?"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} "
                         "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    return tok


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_data_loading_each_format(tmp_path, fmt):
    import datasets

    from dllm_jax.data.records import encode_sft, load_records

    rows = [{"q": "what is two", "a": "four"}, {"q": "what is four ?", "a": "two"}]
    path = tmp_path / f"d.{fmt}"
    ds = datasets.Dataset.from_list(rows)
    {"jsonl": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[fmt](str(path))
    recs = load_records(str(path), fields=("q", "a"))
    assert [r["q"] for r in recs] == [r["q"] for r in rows]
    tok = _chat_tokenizer()
    enc = encode_sft(recs, tok, prompt_field="q", answer_field="a")
    # Chat template: "user : what is two assistant :" then the answer and EOS.
    row = enc["tokens"][0][enc["attention_mask"][0] > 0].tolist()
    assert tok.decode(row).split() == ["user", ":", "what", "is", "two", "assistant", ":",
                                       "four", "<eos>"]
    assert enc["response_mask"][0].sum() == enc["tokens"].shape[1] - (
        enc["response_mask"][0] == 0).sum()
    with pytest.raises(ValueError, match="has no field"):
        load_records(str(path), fields=("question",))


def test_file_source(tmp_path):
    from dllm_jax.programs.datasources import FileSource

    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "what is two", "a": "four"}\n{"q": "what is four ?", "a": "two"}\n')
    tok = _chat_tokenizer()
    src = FileSource(str(path), tok, eos_id=0, pad_id=0, prompt_field="q", answer_field="a")
    # "user : what is four ? assistant :" is 8 tokens; each answer is one word and EOS.
    assert (src.prompt_length, src.answer_length, src.num_prompts) == (8, 2, 2)
    assert tok.decode(src.prompts(np.array([1]))[0].tolist()).split() == [
        "user", ":", "what", "is", "four", "?", "assistant", ":"]
    batch = src.sft_batch_fn(2, seed=0)(3)
    assert batch["tokens"].shape == (2, 10) and batch["response_mask"][:, 8:].all()
    four, two = tok.convert_tokens_to_ids(["four", "two"])
    comp = np.array([[four, 0], [four, 0], [two, 0]])
    np.testing.assert_array_equal(src.rewards(np.array([0, 1, 1]), comp), [1.0, 0.0, 1.0])
    # A completion is read up to its first EOS (0): what the sampler committed after it (here
    # "two") is not part of the answer.
    np.testing.assert_array_equal(src.rewards(np.array([0, 1]), np.array([[four, 0, two],
                                                                           [four, 0, two]])),
                                  [1.0, 0.0])
    np.testing.assert_array_equal(src.prompt_mask(np.array([0, 1])),
                                  [[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8])
    src.save_tokenizer(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="larger than the dataset"):
        src.sft_batch_fn(3, seed=0)


def test_task_source():
    from dllm_jax.programs.datasources import TaskSource
    from dllm_jax.tasks import get_task

    src = TaskSource("addition", 0, 16)
    assert (src.prompt_length, src.answer_length, src.num_prompts) == (8, 4, 16)
    ex = src.examples[5]
    assert src.tokenizer.decode(src.prompts(np.array([5]))[0].tolist()) == ex.prompt
    a, b = (int(x) for x in ex.prompt[:-1].split("+"))
    right = src.tokenizer.encode(str(a + b).zfill(4)[::-1])  # the sum, written backwards
    wrong = src.tokenizer.encode(str(a + b + 1).zfill(4)[::-1])
    np.testing.assert_array_equal(src.rewards(np.array([5, 5]), np.array([right, wrong])),
                                  [1.0, 0.0])
    eos, seven = src.tokenizer.eos_id, src.tokenizer.encode("7")[0]
    np.testing.assert_array_equal(  # read up to the first EOS, whatever was committed after it
        src.rewards(np.array([5, 5]), np.array([right + [eos, seven], right[:3] + [eos] * 3])),
        [1.0, 0.0])
    assert (src.prompt_mask(np.array([0, 5])) == 1).all()
    batch = src.sft_batch_fn(4, seed=1)(0)
    assert batch["tokens"].shape == (4, 12)
    np.testing.assert_array_equal(batch["response_mask"][0], [0] * 8 + [1] * 4)
    val = TaskSource.validation("addition", 0, 8)
    want = get_task("addition").generate(1000, 8, split="train")
    assert [e.prompt for e in val.examples] == [e.prompt for e in want]


def test_data_errors_and_orders(tmp_path):
    from dllm_jax.data.records import batch_rows, epoch_order, host_shard, load_records

    with pytest.raises(ValueError, match="does not exist"):
        load_records(str(tmp_path / "none.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown data file type"):
        load_records(str(tmp_path / "x.txt"))
    assert (epoch_order(10, 1, 2) == epoch_order(10, 1, 2)).all()
    assert sorted(epoch_order(10, 1, 2)) == list(range(10))
    rows = batch_rows(10, 4, 0, 3)  # epoch 1, second slice
    assert (rows == epoch_order(10, 0, 1)[4:8]).all()
    parts = [host_shard(rows, i, 2) for i in range(2)]
    assert sorted(np.concatenate(parts)) == sorted(rows) and len(parts[0]) == 2


def _cli(args, cwd, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "dllm_jax.cli", *args], cwd=cwd,
                            env=env or os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _params(path):
    from flax import nnx

    from dllm_jax.weights.convert import load_checkpoint

    return [np.asarray(x) for x in
            __import__("jax").tree.leaves(nnx.state(load_checkpoint(path)))]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    sets = TINY + ["train.steps=24", "train.checkpoint.every=3", "train.checkpoint.keep=2",
                   "train.optim.total_steps=24"]
    args = ["train", "sft"] + [x for s in sets for x in ("--set", s)]
    full = _cli(args + ["--set", f"out={tmp_path / 'full'}"], tmp_path)
    assert full.wait(timeout=300) == 0, full.stdout.read()
    run = tmp_path / "killed"
    proc = _cli(args + ["--set", f"out={run}"], tmp_path)
    ckpts = run / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
            break
        time.sleep(0.05)
    time.sleep(np.random.default_rng().uniform(0, 0.5))
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists() or proc.returncode == 0
    resumed = _cli(args + ["--set", f"out={run}", "--resume"], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    for a, b in zip(_params(run / "model"), _params(tmp_path / "full" / "model"), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 24


def test_train_cli_sft_then_rl(tmp_path, capsys):
    from dllm_jax.cli import main

    sft_out = tmp_path / "sft"
    base = [x for s in TINY for x in ("--set", s)]
    assert main(["train", "sft", *base, "--set", "train.steps=4", "--set",
                 f"out={sft_out}"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 4" in printed and (sft_out / "config.yaml").is_file()
    # The saved config is a valid --config of the same command, printing the same program.
    assert main(["train", "sft", "--config", str(sft_out / "config.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out.strip() == printed.split("\nwrote ")[0].strip()
    assert (sft_out / "model" / "char_tokenizer.json").is_file()
    rl_out = tmp_path / "rl"
    assert main(["train", "rl", *base, "--set", "train.steps=2", "--set",
                 f"model.init={sft_out / 'model'}", "--set", f"out={rl_out}", "--set",
                 "rl.prompts_per_step=2", "--set", "rl.group_size=4", "--set",
                 "rl.selector=atpo", "--set", "train.batch_size=1"]) == 0
    lines = (rl_out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "reward" in json.loads(lines[-1])
    capsys.readouterr()
    assert main(["train", "rl", "--config", str(rl_out / "config.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(
        (rl_out / "config.yaml").read_text())
    assert main(["train", "sft", "--set", "trian.steps=1"]) == 2
    assert "unknown config key 'trian'" in capsys.readouterr().err
    again = ["train", "sft", *base, "--set", "train.steps=4", "--set", f"out={sft_out}"]
    assert main(again) == 2  # the directory holds a run: refused without --resume/--overwrite
    assert "already holds a run" in capsys.readouterr().err
    assert main(again + ["--overwrite"]) == 0


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    """A tiny character-level model saved as a checkpoint, where every program starts."""
    from dllm_jax.model.transformer import init_model
    from dllm_jax.tasks import CharTokenizer, model_config
    from dllm_jax.weights.convert import save_checkpoint

    tok = CharTokenizer()
    path = tmp_path_factory.mktemp("init") / "model"
    save_checkpoint(init_model(model_config(tok, hidden_size=32, num_layers=2, num_heads=4),
                               seed=0), path)
    tok.save(path)
    return path


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_trains_through_its_program(tmp_path, tiny_init, monkeypatch,
                                                          name):
    """Two steps of the program that trains the loss (``sft.loss`` / ``rl.loss``) on addition,
    from the same checkpoint: the loss is finite and every parameter moved. A random model
    never answers an addition, so every reward would be 0, every advantage 0 and every RL
    gradient 0; the RL runs therefore score completions by the parity of their token ids."""
    from dllm_jax.programs.datasources import TaskSource
    from dllm_jax.programs.run import run_rl, run_sft

    monkeypatch.setattr(TaskSource, "rewards",
                        lambda self, rows, comp: (np.asarray(comp) % 2).mean(1))
    sets = [f"model.init={tiny_init}", "data.num_train=64", "train.steps=2", "train.log_every=1",
            f"out={tmp_path}"]
    if get_loss(name).program == "sft":
        prog = load_config(SFTProgram, None, sets + [f"sft.loss={name}", "train.batch_size=16"])
        out = run_sft(prog, progress=False, mesh=None)
    else:
        prog = load_config(RLProgram, None, sets + [f"rl.loss={name}", "rl.prompts_per_step=2",
                                                    "rl.group_size=4"])
        out = run_rl(prog, progress=False, mesh=None)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records)
    for a, b in zip(_params(out), _params(tiny_init), strict=True):
        assert not np.array_equal(a, b)
    # config.yaml is the resolved program itself: a valid --config for the same command.
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved == to_dict(prog.resolved()) and saved[get_loss(name).program]["loss"] == name
    cls = SFTProgram if get_loss(name).program == "sft" else RLProgram
    assert load_config(cls, tmp_path / "config.yaml").resolved() == prog.resolved()
    # The model remembers what it was trained to generate: the addition answer, 1 token a step.
    a = get_puzzle("addition").answer_length
    assert generation_settings(out) == {"gen_length": a, "steps": a, "block_length": a}


@pytest.mark.parametrize("name", ["sft_addition", "rl_atpo_addition", "rl_agdo_addition"])
def test_shipped_configs_load(name, tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    cls = SFTProgram if name.startswith("sft") else RLProgram
    prog = load_config(cls, path)
    assert prog.data.task == "addition"
    # What a run of it saves (the resolved program) loads back as the same program.
    dump_yaml(prog.resolved(), tmp_path / "config.yaml")
    assert load_config(cls, tmp_path / "config.yaml") == prog.resolved()
    assert load_config(cls, tmp_path / "config.yaml").resolved() == prog.resolved()



def test_rl_sampler_generates_the_answer_of_the_task_as_configured():
    # Task options can change the answer's length (countdown's max_number sets the digit width):
    # the sampler must generate the answer of the task the data come from, not of its default.
    # Three numbers of w digits, two operators and one pair of parentheses: 3w + 4 tokens.
    from dllm_jax.programs.config import DataSpec

    for opts, want in (("", 10), ("max_number=9", 7), ("max_number=9,max_target=9", 7)):
        prog = RLProgram(data=DataSpec(task="countdown", task_options=opts))
        s = prog.resolved().rl.sampler
        assert (s.gen_length, s.block_length, s.steps) == (want, want, want), opts


def _hand_logp(model, inputs, tokens):
    logits = np.asarray(model(inputs), np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]


def test_rl_on_a_file_keeps_the_prompts_attention_mask(tmp_path, shared_dir):
    """The RL program's rollouts from a data file of prompts of different lengths (left-padded,
    real Qwen2.5 tokenizer), greedy: every rollout equals its prompt rolled out alone, token
    for token; the old and reference log-probs at the real positions equal the unpadded
    row's; and the loss does not change when the padding ids do (never attended to)."""
    import jax
    import jax.numpy as jnp
    from helpers import sharpened, tiny_model

    from dllm_jax.data.tokenizer import load_tokenizer
    from dllm_jax.programs.config import RLConfig
    from dllm_jax.programs.datasources import FileSource
    from dllm_jax.programs.losses import make_rl_loss
    from dllm_jax.programs.rollouts import rollout_batcher
    from dllm_jax.sampling import LLaDAConfig, generate
    from dllm_jax.train import TrainConfig, Trainer

    qwen = shared_dir / "tokenizers" / "qwen2.5"
    if not qwen.is_dir():
        pytest.skip("the qwen2.5 tokenizer is not present")
    tok = load_tokenizer(qwen)
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "answer": "4"}) for p in [
        "What is two plus two?", "Name a colour.",
        "Compute the sum of the first ten positive integers, please."]))
    src = FileSource(str(path), tok, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                     chat_template=False)
    p_len, vocab = src.prompt_length, len(tok) + 1
    model = sharpened(tiny_model("llada", seed=2, vocab_size=vocab, mask_token_id=vocab - 1,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    rl = RLConfig(loss="diffu_grpo", inner_iterations=1, prompts_per_step=3, group_size=2,
                  sampler=LLaDAConfig(steps=4, gen_length=4, block_length=4,
                                      temperature=0.0)).resolved()
    batcher = rollout_batcher(rl, src, seed=0)
    loss_fn = make_rl_loss(rl, 6)
    batcher.attach(Trainer(TrainConfig(steps=1, batch_size=1), model, loss_fn, batcher,
                           tmp_path / "run", progress=False, mesh=None))
    batch = batcher(0)
    real = batch["attention_mask"] > 0
    np.testing.assert_array_equal(real[:, :p_len], batch["tokens"][:, :p_len] != tok.pad_token_id)
    assert not real.all()  # the prompts are left-padded
    for r in range(6):
        prompt = batch["tokens"][r, :p_len][real[r, :p_len]]
        alone = generate(model, prompt[None], config=rl.sampler, key=0).sequences
        np.testing.assert_array_equal(batch["tokens"][r, p_len:], np.asarray(alone)[0, -4:])
        want = _hand_logp(model, jnp.asarray(batch["inputs"][r][real[r]][None]),
                          batch["tokens"][r][real[r]][None])[0]
        np.testing.assert_allclose(batch["old_logp"][r][real[r]], want, atol=1e-4)
        np.testing.assert_allclose(batch["ref_logp"][r][real[r]], want, atol=1e-4)
    # Greedy rollouts of one prompt agree, so every advantage is 0: score the loss under
    # another policy, whose KL term to the reference is not 0.
    other = tiny_model("llada", seed=3, vocab_size=vocab, mask_token_id=vocab - 1,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    repadded = {k: np.array(v) for k, v in batch.items()}
    for k in ("inputs", "tokens"):
        repadded[k][~real] = 7
    key = jax.random.PRNGKey(0)
    losses = [float(loss_fn(other, {k: jnp.asarray(v) for k, v in b.items()}, key)[0])
              for b in (batch, repadded)]
    assert losses[0] > 1e-3
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_rl_stop_hook_chunks_equal_one_run(tmp_path, tiny_init, monkeypatch):
    """``run_rl(stop=...)`` trains in checkpoint-sized chunks and asks ``stop`` after each: a
    hook that never stops gives exactly the parameters of one uninterrupted run (the rollouts
    are re-created from the seed and the step), and one that stops ends the run there."""
    from dllm_jax.programs.datasources import TaskSource
    from dllm_jax.programs.run import run_rl

    monkeypatch.setattr(TaskSource, "rewards",
                        lambda self, rows, comp: (np.asarray(comp) % 2).mean(1))

    def prog(out):
        return load_config(RLProgram, None, [
            f"model.init={tiny_init}", "data.num_train=64", "train.steps=4", "train.log_every=1",
            "train.checkpoint.every=2", "train.optim.total_steps=4", "rl.prompts_per_step=2",
            "rl.group_size=4", f"out={out}"])

    plain = run_rl(prog(tmp_path / "plain"), progress=False, mesh=None)
    asked = []
    hooked = run_rl(prog(tmp_path / "hooked"), progress=False, mesh=None,
                    stop=lambda model, step, last: asked.append(step) or False)
    assert asked == [2, 4]
    for a, b in zip(_params(hooked), _params(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    run_rl(prog(tmp_path / "stopped"), progress=False, mesh=None, stop=lambda m, s, last: True)
    steps = [json.loads(x)["step"] for x in
             (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
