"""Compile-only memory measurement (``dllm_jax.programs.memory``) on a tiny model and a 2x4 mesh:
the exact state shards, donation of the state, the RL step's and the sampler's programs; the
per-layer extrapolation and the fit rule; the TPU pod RL config loads through the CLI."""

import math
from pathlib import Path

import pytest
import yaml
from helpers import tiny_config

from dllm_jax.model import sharding as shd
from dllm_jax.programs import memory
from dllm_jax.programs.config import RLConfig
from dllm_jax.sampling import LLaDAConfig
from dllm_jax.train.lora import LoRAConfig

REPO = Path(__file__).resolve().parents[2]

# The tiny config's parameters (float32) on a (data 2, fsdp 4, tensor 1) mesh, counted by hand:
# matrices have their ``embed`` dimension (32) split 4 ways, norms are replicated.
#   embed_tokens [64, 32] and lm_head [32, 64]: 2048 each
#   per layer: q [32, 32] 1024, k, v [32, 16] 512 each, o [32, 32] 1024,
#              gate, up [32, 64] and down [64, 32] 2048 each -> 9216 (x 2 layers)
#   norms: 2 per layer + the final one, [32] each
MATRICES = 2048 + 2048 + 2 * 9216
NORMS = 5 * 32
PARAMS_PER_DEVICE = 4 * (MATRICES // 4 + NORMS)
# AdamW's mu and nu shard like the parameters; its step count and the schedule's are int32.
OPT_PER_DEVICE = 2 * PARAMS_PER_DEVICE + 2 * 4


@pytest.fixture(scope="module")
def mesh():
    return shd.make_mesh((2, 4, 1))


def test_train_step_state_is_exact_and_donated(mesh):
    rep = memory.measure_train_step(tiny_config("llada"), mesh, rows=8, seq_len=12)
    assert (rep.params_bytes, rep.opt_bytes) == (PARAMS_PER_DEVICE, OPT_PER_DEVICE)
    # Arguments: the state (+ the int32 step), one row of tokens and of the response mask
    # [1, 12] int32 per device, the uint32 key [2].
    state = PARAMS_PER_DEVICE + OPT_PER_DEVICE + 4
    assert rep.argument_bytes == state + 2 * 12 * 4 + 8
    # The donated state is written in place: every byte of it is aliased.
    assert rep.alias_bytes == state
    assert rep.peak_bytes == rep.argument_bytes + rep.output_bytes - state + rep.temp_bytes


def test_rl_step_counts_its_reference_and_sampler_keeps_its_cache(mesh):
    cfg = tiny_config("llada")
    rl = RLConfig(loss="tracerl", prompts_per_step=2, group_size=2, budget=2,
                  sampler=LLaDAConfig(steps=8, gen_length=8, block_length=4, cache="dual"))
    rep = memory.measure_train_step(cfg, mesh, rows=8, seq_len=12, rl=rl)
    # TraceRL's KL term (beta 0.01) keeps a frozen copy of the parameters beside the state.
    assert rep.program == "rl" and rep.resident_bytes == PARAMS_PER_DEVICE
    # Rows per device: int inputs/tokens/attention_mask and float32 targets/old/ref log-probs
    # [1, 12]; float32 adv and reward [1]. (The RL loss draws nothing: jit drops the unused key.)
    assert rep.argument_bytes == PARAMS_PER_DEVICE + OPT_PER_DEVICE + 4 + 6 * 12 * 4 + 2 * 4
    # With LoRA the reference is a copy of the adapters only. Rank 2, float32, per layer:
    # A [in, 2] is split like its kernel's rows (embed over fsdp: q, k, v, gate, up 8 x 2 each;
    # o and down rows are heads / mlp, replicated: 32 x 2 and 64 x 2), B [2, out] like its
    # columns (o and down: 2 x 8; q 2 x 32, k, v 2 x 16, gate, up 2 x 64 replicated).
    adapters = 4 * 2 * (5 * 16 + 64 + 128 + 2 * 16 + 64 + 2 * 32 + 2 * 128)
    lrep = memory.measure_train_step(cfg, mesh, rows=8, seq_len=12, rl=rl,
                                     lora_config=LoRAConfig(rank=2, alpha=4.0))
    assert lrep.params_bytes == PARAMS_PER_DEVICE + adapters
    assert lrep.resident_bytes == adapters
    smp = memory.measure_sampler(cfg, mesh, rows=8, seq_len=12, block_length=4)
    assert smp.argument_bytes == PARAMS_PER_DEVICE + 2 * 12 * 4 + 4
    # Out: the block's float32 logits [1, 4, 64] and the canvas row [1, 12] int32 (48 bytes,
    # which the CPU compiler rounds up to its 64-byte buffer alignment).
    assert smp.output_bytes == 4 * 64 * 4 + 64
    # Live during the cached steps: every layer's keys and values of the row, [12, 2, 8] f32.
    assert smp.temp_bytes >= 2 * cfg.num_layers * 12 * 2 * 8 * 4


def _report(layers: int, temp: int) -> memory.MemoryReport:
    return memory.MemoryReport(program="sft", num_layers=layers, mesh_shape=(1, 8, 1), rows=8,
                               seq_len=16, params_bytes=10 * layers, opt_bytes=20 * layers,
                               argument_bytes=30 * layers, output_bytes=30 * layers,
                               alias_bytes=30 * layers, temp_bytes=temp, compile_seconds=1.0)


def test_extrapolation_is_linear_per_layer():
    rep = memory.extrapolate(_report(1, 1000), _report(2, 1300), 32)
    assert rep.num_layers == 32 and rep.params_bytes == 320 and rep.temp_bytes == 1000 + 31 * 300
    assert rep.peak_bytes == 960 + 1000 + 31 * 300
    with pytest.raises(ValueError, match="different layer counts"):
        memory.extrapolate(_report(2, 1), _report(2, 1), 32)


def test_fit_keeps_headroom():
    gib = memory.GIB
    assert memory.fit(int(0.9 * 16 * gib), 16) == "yes"
    assert memory.fit(int(0.95 * 16 * gib), 16) == "tight"
    assert memory.fit(16 * gib + 1, 16) == "no"


def test_tpu_pod_rl_config_prints_through_the_cli(capsys):
    """The pod recipe's config loads as ``dllm-jax train rl --config X --print-config`` does,
    and its numbers agree with each other as docs/training.md ("Multi-host") says they must."""
    from dllm_jax.cli import main

    assert main(["train", "rl", "--config", str(REPO / "configs/tpu_pod_rl.yaml"),
                 "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    train, rl = cfg["train"], cfg["rl"]
    devices = math.prod(train["mesh"])
    rows = rl["prompts_per_step"] * rl["group_size"] * rl["budget"]
    assert (rl["loss"], rl["sampler"]["cache"]) == ("tracerl", "dual")
    assert train["batch_size"] == rows
    # One row per device per micro-batch, as measured in docs/training.md.
    assert rows // train["optim"]["grad_accum"] == devices
    assert train["checkpoint"]["every"] % rl["inner_iterations"] == 0
    assert cfg["model"]["dtype"] == "bfloat16" and train["lora"]["rank"] == 0
