"""The ``dllm_jax`` lm-eval model's keyword arguments (its ``--model_args``), validated at once.

Every sampler knob is a field of the chosen preset (``LLaDAConfig``, ``DreamConfig``,
``IMHConfig``), so the names are the dataclasses' own and nothing is copied by hand; ``cfg`` is
accepted for LLaDA's ``cfg_scale`` under the name LLaDA's own adapter uses. lm-eval hands
values over already typed (``"128"`` -> 128, ``"true"`` -> True); each one is still checked
against the field's annotation, so a typo or a wrong type is one line naming it, before any
file is read.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from dllm_jax.errors import ConfigError
from dllm_jax.model.config import DTYPES
from dllm_jax.sampling.presets import PRESETS, DreamConfig, LLaDAConfig, SamplerConfig

ALIASES = {"cfg": "cfg_scale"}
# Passed by lm-eval itself to every model (``--batch_size``, ``--max_batch_size``, ``--device``).
HARNESS_KEYS = ("batch_size", "max_batch_size", "device")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelArgs:
    """The resolved arguments.

    Attributes:
      pretrained: checkpoint directory (dllm-jax or HF) with its tokenizer.
      dtype: parameter dtype (``float32`` or ``bfloat16``).
      batch_size: prompts per ``generate`` call; Monte-Carlo copies per round (and per forward)
        of the likelihood estimate; requests per greedy check.
      seed: base of every request's key (docs/eval.md, "Determinism").
      sampler: the generation preset.
      mc_num: Monte-Carlo copies per likelihood (a multiple of ``batch_size``).
      is_check_greedy: run LLaDA's greedy check (else ``is_greedy`` is False).
      cfg_scale: LLaDA's classifier-free guidance of the likelihood (the ``llada`` preset's).
      mask_id: MASK id (None: the model's).
    """

    pretrained: str
    dtype: str = "float32"
    batch_size: int = 1
    seed: int = 0
    sampler: SamplerConfig
    mc_num: int = 128
    is_check_greedy: bool = False
    cfg_scale: float = 0.0
    mask_id: int | None = None


_OWN = {"pretrained": "str", "dtype": "str", "batch_size": "int", "seed": "int",
        "sampler": "str", "mc_num": "int", "is_check_greedy": "bool"}


def _knob_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """``value`` as the annotation's type (``int``, ``float``, ``bool``, ``str``, ``X | None``)."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if "None" in annotation:
            return None
        raise ConfigError(f"model_args {name}: None is not allowed")
    kinds = [t.strip() for t in annotation.split("|") if t.strip() != "None"]
    kind = kinds[0] if len(kinds) == 1 else "str"
    text = str(value).strip()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if text.lower() in ("true", "false", "1", "0"):
            return text.lower() in ("true", "1")
        raise ConfigError(f"model_args {name}: expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or text.lstrip("+-").isdigit()):
            raise ConfigError(f"model_args {name}: expected an integer, got {value!r}")
        return int(text)
    if kind == "float":
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(text)
        except ValueError:
            raise ConfigError(f"model_args {name}: expected a number, got {value!r}") from None
    return text


def _sampler(name: str, knobs: dict[str, Any], pretrained: str) -> SamplerConfig:
    cls = PRESETS[name]
    types = _knob_types(cls)
    bad = sorted(set(knobs) - set(types))
    if bad:
        raise ConfigError(f"model_args {', '.join(bad)} not used by sampler={name}")
    given = {k: _coerce(k, v, types[k]) for k, v in knobs.items()}
    if cls is DreamConfig:
        return DreamConfig.from_pretrained(pretrained, **given)
    return cls(**given)


def parse_model_args(kwargs: dict[str, Any]) -> ModelArgs:
    """Validates the constructor's keywords (raises :class:`ConfigError`, one line); reads
    nothing but a Dream checkpoint's config.json for its generation defaults."""
    kwargs = {ALIASES.get(k, k): v for k, v in kwargs.items()}
    sampler = str(kwargs.pop("sampler", "llada") or "llada")
    if sampler not in PRESETS:
        raise ConfigError(f"model_args sampler={sampler!r}: choose from {', '.join(PRESETS)}")
    kwargs.pop("max_batch_size", None)  # lm-eval's automatic batch sizing: not used here
    kwargs.pop("device", None)  # JAX places the model on its default device
    all_knobs = set().union(*(_knob_types(c) for c in PRESETS.values()))
    unknown = sorted(set(kwargs) - set(_OWN) - all_knobs)
    if unknown:
        known = sorted(set(_OWN) | all_knobs | set(ALIASES))
        raise ConfigError(f"unknown model_args {', '.join(unknown)}; known: {', '.join(known)}")
    if str(kwargs.get("batch_size", "1")).startswith("auto"):
        raise ConfigError("batch_size auto is not supported; give an integer")
    own = {k: _coerce(k, kwargs.pop(k), t) for k, t in _OWN.items() if k in kwargs}
    if "pretrained" not in own:
        raise ConfigError("model_args needs pretrained=DIR (a dllm-jax or HF checkpoint "
                          "directory with its tokenizer)")
    pretrained = os.fspath(own["pretrained"])
    _check(own, pretrained)
    preset = _sampler(sampler, kwargs, pretrained)
    cfg = float(preset.cfg_scale) if isinstance(preset, LLaDAConfig) else 0.0
    return ModelArgs(pretrained=pretrained, dtype=own.get("dtype", "float32"),
                     batch_size=own.get("batch_size", 1), seed=own.get("seed", 0),
                     mc_num=own.get("mc_num", 128),
                     is_check_greedy=own.get("is_check_greedy", False), sampler=preset,
                     cfg_scale=cfg, mask_id=getattr(preset, "mask_id", None))


def _check(own: dict[str, Any], pretrained: str) -> None:
    dtype, batch = own.get("dtype", "float32"), own.get("batch_size", 1)
    mc_num = own.get("mc_num", 128)
    if dtype not in DTYPES:
        raise ConfigError(f"model_args dtype must be one of {DTYPES}, got {dtype!r}")
    if batch < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch}")
    if mc_num < 1 or mc_num % batch:
        raise ConfigError(f"mc_num {mc_num} must be a positive multiple of batch_size {batch} "
                          "(the Monte-Carlo copies run in rounds of batch_size)")
    if not Path(pretrained).is_dir():
        raise ConfigError(f"pretrained={pretrained} is not a directory")
