"""The ``dllm_jax`` model of lm-evaluation-harness; importing this module registers it.

    python -m dllm_jax.integrations.lm_eval --model dllm_jax \\
        --model_args pretrained=DIR,steps=256,gen_length=256,block_length=32 --tasks gsm8k
    dllm-jax eval lm-eval --model dllm_jax --model_args pretrained=DIR,mc_num=128 --tasks piqa

Both run lm-eval's own command line (every flag of ``lm-eval run``) with this model available,
as LLaDA's ``eval_llada.py`` does. ``lm_eval.simple_evaluate(model="dllm_jax",
model_args=...)`` works once the module is imported. The model_args are in docs/eval.md;
lm-eval is an optional dependency: ``pip install 'dllm-jax[lm-eval]'``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from dllm_jax.integrations import LM_EVAL_HINT, lm_eval_missing

if lm_eval_missing():
    if __name__ == "__main__":
        sys.exit(f"error: {LM_EVAL_HINT}")
    raise ModuleNotFoundError(LM_EVAL_HINT, name="lm_eval")

import lm_eval.models  # noqa: E402,F401  (lm-eval's own models stay registered beside ours)
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

from dllm_jax.data.tokenizer import load_tokenizer  # noqa: E402
from dllm_jax.errors import ConfigError  # noqa: E402
from dllm_jax.integrations.model_args import parse_model_args  # noqa: E402
from dllm_jax.integrations.runner import Runner  # noqa: E402
from dllm_jax.weights import from_pretrained  # noqa: E402

NAME = "dllm_jax"


@register_model(NAME)
class DllmJaxLM(LM):
    """A dllm-jax masked-diffusion model behind lm-eval's ``LM`` interface.

    The keywords are the model_args (docs/eval.md): ``pretrained``, ``dtype``, ``batch_size``,
    ``seed``, ``sampler`` and its preset's knobs, ``mc_num``, ``is_check_greedy``. They are
    validated (one :class:`ConfigError` line) before the checkpoint is read.
    """

    def __init__(self, pretrained: str | None = None, **kwargs: Any):
        super().__init__()
        if pretrained is not None:
            kwargs["pretrained"] = pretrained
        self.args = parse_model_args(kwargs)
        self.tokenizer = load_tokenizer(self.args.pretrained)
        model = from_pretrained(self.args.pretrained, dtype=self.args.dtype)
        self.runner = Runner(model, self.tokenizer, self.args, progress=True)

    # ------------------------------------------------------------------ requests
    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        """LLaDA's Monte-Carlo estimate of ``log p(continuation | context)`` and its greedy
        check, per request (``args = (context, continuation)``)."""
        self.runner.progress = not disable_tqdm
        pairs = self.runner.text_pairs(tuple(r.args) for r in requests)
        out = self.runner.loglikelihoods(pairs)
        self._cache("loglikelihood", requests, out)
        return out

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """The same estimate of each whole text (``args = (text,)``) given only the prefix
        token (BOS, else EOS); a text longer than the model's positions is refused."""
        self.runner.progress = not disable_tqdm
        out = self.runner.rolling([r.args[0] for r in requests])
        self._cache("loglikelihood_rolling", requests, out)
        return out

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Completions with the sampler preset (``args = (context, gen_kwargs)``):
        ``max_gen_toks`` sets the generation length, ``until`` cuts the decoded text; other
        generation kwargs are not used (the sampler is configured by model_args)."""
        self.runner.progress = not disable_tqdm
        out = self.runner.generate([(r.args[0], dict(r.args[1] or {})) for r in requests])
        self._cache("generate_until", requests, out)
        return out

    def _cache(self, kind: str, requests: Sequence[Any], results: Sequence[Any]) -> None:
        hook = getattr(self, "cache_hook", None)
        if hook is not None:
            for req, res in zip(requests, results, strict=True):
                hook.add_partial(kind, req.args, res)

    # ------------------------------------------------------------------ chat templates
    @property
    def tokenizer_name(self) -> str:
        return self.args.pretrained.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The chat as text through the tokenizer's own template (lm-eval's
        ``--apply_chat_template``)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"--apply_chat_template: the tokenizer in {self.args.pretrained} "
                              "has no chat template")
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt)


def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's command line (``lm-eval run`` flags) with the ``dllm_jax`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        sys.exit(f"error: {first}")
