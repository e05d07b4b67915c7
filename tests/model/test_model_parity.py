"""Parity with transformers' own PyTorch models run bidirectionally ."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from dllm_jax import denoise_step, weights  # noqa: E402
from dllm_jax.model.transformer import Transformer  # noqa: E402,I001

VOCAB = 96


def _hf_model(arch: str, kv_heads: int, tied: bool, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=kv_heads, vocab_size=VOCAB,
                  tie_word_embeddings=tied, rms_norm_eps=1e-6, max_position_embeddings=128)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common, rope_theta=500000.0)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common, rope_theta=1e6)
        model = transformers.Qwen2ForCausalLM(cfg)
    # Random (not zero) biases so the q/k/v bias path is really exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def _torch_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bidirectional HF forward: 4-D float mask, padded keys at a large negative value."""
    tok = torch.as_tensor(tokens)
    m = torch.as_tensor(mask, dtype=torch.float32)
    bias = torch.zeros(tok.shape[0], 1, tok.shape[1], tok.shape[1])
    bias = bias.masked_fill(m[:, None, None, :] == 0, -1e9)
    pos = (m.cumsum(-1) - 1).clamp(min=0).long()
    with torch.no_grad():
        return model(input_ids=tok, attention_mask=bias, position_ids=pos).logits.float().numpy()


def _inputs(left_pad: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(3, 9))
    mask = np.ones_like(tokens)
    if left_pad:
        mask[1, :3] = 0
        mask[2, :5] = 0
        tokens[mask == 0] = 0
    return tokens, mask


CASES = [("llama", 2, False), ("llama", 4, True), ("qwen2", 2, True), ("qwen2", 4, False)]


@pytest.mark.parametrize("arch,kv_heads,tied", CASES,
                         ids=[f"{a}-kv{k}-{'tied' if t else 'untied'}" for a, k, t in CASES])
def test_hf_parity_and_round_trip(tmp_path, arch, kv_heads, tied):
    hf = _hf_model(arch, kv_heads, tied)
    hf.save_pretrained(tmp_path / "hf")
    ckpt = weights.hf_to_checkpoint(tmp_path / "hf", tmp_path / "ckpt")
    model = weights.load_checkpoint(ckpt)
    assert model.config.family == arch
    assert model.config.qkv_bias == (arch == "qwen2")
    assert model.config.tie_word_embeddings == tied
    fwd = jax.jit(lambda t, m: model(t, m))
    for left_pad in (False, True):
        tokens, mask = _inputs(left_pad)
        ref = _torch_logits(hf, tokens, mask)
        out = np.asarray(fwd(jnp.asarray(tokens), jnp.asarray(mask)))
        real = mask.astype(bool)
        assert np.abs(out - ref)[real].max() <= 1e-4, (arch, left_pad)

    # Export back to HF names and reload with transformers.
    weights.checkpoint_to_hf(ckpt, tmp_path / "export")
    cls = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    back = cls.from_pretrained(tmp_path / "export").eval()
    tokens, mask = _inputs(True)
    np.testing.assert_allclose(_torch_logits(back, tokens, mask), _torch_logits(hf, tokens, mask),
                               atol=1e-5, rtol=0)


def test_row_logits_independent_of_batch_padding(tiny_llada):
    rng = np.random.default_rng(1)
    row = rng.integers(2, 60, size=(6,))
    fwd = jax.jit(lambda t, m: tiny_llada(t, m))
    alone = np.asarray(fwd(jnp.asarray(row[None]), jnp.ones((1, 6), jnp.int32)))[0]
    for pad in (2, 5):
        tokens = np.zeros((2, 6 + pad), np.int64)
        mask = np.zeros_like(tokens)
        tokens[0, pad:] = row
        mask[0, pad:] = 1
        tokens[1] = rng.integers(2, 60, size=6 + pad)
        mask[1] = 1
        out = np.asarray(fwd(jnp.asarray(tokens), jnp.asarray(mask)))[0, pad:]
        np.testing.assert_allclose(out, alone, atol=1e-5, rtol=0)


def test_dream_denoise_step_is_shifted(tiny_dream, tiny_llada):
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 60, size=(2, 7)))
    # The same weights as a plain Qwen2 model (no shift) give the raw logits; Dream's rule:
    # the hidden state at i - 1 predicts token i, position 0 keeps its own.
    plain = nnx.eval_shape(lambda: Transformer(tiny_dream.config.replace(family="qwen2"),
                                               rngs=nnx.Rngs(0)))
    nnx.update(plain, nnx.state(tiny_dream))
    raw = np.asarray(plain(tokens))
    expect = np.concatenate([raw[:, :1], raw[:, :-1]], axis=1)
    np.testing.assert_allclose(np.asarray(denoise_step(tiny_dream, tokens)), expect, atol=1e-6,
                               rtol=0)
    # A window of the aligned logits equals the same slice of the full sequence, start 0 too.
    for start in (0, 1, 3):
        np.testing.assert_allclose(np.asarray(tiny_dream(tokens, window=(start, 4))),
                                   expect[:, start:start + 4], atol=1e-6, rtol=0)
    # LLaDA: no shift.
    np.testing.assert_allclose(np.asarray(denoise_step(tiny_llada, tokens)),
                               np.asarray(tiny_llada(tokens)), atol=1e-6, rtol=0)


# LLaDA's own key names (as published in its checkpoints), written here independently of the
# package's table.
_LLADA_KEYS = {
    "model.embed_tokens.weight": "model.transformer.wte.weight",
    "model.norm.weight": "model.transformer.ln_f.weight",
    "lm_head.weight": "model.transformer.ff_out.weight",
}
_LLADA_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q_proj.weight",
    "self_attn.k_proj.weight": "k_proj.weight",
    "self_attn.v_proj.weight": "v_proj.weight",
    "self_attn.o_proj.weight": "attn_out.weight",
    "post_attention_layernorm.weight": "ff_norm.weight",
    "mlp.gate_proj.weight": "ff_proj.weight",
    "mlp.up_proj.weight": "up_proj.weight",
    "mlp.down_proj.weight": "ff_out.weight",
}


def test_llada_key_layout_matches_llama_layout(tmp_path, shared_dir):
    from safetensors.torch import save_file

    hf = _hf_model("llama", 4, False, seed=3)
    hf.save_pretrained(tmp_path / "llama")
    renamed = {}
    for name, tensor in hf.state_dict().items():
        if name in _LLADA_KEYS:
            renamed[_LLADA_KEYS[name]] = tensor.contiguous()
            continue
        parts = name.split(".")
        i, rest = parts[2], ".".join(parts[3:])
        renamed[f"model.transformer.blocks.{i}.{_LLADA_LAYER[rest]}"] = tensor.contiguous()
    (tmp_path / "llada").mkdir()
    save_file(renamed, tmp_path / "llada" / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((shared_dir / "tokenizers/llada-8b-instruct-config/config.json").read_text())
    cfg.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=112,
               vocab_size=VOCAB, embedding_size=VOCAB, rms_norm_eps=1e-6,
               max_sequence_length=128, mask_token_id=VOCAB - 1, eos_token_id=1, pad_token_id=1)
    (tmp_path / "llada" / "config.json").write_text(json.dumps(cfg))

    llada = weights.load_hf(tmp_path / "llada")
    llama = weights.load_hf(tmp_path / "llama")
    assert llada.config.family == "llada" and llada.config.rope_theta == 500000.0
    tokens, mask = _inputs(True)
    a = np.asarray(llada(jnp.asarray(tokens), jnp.asarray(mask)))
    b = np.asarray(llama(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_array_equal(a, b)
    # Export writes the LLaDA names back (291 tensors at full size; 2 * 9 + 3 here).
    weights.export_hf(llada, tmp_path / "llada_export")
    from dllm_jax.weights.safetensors_io import SafetensorsFile

    keys = set(SafetensorsFile(tmp_path / "llada_export" / "model.safetensors").keys())
    assert keys == set(renamed)
    exported = json.loads((tmp_path / "llada_export" / "config.json").read_text())
    assert exported["model_type"] == "llada" and exported["d_model"] == 64


def test_agdo_statistics_match_transformers_attentions(tmp_path):
    """AGDO's S, I and head-mean attention from ``with_attention`` against the last layer's
    attention probabilities transformers itself returns (``output_attentions``, eager
    attention, run bidirectionally on the same weights)."""
    hf = _hf_model("qwen2", 2, False, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    model = weights.load_hf(tmp_path / "hf")
    eager = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "hf",
                                                          attn_implementation="eager").eval()
    tokens, mask = _inputs(True)
    m = torch.as_tensor(mask, dtype=torch.float32)
    bias = torch.zeros(tokens.shape[0], 1, tokens.shape[1], tokens.shape[1])
    bias = bias.masked_fill(m[:, None, None, :] == 0, -1e9)
    pos = (m.cumsum(-1) - 1).clamp(min=0).long()
    with torch.no_grad():
        out = eager(input_ids=torch.as_tensor(tokens), attention_mask=bias, position_ids=pos,
                    output_attentions=True)
    attn = out.attentions[-1].float().numpy().mean(axis=1)  # [B, L, L], head mean
    keys = np.random.default_rng(4).integers(0, 2, tokens.shape) * mask
    _, aux = model.with_attention(jnp.asarray(tokens), jnp.asarray(mask),
                                  keys_BL=jnp.asarray(keys), attn_mean=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(aux["attn_mean"])[real], attn[real], atol=2e-5)
    s_ref = (attn * keys[:, None, :]).sum(-1)  # mass each query sends to the key set U
    np.testing.assert_allclose(np.asarray(aux["S"])[real], s_ref[real], atol=2e-5)
    i_ref = (attn * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)  # mean over queries
    np.testing.assert_allclose(np.asarray(aux["I"])[real], i_ref[real], atol=2e-5)
