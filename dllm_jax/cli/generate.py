"""``dllm-jax generate`` and ``dllm-jax trajectory``, and the sampler flags other commands share."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from dllm_jax.analysis.plot import plot_trajectory
from dllm_jax.analysis.viewer import write_viewer
from dllm_jax.analysis.zones import confusion_zones
from dllm_jax.data.batching import completion_until_eos
from dllm_jax.data.tokenizer import load_tokenizer, render_prompt
from dllm_jax.errors import ConfigError
from dllm_jax.sampling import DreamConfig, generate
from dllm_jax.sampling.presets import PRESETS
from dllm_jax.weights import (
    GENERATION_NAME,
    check_model_dir,
    from_pretrained,
    generation_settings,
)


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    """Adds ``--sampler`` and every sampler knob (defaults are each preset's own)."""
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", default="llada", choices=["llada", "dream", "imh"])
    g.add_argument("--gen-length", "--max-new-tokens", dest="gen_length", type=int,
                   help="tokens to generate, every sampler (--max-new-tokens is the same flag); "
                        "default: the checkpoint's saved generation settings, else the preset's")
    g.add_argument("--steps", type=int, help="denoising steps (all blocks together)")
    g.add_argument("--block-length", type=int, help="semi-autoregressive block size")
    g.add_argument("--temperature", type=float,
                   help="token temperature (llada default 0; dream default 1.0, as the original)")
    g.add_argument("--cfg-scale", type=float, help="llada: classifier-free guidance")
    g.add_argument("--remasking", help="llada: low_confidence|random|tpp|topk_margin|entropy|max_s")
    g.add_argument("--threshold", type=float, help="llada: confidence-threshold parallel decoding")
    g.add_argument("--logits-eos-inf", action="store_true", default=None,
                   help="llada: EOS logit -inf before sampling")
    g.add_argument("--confidence-eos-eot-inf", action="store_true", default=None,
                   help="llada: EOS/EOT samples rank last (confidence 0), as LLaDA's flag")
    g.add_argument("--eot-token-id", type=int,
                   help="llada: EOT id for --confidence-eos-eot-inf (LLaDA-8B-Instruct: 126348)")
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int,
                   help="keep the k most likely tokens; 0: no top-k filter (dream default 50, "
                        "as the original)")
    g.add_argument("--eps", type=float, help="dream: final time of the grid")
    g.add_argument("--alg", help="dream: origin|maskgit_plus|topk_margin|entropy")
    g.add_argument("--alg-temp", type=float)
    g.add_argument("--cache", choices=["none", "prefix", "dual"])
    g.add_argument("--alpha", type=float, help="imh: target p^alpha")
    g.add_argument("--num-candidates", type=int, help="imh: candidates per block (K)")
    g.add_argument("--proposal", choices=["random", "tpp"], help="imh: proposal sampler")
    g.add_argument("--proposal-temperature", type=float)
    g.add_argument("--target", choices=["path", "canonical"],
                   help="imh: score candidates along their own decoding path (default) or left "
                        "to right (an order-free target; see docs/sampling.md, IMH)")


_PRESETS = PRESETS


def _knobs(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def saved_generation(model_dir: str, given: dict) -> dict:
    """The checkpoint's saved generation settings (``dllm_jax_generation.json``) for the flags
    not given; with ``--gen-length`` given, its saved ``steps`` and ``block_length`` (tied to
    the saved length) are not used. Says on stderr what it took."""
    saved = generation_settings(model_dir)
    if "gen_length" in given:
        saved = {}
    taken = {k: v for k, v in saved.items() if k not in given}
    if taken:
        print(f"{GENERATION_NAME}: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                 for k, v in taken.items()), file=sys.stderr)
    return taken


def sampler_config_from_args(args: argparse.Namespace, model_dir: str | None = None):
    """The preset's frozen config from parsed flags; a flag the preset does not take is an
    error (one line), so a typo never silently falls back to a default. A flag belongs to the
    presets that have a field of its name (``--gen-length`` is Dream's ``max_new_tokens``).
    With ``model_dir`` (a model directory; a training run is refused naming its model), the
    unset length, steps and block length take the checkpoint's saved generation settings, and
    Dream's other unset knobs the checkpoint's own values (``DreamConfig.from_pretrained``),
    as the original does."""
    cls = _PRESETS[args.sampler]
    all_knobs = set().union(*map(_knobs, _PRESETS.values()))
    given = {k: getattr(args, k) for k in all_knobs if getattr(args, k, None) is not None}
    if model_dir is not None:
        check_model_dir(model_dir)
        given = {**saved_generation(model_dir, given), **given}
    if cls is DreamConfig and "gen_length" in given:
        given["max_new_tokens"] = given.pop("gen_length")
    extra = sorted(set(given) - _knobs(cls))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise ConfigError(f"{flags} not used by --sampler {args.sampler}")
    if cls is DreamConfig and model_dir is not None:
        return DreamConfig.from_pretrained(model_dir, **given)
    return cls(**given)


def _parse_prompt_ids(text: str) -> list[list[int]]:
    try:
        rows = [[int(t) for t in row.split(",") if t.strip()] for row in text.split(";")]
    except ValueError as e:
        raise ConfigError(f"--prompt-ids must look like 1,2,3;4,5,6: {e}") from None
    if not rows or any(not r for r in rows):
        raise ConfigError("--prompt-ids has an empty prompt")
    return rows


def _prepare(args: argparse.Namespace):
    """Validates flags (no compilation yet), loads the model and prompts."""
    if (args.prompt is None) == (args.prompt_ids is None):
        raise ConfigError("give exactly one of --prompt and --prompt-ids")
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model} is not a directory")
    config = sampler_config_from_args(args, args.model)  # refuses a training run directory
    tokenizer = None
    if args.prompt is not None:
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        prompts = [render_prompt(tokenizer, text, not args.no_chat_template)
                   for text in args.prompt]
    else:
        prompts = _parse_prompt_ids(args.prompt_ids)
    model = from_pretrained(args.model, dtype=args.dtype)
    vocab = model.config.vocab_size
    bad = [t for row in prompts for t in row if not 0 <= t < vocab]
    if bad:
        raise ConfigError(f"prompt token id {bad[0]} is outside the vocabulary (size {vocab})")
    config.plan(model.config, max(len(r) for r in prompts))  # schedule errors before compiling
    return model, config, prompts, tokenizer


def _decode(tokenizer, seqs: np.ndarray, p_len: int, eos_id: int | None) -> list[str] | None:
    """Each completion's text: its tokens before the first EOS (``sequences`` keep them all)."""
    if tokenizer is None:
        return None
    return [tokenizer.decode(completion_until_eos(row[p_len:], eos_id), skip_special_tokens=True)
            for row in seqs]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF or dllm-jax checkpoint directory")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--prompt-ids", help="token ids: 1,2,3 or 1,2;3,4 for a batch")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_sampler_arguments(p)


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="sample completions with a diffusion LM")
    _add_common(p)
    p.add_argument("--trajectory", help="write the trajectory record to this .npz")
    p.set_defaults(func=_generate)


def add_trajectory_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("trajectory", help="record a denoising trajectory and plot it")
    _add_common(p)
    p.add_argument("--plot", help="output PNG (row 0: commit steps, confidence, H/CM/RoEC)")
    p.add_argument("--html", help="output HTML viewer: one self-contained page, every row")
    p.add_argument("--zone-threshold", type=float, default=1.0)
    p.set_defaults(func=_trajectory)


def _run(args: argparse.Namespace, record: bool):
    model, config, prompts, tokenizer = _prepare(args)
    out = generate(model, prompts, config=config, key=args.seed, record=record)
    seqs = np.asarray(out.sequences)
    p_len = max(len(r) for r in prompts)  # prompts are left-padded to the longest
    return out, seqs, p_len, _decode(tokenizer, seqs, p_len, model.config.eos_token_id), tokenizer


def _generate(args: argparse.Namespace) -> int:
    record = args.trajectory is not None
    out, seqs, p_len, text, _ = _run(args, record)
    if record:
        t = out.trajectory
        np.savez(args.trajectory, sequences=seqs, **{
            k: np.asarray(v) for k, v in t._asdict().items() if v is not None})
    if args.json:
        print(json.dumps({"sequences": seqs.tolist(), "text": text}))
    else:
        for i, row in enumerate(seqs):
            print(f"[{i}] {text[i] if text else row[p_len:].tolist()}")
    return 0


def _trajectory(args: argparse.Namespace) -> int:
    if args.plot is None and args.html is None and not args.json:
        raise ConfigError("give --plot OUT.png, --html OUT.html or --json")
    if args.sampler == "imh":
        raise ConfigError("trajectory needs a per-step record: use --sampler llada or dream")
    out, seqs, p_len, text, tokenizer = _run(args, True)
    t = out.trajectory
    decode = None if tokenizer is None else (lambda ids: tokenizer.decode(ids))
    zones = []
    if args.plot:
        zones = plot_trajectory(t, args.plot, row=0, tokens=seqs, decode=decode,
                                threshold=args.zone_threshold)
    if args.html:
        write_viewer(args.html, t, seqs, p_len, decode=decode, threshold=args.zone_threshold,
                     alternatives=(np.asarray(t.top_ids), np.asarray(t.top_probs)))
    rows = []
    for i in range(seqs.shape[0]):
        z = confusion_zones(np.asarray(t.roec[i]), np.asarray(t.margin[i]), args.zone_threshold,
                            valid_T=np.asarray(t.valid[i]))
        rows.append({"entropy": np.asarray(t.entropy[i]).tolist(),
                     "margin": np.asarray(t.margin[i]).tolist(),
                     "roec": np.asarray(t.roec[i]).tolist(),
                     "valid": np.asarray(t.valid[i]).tolist(),
                     "zones": [[zz.start, zz.end] for zz in z]})
    if args.json:
        print(json.dumps({"sequences": seqs.tolist(), "text": text, "steps": rows}))
    else:
        wrote = " and ".join(x for x in (args.plot, args.html) if x)
        print(f"wrote {wrote}; {len(zones)} confusion zone(s) in row 0: "
              + ", ".join(f"steps {z.start}-{z.end - 1}" for z in zones), file=sys.stdout)
    return 0
