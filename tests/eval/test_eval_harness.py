"""``dllm-jax eval score`` and the resumable ``run_eval`` loop (with an injected generator and a
byte tokenizer, so no model is compiled)."""

import json

import numpy as np
import pytest

from dllm_jax.cli import main
from dllm_jax.errors import ConfigError
from dllm_jax.eval.harness import run_eval, score_predictions
from dllm_jax.eval.metrics import pass_at_k
from dllm_jax.tasks import get_task

TOWER = "\\boxed{9^{9^{9^{9}}}}"  # sympy would evaluate this power tower for hours


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gsm_predictions(tmp_path, data_dir):
    """4 problems x 3 samples; problem i has i correct samples (capped at 3)."""
    task = get_task("gsm8k")
    items = task.load(data_dir / "gsm8k_test.jsonl", limit=4)
    rows, counts = [], []
    for i, it in enumerate(items):
        c = min(i, 3)
        counts.append(c)
        for s in range(3):
            comp = task.reference_completion(it) if s < c else "<answer>-12345</answer>"
            rows.append({"id": it["id"], "completion": comp})
    return _write(tmp_path / "preds.jsonl", rows), counts


def test_score_cli_json(tmp_path, data_dir, capsys):
    preds, counts = _gsm_predictions(tmp_path, data_dir)
    rc = main(["eval", "score", "--task", "gsm8k", "--data", str(data_dir / "gsm8k_test.jsonl"),
               "--predictions", str(preds), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert len(out.strip().splitlines()) == 1
    res = json.loads(out)
    assert res["task"] == "gsm8k" and res["num_problems"] == 4 and res["num_samples"] == 3
    for k in (1, 2, 3):
        expect = np.mean([pass_at_k(3, c, k) for c in counts])
        assert res[f"pass@{k}"] == pytest.approx(expect, abs=1e-12)
    assert set(res) >= {"task", "num_problems", "num_samples", "pass@1", "pass@1_stderr"}


def test_score_code_task(tmp_path, data_dir):
    task = get_task("mbpp")
    items = task.load(data_dir, limit=3)
    rows = []
    for it in items:
        rows.append({"id": it["id"], "completion": task.reference_completion(it)})
        rows.append({"id": it["id"], "completion": "```python\nimport sys\nsys.exit(0)\n```"})
    res = score_predictions("mbpp", data_dir, _write(tmp_path / "p.jsonl", rows))
    assert res["pass@1"] == pytest.approx(0.5) and res["pass@2"] == pytest.approx(1.0)


@pytest.mark.parametrize("case", ["bad_task", "missing_predictions", "missing_data",
                                  "unknown_id", "bad_line"])
def test_score_cli_errors(case, tmp_path, data_dir, capsys):
    preds, _ = _gsm_predictions(tmp_path, data_dir)
    data = str(data_dir / "gsm8k_test.jsonl")
    task = "gsm8k"
    if case == "bad_task":
        task = "gsm9k"
    elif case == "missing_predictions":
        preds = tmp_path / "nope.jsonl"
    elif case == "missing_data":
        data = str(tmp_path / "nodata.jsonl")
    elif case == "unknown_id":
        preds = _write(tmp_path / "u.jsonl", [{"id": 999999, "completion": "x"}])
    else:
        (tmp_path / "b.jsonl").write_text('{"id": 1}\n')
        preds = tmp_path / "b.jsonl"
    rc = main(["eval", "score", "--task", task, "--data", data, "--predictions", str(preds),
               "--json"])
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dllm-jax: error: ")


def test_eval_run_cli_validates_before_work(tmp_path, capsys):
    assert main(["eval", "--tasks", "gsm8k", "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--tasks", "gsm8k,nope",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


class ByteTokenizer:
    """UTF-8 bytes as token ids; no chat template."""

    chat_template = None

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", "replace")


class FakeGenerator:
    """Answers a countdown prompt correctly for rows where a key-dependent coin says so;
    counts calls per prompt, and raises after ``fail_after`` calls (a killed run)."""

    def __init__(self, items, fail_after=None):
        self.task = get_task("countdown")
        self.answers = {self.task.prompt_text(it): self.task.reference_completion(it)
                        for it in items}
        self.calls: dict[str, int] = {}
        self.fail_after = fail_after

    def __call__(self, prompts, key):
        import jax

        if self.fail_after is not None and sum(self.calls.values()) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        text = bytes(prompts[0]).decode()
        self.calls[text] = self.calls.get(text, 0) + 1
        coins = np.asarray(jax.random.bernoulli(key, 0.5, (len(prompts),)))
        return [list((self.answers[text] if c else "<answer>1+1</answer>").encode())
                for c in coins]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_eval_resume_scores_each_item_once(tmp_path, data_dir):
    from dllm_jax.sampling import LLaDAConfig

    items = get_task("countdown").load(data_dir, limit=6)
    cfg = LLaDAConfig(steps=8, gen_length=8, block_length=8)
    kw = dict(limit=6, samples=3, sampler_config=cfg, seed=3, data_dir=data_dir,
              batch_size=2, tokenizer=ByteTokenizer(), progress=False)

    ref_gen = FakeGenerator(items)
    ref = run_eval(None, ["countdown"], out_dir=tmp_path / "ref", generate_fn=ref_gen, **kw)
    assert sum(ref_gen.calls.values()) == 12  # 6 items x 2 chunks (2 + 1 samples)

    out = tmp_path / "resumed"
    first = FakeGenerator(items, fail_after=7)  # dies in item 3's second chunk
    with pytest.raises(KeyboardInterrupt):
        run_eval(None, ["countdown"], out_dir=out, generate_fn=first, **kw)
    res_path = out / "countdown" / "results.jsonl"
    assert [r["id"] for r in _lines(res_path)] == [0, 1, 2]
    with open(res_path, "a") as f:  # and the kill tore a line in half
        f.write('{"id": 3, "index": 3, "compl')

    second = FakeGenerator(items)
    summary = run_eval(None, ["countdown"], out_dir=out, generate_fn=second, **kw)
    assert sum(second.calls.values()) == 6  # only items 3, 4, 5
    assert all(v == 2 for v in second.calls.values())
    got = _lines(res_path)
    assert [r["id"] for r in got] == [0, 1, 2, 3, 4, 5]
    # keys depend on (seed, item, chunk) only, so the resumed run equals the uninterrupted one
    assert got == _lines(tmp_path / "ref" / "countdown" / "results.jsonl")
    assert summary == ref

    correct = [r["correct"] for r in got]
    assert all(len(c) == 3 for c in correct) and 0 < sum(map(sum, correct)) < 18
    for r in got:  # the coin decided correctness and scoring agrees with the answers
        assert r["correct"] == [c.startswith("<reasoning>") for c in r["completions"]]
    s = json.loads((out / "summary.json").read_text())
    assert s["tasks"]["countdown"]["pass@1"] == pytest.approx(
        np.mean([sum(c) / 3 for c in correct]), abs=1e-12)
    assert s["config"]["sampler"] == "LLaDAConfig" and s["config"]["steps"] == 8
    md = (out / "summary.md").read_text()
    assert "| task | problems | n | pass@1 | pass@2 | pass@3 |" in md
    assert "| countdown | 6 | 3 |" in md and "| gen_length | 8 |" in md

    # a finished run restarted does no work at all
    third = FakeGenerator(items, fail_after=0)
    run_eval(None, ["countdown"], out_dir=out, generate_fn=third, **kw)
    assert third.calls == {}


class IdTokenizer:
    """Maps text to a few ids of the tiny vocabulary; decodes ids as comma-separated numbers."""

    chat_template = None
    pad_token_id = 1

    def encode(self, text):
        return [2 + ord(ch) % 60 for ch in text[-20:]]

    def decode(self, ids, skip_special_tokens=True):
        return ",".join(str(i) for i in ids)


def test_run_eval_with_a_real_tiny_model(tmp_path, data_dir, tiny_llada):
    """The default generator: checkpoint loaded from disk, prompts bucketed and left-padded,
    the compiled sampler, completions cut at EOS; deterministic for a seed."""
    from dllm_jax.sampling import LLaDAConfig
    from dllm_jax.weights.convert import save_checkpoint

    ckpt = save_checkpoint(tiny_llada, tmp_path / "ckpt")
    cfg = LLaDAConfig(steps=4, gen_length=8, block_length=8, temperature=1.0)
    runs = []
    for name in ("a", "b"):
        run_eval(ckpt, "countdown", limit=2, samples=2, sampler_config=cfg,
                 out_dir=tmp_path / name, seed=5, data_dir=data_dir, tokenizer=IdTokenizer(),
                 progress=False)
        runs.append(_lines(tmp_path / name / "countdown" / "results.jsonl"))
    assert runs[0] == runs[1]
    for rec in runs[0]:
        assert len(rec["completions"]) == 2 and rec["correct"] == [False, False]
        for comp in rec["completions"]:
            ids = [int(x) for x in comp.split(",") if x]
            assert len(ids) <= 8
            assert 1 not in ids  # cut at the first EOS
            assert all(0 <= i < 63 for i in ids)  # never the MASK id


def test_eval_run_cli_parses_as_written(tmp_path, monkeypatch, capsys):
    import dllm_jax.eval.harness as harness

    seen = {}

    def fake_run_eval(model, tasks, limit, samples, config, out, seed, **kw):
        seen.update(model=model, tasks=[t.name for t in tasks], limit=limit, samples=samples,
                    config=config, out=out, seed=seed, **kw)
        return {"gsm8k": {"pass@1": 0.25, "pass@1_stderr": 0.1, "num_problems": 4,
                          "num_samples": 2}}

    monkeypatch.setattr(harness, "run_eval", fake_run_eval)
    rc = main(["eval", "--model", str(tmp_path), "--tasks", "gsm8k,math500", "--limit", "4",
               "--samples", "2", "--sampler", "llada", "--gen-length", "16", "--steps", "8",
               "--block-length", "8", "--out", str(tmp_path / "o"), "--data-dir", "/data"])
    assert rc == 0
    assert seen["tasks"] == ["gsm8k", "math500"] and seen["limit"] == 4
    assert seen["samples"] == 2 and seen["data_dir"] == "/data" and seen["seed"] == 0
    c = seen["config"]
    assert type(c).__name__ == "LLaDAConfig"
    assert (c.gen_length, c.steps, c.block_length) == (16, 8, 8)
    assert "gsm8k: pass@1 25.00%" in capsys.readouterr().out
    # a flag the chosen sampler does not take is one error line, before any work
    assert main(["eval", "--model", str(tmp_path), "--tasks", "gsm8k", "--out", str(tmp_path),
                 "--sampler", "llada", "--alpha", "2"]) == 2


def test_score_by_dataset_ids_and_out_file(tmp_path, data_dir, capsys):
    """MATH500 predictions named by index or by unique_id land on the same item; --out has one
    line per prediction with the extracted answer (JSON null when there is none)."""
    items = get_task("math500").load(data_dir, limit=3)
    first, second = items[0], items[1]
    preds = _write(tmp_path / "p.jsonl", [
        {"id": first["unique_id"], "completion": f"<answer>\\boxed{{{first['answer']}}}</answer>"},
        {"id": 0, "completion": "<answer>\\boxed{17}</answer>"},
        {"id": 1, "completion": "no answer at all"},
        {"id": second["unique_id"], "completion": TOWER},
    ])
    out = tmp_path / "scores" / "math500.jsonl"
    rc = main(["eval", "score", "--task", "math500", "--data", str(data_dir), "--predictions",
               str(preds), "--out", str(out), "--timeout", "1", "--json"])
    cap = capsys.readouterr()
    assert rc == 0
    res = json.loads(cap.out)
    assert res["num_problems"] == 2 and res["num_samples"] == 2
    assert res["pass@1"] == pytest.approx((1 / 2 + 0 / 2) / 2)
    assert res["pass@2"] == pytest.approx((1 + 0) / 2)
    text = out.read_text()
    assert "None" not in text  # a missing answer is JSON null, not the text of None
    assert [json.loads(x) for x in text.splitlines()] == [
        {"id": first["unique_id"], "line": 1, "score": 1.0, "answer": first["answer"],
         "error": None},
        {"id": 0, "line": 2, "score": 0.0, "answer": "17", "error": None},
        {"id": 1, "line": 3, "score": 0.0, "answer": None, "error": None},
        {"id": second["unique_id"], "line": 4, "score": 0.0, "answer": None,
         "error": "scoring took longer than the 1 s limit"},
    ]


def test_score_by_own_ids_of_other_data_sets(tmp_path, data_dir):
    aime = get_task("aime24").load(data_dir, limit=1)[0]
    assert (aime["id"], aime["source_id"]) == (0, 60)  # AIME 2024's own id of the problem
    rows = [{"id": 60, "completion": f"\\boxed{{{aime['answer']}}}"}]
    res = score_predictions("aime24", data_dir, _write(tmp_path / "a.jsonl", rows))
    assert res["pass@1"] == 1.0
    he = get_task("humaneval").load(data_dir, limit=1)[0]
    rows = [{"id": "HumanEval/0", "completion": get_task("humaneval").reference_completion(he)}]
    assert score_predictions("humaneval", data_dir, _write(tmp_path / "h.jsonl", rows))[
        "pass@1"] == 1.0
    with pytest.raises(ConfigError, match="not in the mbpp data"):  # MBPP names are task ids
        score_predictions("mbpp", data_dir, _write(tmp_path / "m.jsonl", [
            {"id": 0, "completion": "x"}]))


def test_score_refuses_ambiguous_and_null_ids(tmp_path):
    data = _write(tmp_path / "math.jsonl", [{"problem": "a", "answer": "1", "id": "7"},
                                            {"problem": "b", "answer": None, "id": "0"}])
    # "0" is the first record's index and the second record's own id
    with pytest.raises(ConfigError, match="naming two of its items"):
        score_predictions("aime25", data, _write(tmp_path / "p.jsonl", [
            {"id": 0, "completion": "\\boxed{1}"}]))
    with pytest.raises(ConfigError, match=r'p2.jsonl:1: "id" must be a string or an integer, '
                                          r"got null"):
        score_predictions("aime25", data, _write(tmp_path / "p2.jsonl", [
            {"id": None, "completion": "\\boxed{1}"}]))
    # a null gold answer matches nothing (not the text "None")
    res = score_predictions("aime25", data, _write(tmp_path / "p3.jsonl", [
        {"id": 1, "completion": "\\boxed{None}"}]))
    assert res["pass@1"] == 0.0


def test_score_out_must_be_a_file(tmp_path, data_dir, capsys):
    preds, _ = _gsm_predictions(tmp_path, data_dir)
    rc = main(["eval", "score", "--task", "gsm8k", "--data", str(data_dir), "--predictions",
               str(preds), "--out", str(tmp_path)])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    assert cap.err.strip() == f"dllm-jax: error: --out {tmp_path} is a directory; give a file name"


@pytest.mark.parametrize("timeout", ["inf", "nan", "0"])
def test_eval_score_refuses_a_non_finite_timeout(tmp_path, capsys, timeout):
    from dllm_jax.cli import main

    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": 0, "completion": "1"}\n')
    code = main(["eval", "score", "--task", "gsm8k", "--predictions", str(preds),
                 "--timeout", timeout])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--timeout" in err, err
