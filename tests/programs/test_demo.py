"""The README's main job, end to end in its --quick form."""

import json

import pytest

from dllm_jax.cli import main


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"results: {out.resolve()}" in printed
    res = json.loads((out / "results.json").read_text())
    assert set(res["accuracy"]) == {"sft", "rl_uniform", "rl_atpo", "rl_agdo"}
    for method, accs in res["accuracy"].items():
        # AGDO-RL trains on its max_s decoding order: its model (and the SFT model it starts
        # from) is evaluated in that order too.
        extra = {"max_s"} if method in ("sft", "rl_agdo") else set()
        assert set(accs) == {"low_confidence", "random"} | extra, method
        assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in accs.values())
    assert res["seed"] == 0 and res["config"]["task"] == "addition"
    report = (out / "report.md").read_text()
    assert "| method | low_confidence | random | max_s |" in report and "| rl_atpo |" in report
    uniform = next(x for x in report.splitlines() if x.startswith("| rl_uniform |"))
    assert uniform.endswith("| - |")  # the TraceRL runs are not evaluated with max_s
    assert (out / "confusion_zones.png").stat().st_size > 1000
    assert (out / "sft" / "model" / "char_tokenizer.json").is_file()
    for run in ("sft", "rl_uniform", "rl_atpo", "rl_agdo"):
        assert (out / run / "metrics.jsonl").is_file() and (out / run / "config.yaml").is_file()
