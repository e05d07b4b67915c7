"""The work behind the lm-eval model, free of lm-eval: likelihoods, greedy checks, generation.

:class:`Runner` holds the model, its tokenizer and the validated :class:`ModelArgs`; the
adapter in ``lm_eval.py`` only unpacks lm-eval's requests and calls it. Requests are grouped
into shape buckets (``elbo.bucket``) so a run compiles one program per bucket:

- ``loglikelihoods``: per request one compiled call running all ``mc_num / batch_size``
  Monte-Carlo rounds of ``batch_size`` copies (``elbo.mc_round_losses``); with
  ``is_check_greedy`` the greedy check for up to ``batch_size`` requests per call.
- ``generate``: ``batch_size`` prompts per :func:`dllm_jax.sampling.generate` call, left-padded
  to their bucket, the batch filled up to ``batch_size`` rows; each request with its own key
  (``requests.request_keys``), so a completion does not depend on its batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from dllm_jax.errors import ConfigError
from dllm_jax.integrations import elbo
from dllm_jax.integrations.model_args import ModelArgs
from dllm_jax.integrations.requests import (
    Codec,
    as_stop_list,
    cut_at_stops,
    encode_pair,
    request_keys,
)
from dllm_jax.sampling import DreamConfig, IMHConfig, SamplerConfig, generate

log = logging.getLogger(__name__)


def _length_field(preset: SamplerConfig) -> str:
    return "max_new_tokens" if isinstance(preset, DreamConfig) else "gen_length"


class Runner:
    """Runs requests on one model.

    Args:
      model: a :class:`dllm_jax.model.transformer.Transformer`.
      tokenizer: its tokenizer (HF or the character tokenizer).
      args: the validated model_args.
      progress: show tqdm bars.
    """

    def __init__(self, model: Any, tokenizer: Any, args: ModelArgs, progress: bool = True):
        cfg = model.config
        mask_id = cfg.mask_token_id if args.mask_id is None else args.mask_id
        if mask_id is None or not 0 <= mask_id < cfg.vocab_size:
            raise ConfigError(f"the model has no MASK token in its vocabulary (mask id "
                              f"{mask_id}); give mask_id=ID")
        self.model, self.args, self.codec = model, args, Codec(tokenizer)
        self.mask_id = int(mask_id)
        self.pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None
                          else cfg.eos_token_id or 0)
        self.max_length = int(cfg.max_position_embeddings)
        self.progress = progress
        self._graphdef, self._state = nnx.split(model)
        self.preset_for(None)  # the sampler's plan against this model, before any request

    # ------------------------------------------------------------------ likelihoods
    def _pairs(self, pairs: Iterable[tuple[list[int], list[int]]]
               ) -> list[tuple[list[int], list[int]]]:
        """Contexts cut on the left to fit the model's positions (lm-eval's convention)."""
        out, cut = [], 0
        for ctx, cont in pairs:
            if len(cont) > self.max_length - 1:
                raise ConfigError(f"a continuation of {len(cont)} tokens does not fit the "
                                  f"model's {self.max_length} positions")
            keep = self.max_length - len(cont)
            cut += len(ctx) > keep
            out.append((ctx[-keep:], cont))
        if cut:
            log.warning("%d context(s) cut on the left to fit %d positions", cut, self.max_length)
        return out

    def loglikelihoods(self, pairs: Sequence[tuple[list[int], list[int]]],
                       check_greedy: bool | None = None) -> list[tuple[float, bool]]:
        """``(log-likelihood estimate, is_greedy)`` per ``(context_ids, continuation_ids)``;
        an empty continuation scores ``(0.0, True)``. ``is_greedy`` is False unless the
        greedy check runs (``check_greedy``, default the ``is_check_greedy`` model_arg)."""
        pairs = self._pairs(pairs)
        losses = self.round_losses(pairs)
        out = [(0.0 if r is None else -float(r.mean()), r is None) for r in losses]
        if self.args.is_check_greedy if check_greedy is None else check_greedy:
            greedy = self.greedy(pairs)
            out = [(ll, g) for (ll, _), g in zip(out, greedy, strict=True)]
        return out

    def round_losses(self, pairs: Sequence[tuple[list[int], list[int]]]
                     ) -> list[np.ndarray | None]:
        """Each request's Monte-Carlo round losses, float64 ``[mc_num / batch_size]`` (LLaDA's
        per-round ``loss.sum() / batch_size``; the estimate is minus their mean); None for an
        empty continuation. Each distinct masked input of a request is scored once."""
        b, rounds = self.args.batch_size, self.args.mc_num // self.args.batch_size
        keys = request_keys(self.args.seed, [c + [-1] + t for c, t in pairs])
        draws: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        rows: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                continue
            shape = (elbo.bucket(len(ctx)), elbo.bucket(len(cont)))
            masks, counts = elbo.mc_masks(jnp.asarray(keys[i]), jnp.int32(len(cont)), copies=b,
                                          rounds=rounds, width=shape[1])
            unique, inverse = np.unique(np.asarray(masks).reshape(rounds * b, shape[1]),
                                        axis=0, return_inverse=True)
            draws[i] = (unique, inverse.reshape(-1), np.asarray(counts).reshape(-1))
            rows[shape] += [(i, j) for j in range(len(unique))]
        nll = {i: np.zeros(len(d[0])) for i, d in draws.items()}
        bar = tqdm(total=sum(map(len, rows.values())), desc="loglikelihood (masked inputs)",
                   disable=not self.progress)
        for (c_w, t_w), todo in rows.items():
            for lo in range(0, len(todo), b):
                chunk = todo[lo:lo + b]
                full = chunk + [chunk[0]] * (b - len(chunk))
                tokens, amask, _ = elbo.pack_rows([pairs[i] for i, _ in full], c_w, t_w,
                                                  self.pad_id)
                masked = np.stack([draws[i][0][j] for i, j in full])
                got = np.asarray(elbo.masked_nll(
                    self._graphdef, self._state, jnp.asarray(tokens), jnp.asarray(amask),
                    jnp.asarray(masked), ctx_width=c_w, cfg_scale=self.args.cfg_scale,
                    mask_id=self.mask_id), np.float64)
                for (i, j), v in zip(chunk, got, strict=False):
                    nll[i][j] = v
                bar.update(len(chunk))
        bar.close()
        out: list[np.ndarray | None] = [None] * len(pairs)
        for i, (_, inverse, counts) in draws.items():
            ratio = counts / len(pairs[i][1])
            out[i] = (nll[i][inverse] / ratio).reshape(rounds, b).sum(1) / b
        return out

    def greedy(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[bool]:
        """LLaDA's greedy check of each pair, ``batch_size`` requests of a bucket per call."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (ctx, cont) in enumerate(pairs):
            if cont:
                groups[(elbo.bucket(len(ctx)), elbo.bucket(len(cont)))].append(i)
        out = [True] * len(pairs)
        b = self.args.batch_size
        bar = tqdm(total=sum(map(len, groups.values())), desc="greedy check",
                   disable=not self.progress)
        for (c_w, t_w), idx in groups.items():
            for lo in range(0, len(idx), b):
                chunk = idx[lo:lo + b]
                rows = [pairs[i] for i in chunk] + [pairs[chunk[0]]] * (b - len(chunk))
                tokens, amask, lengths = elbo.pack_rows(rows, c_w, t_w, self.pad_id)
                ok = elbo.greedy_matches(
                    self._graphdef, self._state, jnp.asarray(tokens), jnp.asarray(amask),
                    jnp.asarray(lengths), ctx_width=c_w, cfg_scale=self.args.cfg_scale,
                    mask_id=self.mask_id)
                for i, g in zip(chunk, np.asarray(ok)[:len(chunk)], strict=True):
                    out[i] = bool(g)
                bar.update(len(chunk))
        bar.close()
        return out

    def text_pairs(self, requests: Iterable[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        return [encode_pair(self.codec, ctx, cont) for ctx, cont in requests]

    def rolling(self, texts: Sequence[str]) -> list[float]:
        """The ELBO of each whole text, conditioned on the prefix token only."""
        pairs = self.text_pairs(("", t) for t in texts)
        for _, cont in pairs:
            if len(cont) > self.max_length - 1:
                raise ConfigError(f"loglikelihood_rolling: a text of {len(cont)} tokens does "
                                  f"not fit the model's {self.max_length} positions (rolling "
                                  "windows are not supported)")
        return [ll for ll, _ in self.loglikelihoods(pairs, check_greedy=False)]

    # ------------------------------------------------------------------ generation
    def preset_for(self, max_gen_toks: Any) -> SamplerConfig:
        """The sampler with its length set to ``max_gen_toks`` (None: as configured);
        raises :class:`ConfigError` when that length does not fit the block geometry."""
        preset = self.args.sampler
        field = _length_field(preset)
        if max_gen_toks is not None and max_gen_toks != getattr(preset, field):
            if isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int) \
                    or max_gen_toks < 1:
                raise ConfigError(f"max_gen_toks must be a positive integer, got "
                                  f"{max_gen_toks!r}")
            try:
                preset = dataclasses.replace(preset, **{field: max_gen_toks})
            except ConfigError as e:
                raise ConfigError(
                    f"max_gen_toks {max_gen_toks} does not fit the sampler ({e}); set "
                    f"block_length/steps in --model_args or pass --gen_kwargs "
                    f"max_gen_toks=N") from None
        length = getattr(preset, field)
        if length >= self.max_length:
            raise ConfigError(f"{field} {length} leaves no room for a prompt in the model's "
                              f"{self.max_length} positions")
        if not isinstance(preset, IMHConfig):
            preset.plan(self.model.config, 1)
        return preset

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        """One completion per ``(context, gen_kwargs)``: generated with the sampler, decoded
        with special tokens, cut at the first ``until`` string, special tokens removed."""
        presets, stops = {}, []
        for _, kw in requests:
            n = (kw or {}).get("max_gen_toks")
            if n not in presets:
                presets[n] = self.preset_for(n)
            stops.append(as_stop_list((kw or {}).get("until")))
        prompts = [self.codec.encode(ctx) for ctx, _ in requests]
        if any(not p for p in prompts):
            raise ConfigError("an empty prompt (the tokenizer adds no BOS): nothing to "
                              "condition on")
        keys = request_keys(self.args.seed, prompts)
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, (_, kw) in enumerate(requests):
            groups[(kw or {}).get("max_gen_toks")].append(i)
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", disable=not self.progress)
        for n, idx in groups.items():
            preset = presets[n]
            room = self.max_length - getattr(preset, _length_field(preset))
            idx = sorted(idx, key=lambda i: len(prompts[i]))
            cut = sum(len(prompts[i]) > room for i in idx)
            if cut:
                log.warning("%d prompt(s) cut on the left to fit %d positions", cut, room)
            for lo in range(0, len(idx), self.args.batch_size):
                chunk = idx[lo:lo + self.args.batch_size]
                rows = [prompts[i][-room:] for i in chunk]
                for i, text in zip(chunk, self._generate_chunk(preset, rows, keys[chunk], room),
                                   strict=True):
                    out[i] = self.codec.strip_special(cut_at_stops(text, stops[i]))
                bar.update(len(chunk))
        bar.close()
        return out

    def _generate_chunk(self, preset: SamplerConfig, rows: list[list[int]], keys: np.ndarray,
                        room: int) -> list[str]:
        """Raw completion texts of ``rows`` (one generate call of ``batch_size`` rows)."""
        b = self.args.batch_size
        width = min(elbo.bucket(max(map(len, rows))), room)  # >= the longest row (cut to room)
        ids = np.full((b, width), self.pad_id, np.int32)
        mask = np.zeros((b, width), np.int32)
        for r in range(b):
            row = rows[min(r, len(rows) - 1)]  # filler rows repeat the last prompt
            ids[r, width - len(row):], mask[r, width - len(row):] = row, 1
        keys = np.concatenate([keys, np.repeat(keys[-1:], b - len(rows), axis=0)])
        seqs = np.asarray(generate(self.model, ids, mask, config=preset, key=keys).sequences)
        return [self.codec.decode_raw(seqs[r, width:]) for r in range(len(rows))]
