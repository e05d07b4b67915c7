"""Built-in tasks: deterministic disjoint splits, fixed shapes, exact verifiers, tokenizer."""

import itertools

import numpy as np
import pytest

from dllm_jax.tasks import (
    TASKS,
    CharTokenizer,
    encode_examples,
    eval_equation,
    get_task,
    is_valid_solution,
    model_config,
    solve_countdown,
)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_deterministic_disjoint_and_verified(name):
    task = get_task(name)
    a = task.generate(3, 200, "train")
    assert [e.prompt for e in a] == [e.prompt for e in task.generate(3, 200, "train")]
    test = task.generate(3, 50, "test")
    assert not {e.prompt for e in a} & {e.prompt for e in test}
    assert len({e.prompt for e in a}) == 200
    assert all(task.verify(e, e.answer) == 1.0 for e in a + test)
    # Answers of other items are (almost always) wrong: the verifier is not trivially true.
    shuffled = np.mean([task.verify(e, f.answer) for e, f in zip(a, a[1:] + a[:1], strict=True)])
    assert shuffled < 0.1
    tok = CharTokenizer()
    enc = encode_examples(tok, a, task.answer_length)
    assert enc["prompt_BP"].shape[0] == 200 and enc["answer_BA"].shape == (200, task.answer_length)
    for bad in ("", "garbage!!", "1" * 200, "(((", "9**9**9"):
        assert task.verify(a[0], bad) == 0.0


def test_addition_format():
    task = get_task("addition")
    ex = task.generate(0, 1, "train")[0]
    a, b = ex.meta["a"], ex.meta["b"]
    assert ex.prompt == f"{a:03d}+{b:03d}=" and ex.answer == f"{a + b:04d}"[::-1]
    assert task.verify(ex, f" {ex.answer} ") == 1.0


def _brute_force_solutions(puzzle):
    empty = [i for i, c in enumerate(puzzle) if c == "0"]
    sols = []
    for fill in itertools.product("1234", repeat=len(empty)):
        cells = list(puzzle)
        for i, v in zip(empty, fill, strict=True):
            cells[i] = v
        if is_valid_solution("".join(cells), puzzle):
            sols.append("".join(cells))
    return sols


def test_sudoku_unique_solutions_by_brute_force():
    task = get_task("sudoku", min_blanks=6, max_blanks=8)
    for ex in task.generate(1, 4, "test"):
        assert _brute_force_solutions(ex.meta["puzzle"]) == [ex.answer]
    ex = task.generate(1, 1, "train")[0]
    wrong = ex.answer[:-1] + ("1" if ex.answer[-1] != "1" else "2")
    assert task.verify(ex, wrong) == 0.0
    assert task.cell_accuracy(ex, ex.answer) == 1.0


def test_countdown_verifier_hand_cases():
    task = get_task("countdown")
    ex = task.generate(0, 1, "train")[0]
    ex = type(ex)("03,04,05>035=", "(3+4)*5", {"numbers": [3, 4, 5], "target": 35})
    assert task.verify(ex, "(3+4)*5") == 1.0
    assert task.verify(ex, "5*(4+3)") == 1.0  # any correct equation
    assert task.verify(ex, "(3+4)*5+0") == 0.0  # extra number
    assert task.verify(ex, "(3+3)*5") == 0.0  # reuse
    assert task.verify(ex, "35") == 0.0
    assert task.verify(ex, "3+4*5") == 0.0  # wrong value
    assert eval_equation("7/2")[0] == 3.5 and eval_equation("1/0") is None
    assert eval_equation("-3+4") is None and eval_equation("__import__('os')") is None
    for e in task.generate(2, 30, "train"):
        assert solve_countdown(e.meta["numbers"], e.meta["target"]) is not None


def test_tokenizer_round_trip_and_errors(tmp_path):
    tok = CharTokenizer()
    ids = tok.encode("123+45=")
    assert tok.decode(ids + [tok.eos_id, 5, 6]) == "123+45="
    assert tok.decode([tok.bos_id, *ids, tok.mask_id]) == "123+45=_"
    with pytest.raises(ValueError, match="not in the tokenizer"):
        tok.encode("12€")
    tok.save(tmp_path)
    assert CharTokenizer.is_saved_in(tmp_path)
    assert CharTokenizer.load(tmp_path).encode("9") == tok.encode("9")
    cfg = model_config(tok, hidden_size=64, num_layers=2, num_heads=4)
    assert cfg.vocab_size % 8 == 0 and cfg.vocab_size > tok.mask_id == cfg.mask_token_id
