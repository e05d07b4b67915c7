"""Sampler configurations: one frozen dataclass per preset, resolved into a static ``Plan``.

A preset (``LLaDAConfig``, ``DreamConfig``, ``IMHConfig``) holds the knobs under the names the
reference implementations use and validates them when constructed, so a bad combination fails
with one line before anything is compiled. ``preset.plan(model_config, prompt_length)`` turns it
into a hashable ``Plan`` (``plan.py``): the schedule precomputed on the host (it does not depend
on the prompt contents) and the strategy objects the loop calls, used as a static argument of
the compiled sampler.

LLaDA and Dream share one path (``_BlockPreset``): it validates the knobs they have in common
and assembles the plan; each preset only validates its own knobs and says which token sampler,
position scorer, transfer rule and guidance they select (``_decoding``). See docs/sampling.md,
"Structure".

Defaults are the ones each original runs with when the knob is not given (docs/sampling.md,
"Defaults"): LLaDA's ``generate`` signature; for Dream, what ``diffusion_generate`` resolves
without a generation config (``DreamConfig.from_pretrained`` reads a checkpoint's own values).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.model.config import ModelConfig
from dllm_jax.sampling.plan import Plan
from dllm_jax.sampling.sources import ClassifierFreeGuidance, Guidance, NoGuidance, logits_source
from dllm_jax.sampling.strategies import (
    DREAM_RULES,
    LLADA_RULES,
    CoinFlip,
    ConfidenceThreshold,
    GumbelMax,
    PositionScorer,
    TemperedSoftmax,
    TokenSampler,
    TopCount,
    TransferRule,
    position_scorer,
    token_filters,
)

LLADA_REMASKING = tuple(LLADA_RULES)
DREAM_ALGS = tuple(DREAM_RULES)
CACHE_MODES = ("none", "prefix", "dual")
IMH_PROPOSALS = ("random", "tpp")
IMH_TARGETS = ("path", "canonical")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --- schedules (host-side, exact) ----------------------------------------------------------


def llada_counts(masked: int, steps: int) -> tuple[int, ...]:
    """LLaDA's ``get_num_transfer_tokens``: ``m // s`` per step, +1 for the first ``m % s``."""
    base, rem = divmod(masked, steps)
    return tuple(base + (1 if j < rem else 0) for j in range(steps))


def torch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
    """``torch.linspace(start, end, num)`` in float32, bit for bit.

    torch fills the first half as ``start + step * i`` and the second as
    ``end - step * (num - 1 - i)`` with a fused multiply-add (one rounding), which float64
    arithmetic rounded once to float32 reproduces exactly (checked against torch in the tests).
    """
    start32, end32 = np.float32(start), np.float32(end)
    if num == 1:
        return np.array([start32], np.float32)
    step = np.float32((end32 - start32) / np.float32(num - 1))
    i = np.arange(num, dtype=np.float64)
    first = np.float64(start32) + np.float64(step) * i
    second = np.float64(end32) - np.float64(step) * (num - 1 - i)
    return np.where(np.arange(num) < num // 2, first, second).astype(np.float32)


def dream_counts(masked: int, steps: int, eps: float) -> tuple[int, ...]:
    """Dream's per-step commit counts ``int(m * (1 - s / t))`` in float32, all at the last step.

    The masked count evolves deterministically (each step commits exactly its count), so the
    whole schedule is known before sampling starts.
    """
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    out, m = [], masked
    for i in range(steps):
        if i < steps - 1:
            n = int(np.float32(m) * (np.float32(1.0) - ts[i + 1] / ts[i]))
        else:
            n = m
        n = min(n, m)
        out.append(n)
        m -= n
    return tuple(out)


def dream_transfer_probs(steps: int, eps: float) -> tuple[float, ...]:
    """Dream ``origin``'s per-step commit probability ``1 - s/t`` (1 at the last step)."""
    ts = torch_linspace_f32(1.0, eps, steps + 1)
    return tuple(float(np.float32(1.0) - ts[i + 1] / ts[i]) if i < steps - 1 else 1.0
                 for i in range(steps))


# --- the shared planning path --------------------------------------------------------------


class _Ids(NamedTuple):
    mask_id: int
    eos_id: int  # -1: the model has no EOS
    pad_id: int
    vocab_size: int


def _ids(model_config: ModelConfig, mask_id: int | None) -> _Ids:
    mask = model_config.mask_token_id if mask_id is None else mask_id
    _check(mask is not None and 0 <= mask < model_config.vocab_size,
           f"mask id {mask} is not a token of the model (vocab {model_config.vocab_size})")
    eos = model_config.eos_token_id
    pad = model_config.pad_token_id if model_config.pad_token_id is not None else eos
    return _Ids(mask_id=int(mask), eos_id=-1 if eos is None else int(eos),
                pad_id=int(pad if pad is not None else 0), vocab_size=model_config.vocab_size)


class _Decoding(NamedTuple):
    """What a preset's knobs select for one block of ``steps_per_block`` steps."""

    tokens: TokenSampler
    scorer: PositionScorer
    transfer: TransferRule
    guidance: Guidance
    steps_per_block: int  # step slots per block (a block may complete before the last)
    counts: tuple[int, ...] | None = None  # per step of every block
    transfer_probs: tuple[float, ...] | None = None


class _BlockPreset(abc.ABC):
    """The path LLaDA and Dream share. A subclass is a frozen dataclass with ``steps``,
    ``temperature``, ``top_p``, ``top_k``, ``alg_temp``, ``mask_id`` and ``cache``; it names its
    geometry (``_blocks``), validates its own knobs after ``super().__post_init__()`` and says
    what its knobs select (``_decoding``)."""

    # The decoding knobs a caller may set per request (the server's body fields): every
    # field but the generation length and the token ids.
    REQUEST_KNOBS: ClassVar[tuple[str, ...]] = ("steps", "block_length", "temperature", "top_p",
                                                "top_k", "alg_temp", "cache")

    @abc.abstractmethod
    def _blocks(self) -> tuple[str, int, int]:
        """The length knob's name, the number of generated tokens and the block length."""

    @property
    def length_knob(self) -> str:
        """The field that sets the number of generated tokens (``gen_length`` or
        ``max_new_tokens``)."""
        return self._blocks()[0]

    def geometry(self) -> tuple[int, int]:
        """``(G, N)``: generated tokens and block length."""
        return self._blocks()[1:]

    @abc.abstractmethod
    def _decoding(self, ids: _Ids, block_length: int, steps_per_block: int) -> _Decoding:
        """The strategies the preset's knobs select."""

    def __post_init__(self):
        name, length, block = self._blocks()
        _check(length >= 1, f"{name} must be >= 1, got {length}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(block >= 1, f"block_length must be >= 1, got {block}")
        _check(length % block == 0, f"{name} {length} is not divisible by block_length {block}")
        _check(self.steps % (length // block) == 0,
               f"steps {self.steps} is not divisible by the number of blocks {length // block} "
               f"({name} / block_length)")
        _check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        _check(self.top_p is None or 0 < self.top_p <= 1,
               f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.top_k is None or self.top_k >= 0,
               f"top_k must be >= 0 (0: no top-k filter), got {self.top_k}")
        _check(self.alg_temp is None or self.alg_temp >= 0,
               f"alg_temp must be >= 0, got {self.alg_temp}")
        _check(self.cache in CACHE_MODES,
               f"cache must be one of {CACHE_MODES}, got {self.cache!r}")

    def plan(self, model_config: ModelConfig, prompt_length: int) -> Plan:
        """The static plan for a model and a prompt width (raises ``ConfigError``)."""
        _check(prompt_length >= 1 or not model_config.shift_logits,
               "a model with shifted logits needs a non-empty prompt")
        _, length, block = self._blocks()
        blocks = length // block
        ids = _ids(model_config, self.mask_id)
        d = self._decoding(ids, block, self.steps // blocks)
        return Plan(gen_length=length, block_length=block, num_blocks=blocks,
                    steps_per_block=d.steps_per_block, tokens=d.tokens,
                    scorer=d.scorer, transfer=d.transfer, guidance=d.guidance,
                    cache=logits_source(self.cache, length, block), mask_id=ids.mask_id,
                    eos_id=ids.eos_id, pad_id=ids.pad_id,
                    counts=None if d.counts is None else (d.counts,) * blocks,
                    transfer_probs=d.transfer_probs)


# --- presets -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LLaDAConfig(_BlockPreset):
    """LLaDA's semi-autoregressive ``generate`` (ML-GSAI/LLaDA ``generate.py``) and extensions.

    Attributes:
      steps: total denoising steps over all blocks (must be a multiple of the block count).
      gen_length: tokens to generate (a multiple of ``block_length``).
      block_length: semi-autoregressive block size.
      temperature: Gumbel-max temperature; 0 is argmax.
      cfg_scale: classifier-free guidance (unconditional pass has the prompt masked).
      remasking: which masked positions to commit: ``low_confidence`` (sample, then keep the
        most probable samples), ``random``, ``tpp`` (top-probability position, then sample),
        ``topk_margin``, ``entropy`` or ``max_s`` (AGDO: largest attention to committed tokens).
      threshold: if set, Fast-dLLM parallel decoding: commit the best candidate and every
        other one whose confidence is >= threshold; a block runs until it is complete (at most
        ``block_length`` steps, as Fast-dLLM's loop), so ``steps`` only has to divide.
      top_p, top_k: optional filtering of the token distribution before sampling (``top_k``
        0 or None: no top-k filter).
      alg_temp: > 0 samples positions from ``softmax(confidence / alg_temp)`` without
        replacement instead of taking the top ones.
      logits_eos_inf: EOS logit set to -inf before sampling.
      confidence_eos_eot_inf: after the token is drawn, the EOT logit (and at temperature 0
        also the EOS logit) is -inf in the distribution the position rule scores, as the
        original's ``logits_with_noise[..., EOS] = logits[..., EOT] = -inf`` (at temperature 0
        both names are one tensor). A position proposing such a token gets confidence 0 under
        ``low_confidence``: last among the candidates, still committed when the count needs it.
      eot_token_id: EOT id for ``confidence_eos_eot_inf`` (LLaDA-8B-Instruct: 126348, the id
        the original hard-codes); None: the model has no EOT.
      mask_id: MASK id; default the model's.
      cache: ``none``, ``prefix`` or ``dual`` block KV cache (Fast-dLLM).
    """

    steps: int = 128
    gen_length: int = 128
    block_length: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    threshold: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float = 0.0
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    eot_token_id: int | None = None
    mask_id: int | None = None
    cache: str = "none"

    def __post_init__(self):
        super().__post_init__()
        _check(self.remasking in LLADA_REMASKING,
               f"unknown remasking {self.remasking!r}; choose from {LLADA_REMASKING}")
        _check(self.cfg_scale >= 0, f"cfg_scale must be >= 0, got {self.cfg_scale}")
        _check(self.threshold is None or 0 <= self.threshold <= 1,
               f"threshold must be in [0, 1], got {self.threshold}")
        _check(not (self.cache != "none" and self.remasking == "max_s"),
               "remasking 'max_s' needs full attention statistics; use cache='none'")
        _check(self.eot_token_id is None or self.eot_token_id >= 0,
               f"eot_token_id must be >= 0, got {self.eot_token_id}")

    REQUEST_KNOBS: ClassVar[tuple[str, ...]] = (*_BlockPreset.REQUEST_KNOBS, "remasking",
                                                "threshold")

    def _blocks(self) -> tuple[str, int, int]:
        return "gen_length", self.gen_length, self.block_length

    def _unscored_ids(self, ids: _Ids) -> tuple[int, ...]:
        """The ids ``confidence_eos_eot_inf`` removes from the scored distribution."""
        if not self.confidence_eos_eot_inf:
            return ()
        eot = self.eot_token_id
        _check(eot is None or eot < ids.vocab_size,
               f"eot_token_id {eot} is not a token of the model (vocab {ids.vocab_size})")
        eos = ids.eos_id if self.temperature == 0 else -1
        return tuple(sorted({i for i in (eos, -1 if eot is None else eot) if i >= 0}))

    def _decoding(self, ids: _Ids, block_length: int, steps_per_block: int) -> _Decoding:
        alg_temp = float(self.alg_temp or 0.0)
        if self.threshold is None:
            transfer, counts = TopCount(alg_temp), llada_counts(block_length, steps_per_block)
        else:
            transfer, counts = ConfidenceThreshold(self.threshold, alg_temp), None
            steps_per_block = block_length  # Fast-dLLM: until the block is complete
        banned = ids.eos_id if self.logits_eos_inf and ids.eos_id >= 0 else None
        tokens = GumbelMax(float(self.temperature), ids.mask_id,
                           token_filters(self.top_p, self.top_k), banned_id=banned,
                           unscored_ids=self._unscored_ids(ids))
        guidance = (ClassifierFreeGuidance(float(self.cfg_scale), ids.mask_id)
                    if self.cfg_scale > 0 else NoGuidance())
        return _Decoding(tokens=tokens,
                         scorer=position_scorer(self.remasking, ids.mask_id), transfer=transfer,
                         guidance=guidance, steps_per_block=steps_per_block, counts=counts)


# Dream's ``diffusion_generate`` without a generation config builds one with
# ``DreamGenerationConfig.from_model_config(model.config)``: under transformers 4.46.2 (the
# version Dream pins) the model config carries ``PretrainedConfig``'s legacy generation
# attributes (``_get_global_generation_defaults``: temperature 1.0, top_k 50, top_p 1.0) unless
# its config.json sets them, and ``from_model_config`` drops keys whose value is null, so those
# fall back to ``DreamGenerationConfig.__init__``'s own defaults (below). The checkpoint's
# generation_config.json is not read on that path.
_DREAM_NULL_DEFAULTS: dict[str, Any] = {
    "temperature": 0.0, "top_p": None, "top_k": None, "steps": 512, "eps": 1e-3,
    "alg": "origin", "alg_temp": None}


def dream_checkpoint_knobs(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The Dream knobs a checkpoint's config.json sets (``{}`` when it has none or no
    config.json, e.g. a dllm-jax checkpoint); raises ``ConfigError`` on unreadable JSON."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return {k: hf[k] if hf[k] is not None else null_default
            for k, null_default in _DREAM_NULL_DEFAULTS.items() if k in hf}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DreamConfig(_BlockPreset):
    """Dream's ``diffusion_generate`` (Dream ``generation_utils.py``).

    Defaults are what the original runs with when the caller does not pass the knob (see
    docs/sampling.md, "Defaults"): ``temperature`` 1.0 and ``top_k`` 50 (inherited from the
    model config under transformers 4.46.2; its ``top_p`` 1.0 filters nothing, written None
    here). ``from_pretrained`` applies a checkpoint's own values first.

    Attributes:
      steps: denoising steps.
      max_new_tokens: tokens to generate.
      temperature, top_p, top_k: token distribution (``logits / T``, then top-p, then top-k,
        softmax); ``top_k`` 0 or None: no top-k filter (``top_k=None`` is how the original
        turns it off).
      eps: the time grid is ``linspace(1, eps, steps + 1)``.
      alg: ``origin`` (each masked position commits with probability ``1 - s/t``),
        ``maskgit_plus``, ``topk_margin`` or ``entropy`` (commit ``int(m (1 - s/t))``
        most confident positions).
      alg_temp: > 0 samples positions from ``softmax(confidence / alg_temp)``.
      block_length: optional semi-autoregressive blocks (default: one block, as Dream does).
      mask_id: MASK id; default the model's.
      cache: block KV cache mode (only useful with blocks).

    Batches: the reference sizes each step by the batch-mean mask count. Every row here starts
    with the same number of masked positions and commits the same count per step, so per-row
    and batch-mean counts coincide; a row's output never depends on the rest of the batch.
    """

    steps: int = 512
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = 50
    eps: float = 1e-3
    alg: str = "origin"
    alg_temp: float | None = None
    block_length: int | None = None
    mask_id: int | None = None
    cache: str = "none"

    def __post_init__(self):
        super().__post_init__()
        _check(self.alg in DREAM_ALGS, f"unknown alg {self.alg!r}; choose from {DREAM_ALGS}")
        _check(0 < self.eps < 1, f"eps must be in (0, 1), got {self.eps}")

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike[str], **overrides: Any) -> DreamConfig:
        """The preset as the original resolves it for the checkpoint in ``model_dir``: the
        generation knobs its config.json sets, then these defaults, with ``overrides`` (the
        caller's arguments) on top."""
        return cls(**{**dream_checkpoint_knobs(model_dir), **overrides})

    REQUEST_KNOBS: ClassVar[tuple[str, ...]] = (*_BlockPreset.REQUEST_KNOBS, "alg", "eps")

    def _blocks(self) -> tuple[str, int, int]:
        return "max_new_tokens", self.max_new_tokens, self.block_length or self.max_new_tokens

    def _decoding(self, ids: _Ids, block_length: int, steps_per_block: int) -> _Decoding:
        tokens = TemperedSoftmax(float(self.temperature), ids.mask_id,
                                 token_filters(self.top_p, self.top_k))
        common = dict(tokens=tokens, scorer=position_scorer(self.alg, ids.mask_id),
                      guidance=NoGuidance(), steps_per_block=steps_per_block)
        if self.alg == "origin":
            return _Decoding(**common, transfer=CoinFlip(),
                             transfer_probs=dream_transfer_probs(steps_per_block, self.eps))
        return _Decoding(**common, transfer=TopCount(float(self.alg_temp or 0.0)),
                         counts=dream_counts(block_length, steps_per_block, self.eps))


@dataclasses.dataclass(frozen=True, kw_only=True)
class IMHConfig:
    """Global tempering by Independent Metropolis-Hastings over K block candidates (see
    docs/sampling.md, "IMH", for the distribution it samples).

    Attributes:
      alpha: tempering exponent (1 with ``target='path'`` at proposal temperature 1 accepts
        every candidate; large is greedy over the candidates).
      num_candidates: K candidate completions of each block, drawn as one batch.
      proposal: ``random`` (random-order remasking) or ``tpp`` at ``proposal_temperature``.
      proposal_temperature: temperature of the proposal's token sampling.
      target: how a candidate is scored: ``path`` (the model's log-probability of its tokens
        along its own decoding order; per block the output follows the order average
        ``E_order[p(x | order)^alpha]``) or ``canonical`` (rescored left to right, one
        position per forward pass: ``block_length`` extra passes per block; per block the
        output follows ``p_LR(x)^alpha``, whatever the proposal's order).
      gen_length, block_length, steps: as in LLaDA (steps over all blocks).
      mask_id: MASK id; default the model's.
    """

    alpha: float = 4.0
    num_candidates: int = 8
    proposal: str = "random"
    proposal_temperature: float = 1.0
    target: str = "path"
    gen_length: int = 128
    block_length: int = 32
    steps: int = 128
    mask_id: int | None = None

    def __post_init__(self):
        _check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        _check(self.num_candidates >= 1, f"num_candidates must be >= 1, got {self.num_candidates}")
        _check(self.proposal in IMH_PROPOSALS,
               f"unknown proposal {self.proposal!r}; choose from {IMH_PROPOSALS}")
        _check(self.proposal_temperature > 0,
               f"proposal_temperature must be > 0, got {self.proposal_temperature}")
        _check(self.target in IMH_TARGETS,
               f"unknown IMH target {self.target!r}; choose from {IMH_TARGETS}")
        LLaDAConfig(steps=self.steps, gen_length=self.gen_length, block_length=self.block_length)

    def proposal_config(self) -> LLaDAConfig:
        return LLaDAConfig(steps=self.steps, gen_length=self.gen_length,
                           block_length=self.block_length, temperature=self.proposal_temperature,
                           remasking=self.proposal, mask_id=self.mask_id)

    def plan(self, model_config: ModelConfig, prompt_length: int) -> Plan:
        return self.proposal_config().plan(model_config, prompt_length)


SamplerConfig = LLaDAConfig | DreamConfig | IMHConfig
# The presets by the names commands and adapters select them with (``--sampler NAME``).
PRESETS: dict[str, type] = {"llada": LLaDAConfig, "dream": DreamConfig, "imh": IMHConfig}
