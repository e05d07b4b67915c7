"""Thin wrapper: ``python convert/hf_to_orbax.py --hf-dir DIR --out DIR [--dtype bfloat16]``."""

import sys

from dllm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "hf-to-orbax", *sys.argv[1:]]))
