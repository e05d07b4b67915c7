"""Thin wrapper: ``python convert/orbax_to_hf.py --ckpt DIR --out DIR [--dtype bfloat16]``."""

import sys

from dllm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "orbax-to-hf", *sys.argv[1:]]))
