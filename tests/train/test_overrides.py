"""YAML + ``--set`` overrides of nested frozen dataclasses: merge order, type coercion,
unknown-key and wrong-type errors, and the dump/load round trip."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from dllm_jax.errors import ConfigError
from dllm_jax.model.config import ModelConfig
from dllm_jax.train.overrides import dump_yaml, format_config, load_config, parse_sets, to_dict


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optim:
    lr: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    clip: float | None = 1.0
    steps: int = 100

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lora:
    rank: int = 4
    targets: tuple[str, ...] = ("q", "v")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    name: str = "run"
    seed: int = 0
    flag: bool = False
    mesh: tuple[int, int, int] | None = None
    sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    optim: Optim = Optim(steps=7)
    lora: Lora | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class NeedsName:
    name: str
    optim: Optim = Optim()


def test_yaml_then_sets_with_coercion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: base\nseed: 3\noptim:\n  lr: 0.1\n  schedule: constant\n"
                    "sizes: [4]\nweights: {a: 1}\n")
    run = load_config(Run, path, ["optim.lr=1e-5", "name=0123", "mesh=[1, 8, 1]",
                                  "flag=true", "lora.rank=8", "optim.clip=null",
                                  "seed=1e3", "weights.b=2.5", "seed=5"])
    assert run.optim == Optim(lr=1e-5, schedule="constant", clip=None, steps=7)
    assert isinstance(run.optim.lr, float)
    assert run.name == "0123"  # a str field gets the text as typed, not YAML's octal 83
    assert run.mesh == (1, 8, 1) and run.flag is True and run.seed == 5  # later --set wins
    assert run.lora == Lora(rank=8)  # an optional section built from its defaults
    assert run.sizes == [4] and run.weights == {"a": 1.0, "b": 2.5}
    assert load_config(Run, None, ["seed=1e3"]).seed == 1000
    assert load_config(Run, None, []) == Run()
    assert load_config(Run, None, ["optim.steps=9"]).optim == Optim(steps=9)  # keeps lr etc.
    assert load_config(Run, None, ["lora.targets=[k]"]).lora.targets == ("k",)
    assert load_config(Run, None, ["lora=null"]).lora is None
    assert load_config(NeedsName, None, ["name=x"]).name == "x"
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(Run, tmp_path / "empty.yaml") == Run()


@pytest.mark.parametrize("sets,msg", [
    (["sed=1"], r"unknown config key 'sed'; valid keys: name, seed, flag, mesh"),
    (["optim.lrr=1"], r"unknown config key 'optim.lrr'; valid keys under 'optim': lr, "
                      r"schedule, clip, steps"),
    (["lora.rank.x=1"], r"lora.rank: expected an integer"),
    (["seed=abc"], r"seed: expected an integer, got 'abc'"),
    (["seed=1.5"], r"seed: expected an integer"),
    (["seed=true"], r"seed: expected an integer"),
    (["flag=1"], r"flag: expected true/false"),
    (["optim.lr=fast"], r"optim.lr: expected a number"),
    (["optim.lr=-1"], r"optim: lr must be > 0"),
    (["optim.schedule=linear"], r"optim.schedule: 'linear' is not one of \['cosine', "
                                r"'constant'\]"),
    (["mesh=[1, 2]"], r"mesh: expected 3 entries, got 2"),
    (["mesh=[1, x, 2]"], r"mesh\[1\]: expected an integer"),
    (["mesh=4"], r"mesh: expected a list"),
    (["optim=3"], r"optim: expected a mapping of Optim fields"),
    (["seed"], r"expects key=value"),
    (["a..b=1"], r"empty key"),
    (["optim=1", "optim.lr=2"], r"optim is not a section"),
    (["mesh=[1, 2"], r"cannot parse"),
])
def test_set_errors(sets, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(Run, None, sets)


def test_yaml_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: 0.1\n  warmup: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.warmup'"):
        load_config(Run, p)
    p.write_text("name: 12\n")
    with pytest.raises(ConfigError, match=r"name: expected a string, got 12"):
        load_config(Run, p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"expected a mapping of config keys, got list"):
        load_config(Run, p)
    p.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"missing required field\(s\) name"):
        load_config(NeedsName, None, [])


def test_dump_round_trip(tmp_path):
    run = load_config(Run, None, ["mesh=[1, 2, 4]", "lora.rank=2", "weights.x=0.5",
                                  "name=a b: c", "optim.clip=null"])
    text = dump_yaml(run, tmp_path / "out" / "resolved.yaml")
    assert (tmp_path / "out" / "resolved.yaml").read_text() == text
    back = load_config(Run, tmp_path / "out" / "resolved.yaml")
    assert back == run and back.mesh == (1, 2, 4) and back.lora.targets == ("q", "v")
    assert to_dict(run)["mesh"] == [1, 2, 4] and to_dict(run)["optim"]["clip"] is None
    assert "lr: 0.001" in format_config(run)
    # A real config of the project with a required-field-free dataclass round-trips too.
    cfg = ModelConfig(family="llada", vocab_size=64, hidden_size=32, num_layers=2,
                      num_heads=4, num_kv_heads=4, head_dim=8, intermediate_size=64)
    dump_yaml(cfg, tmp_path / "m.yaml")
    assert load_config(ModelConfig, tmp_path / "m.yaml") == cfg
    with pytest.raises(ConfigError, match="unknown family"):
        load_config(ModelConfig, tmp_path / "m.yaml", ["family=gpt"])


def test_parse_sets_tree():
    tree = parse_sets(["a.b=1", "a.c=x", "d=[1, 2]"])
    assert set(tree) == {"a", "d"} and set(tree["a"]) == {"b", "c"}
    assert tree["a"]["b"].value == 1 and tree["d"].value == [1, 2] and tree["a"]["c"].text == "x"
