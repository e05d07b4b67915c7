import sys

from dllm_jax.cli.main import main

sys.exit(main())
