"""Test setup: 8 simulated CPU devices and a persistent compilation cache, before JAX starts."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = Path(os.environ.get("DLLM_JAX_TEST_CACHE", Path.home() / ".cache" / "dllm_jax_jit"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO = Path(__file__).resolve().parents[1]
# Where the shared files (tokenizers, benchmark data) are looked for, first found wins.
SHARED_CANDIDATES = (REPO.parent / "shared", REPO / "shared")


def find_shared() -> Path | None:
    """``$DLLM_JAX_SHARED`` when set (it must then be a directory), else ``shared/`` beside the
    repository or inside it; None when there is none."""
    env = os.environ.get("DLLM_JAX_SHARED")
    if env:
        if not Path(env).is_dir():
            raise pytest.UsageError(f"DLLM_JAX_SHARED={env} is not a directory")
        return Path(env).resolve()
    return next((c for c in SHARED_CANDIDATES if c.is_dir()), None)


SHARED: Path | None = None


def pytest_configure(config):
    global SHARED
    SHARED = find_shared()  # a wrong DLLM_JAX_SHARED stops the run with one line


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared files (see :func:`find_shared`); tests needing them skip when absent."""
    if SHARED is None:
        pytest.skip("no shared/ directory (DLLM_JAX_SHARED unset; looked in "
                    + ", ".join(map(str, SHARED_CANDIDATES)) + ")")
    return SHARED


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """``shared/data`` (the real benchmark files); skips cleanly when absent."""
    d = shared_dir / "data"
    if not d.is_dir():
        pytest.skip(f"{d} is not present")
    return d


@pytest.fixture(scope="session")
def tiny_llada():
    from helpers import tiny_model

    return tiny_model("llada", seed=0)


@pytest.fixture(scope="session")
def tiny_dream():
    from helpers import tiny_model

    return tiny_model("dream", seed=1)


@pytest.fixture(scope="session")
def sharp_llada():
    """A tiny LLaDA model with peaked, context-dependent predictions (sampler tests)."""
    from helpers import sharpened, tiny_model

    return sharpened(tiny_model("llada", seed=2))


@pytest.fixture(scope="session")
def sharp_dream():
    from helpers import sharpened, tiny_model

    return sharpened(tiny_model("dream", seed=1), factor=10.0)
