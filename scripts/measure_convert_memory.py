"""Peak RSS of ``dllm-jax convert hf-to-orbax`` on a locally built model of a few hundred MB.

Builds a random Llama-shaped checkpoint with transformers (no network), then runs the converter
in a fresh process and reports its peak resident set against a baseline process that only
imports JAX and dllm-jax. Usage: ``python scripts/measure_convert_memory.py [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Runs ``cmd`` in a child (via a wrapper that reports its own ru_maxrss)."""
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(after, before) / 1024.0, time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    work = Path(args.workdir or tempfile.mkdtemp(prefix="convert-rss-"))
    hf_dir = work / "hf"
    if not hf_dir.exists():
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=2048,
                          num_hidden_layers=args.layers, num_attention_heads=12,
                          num_key_value_heads=4, vocab_size=32000)
        LlamaForCausalLM(cfg).save_pretrained(hf_dir)
    size_mb = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors")) / 2**20
    largest = 32000 * args.hidden * 4 / 2**20
    base_rss, _ = _peak_rss_mb([sys.executable, "-c",
                                "import jax, jax.numpy as jnp, dllm_jax.weights, orbax.checkpoint;"
                                "jnp.ones(3).block_until_ready()"])
    out = work / "ckpt"
    conv_rss, secs = _peak_rss_mb([sys.executable, "-m", "dllm_jax.cli", "convert", "hf-to-orbax",
                                   "--hf-dir", str(hf_dir), "--out", str(out)])
    result = {
        "checkpoint_mb": round(size_mb, 1), "largest_tensor_mb": round(largest, 1),
        "baseline_rss_mb": round(base_rss, 1), "convert_peak_rss_mb": round(conv_rss, 1),
        "convert_minus_baseline_mb": round(conv_rss - base_rss, 1),
        "ratio_to_checkpoint": round((conv_rss - base_rss) / size_mb, 2), "seconds": round(secs, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
