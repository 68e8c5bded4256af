"""Hugging Face checkpoints against transformers itself: small random GPT-2, Llama (GQA, tied and
untied, linear and dynamic RoPE scaling, a head_dim wider than n_embd / n_head) and Mistral
(sliding window) models saved by transformers load in tinygrad_llm with the same logits, and our
models saved by models.save_pretrained load in AutoModelForCausalLM with the same logits.

Skipped where torch or transformers is absent (CI); run with the scratch venv that has them.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tinygrad_llm.models import GPT, GPTConfig, from_pretrained, save_pretrained  # noqa: E402

V, B, T = 97, 2, 17
ATOL = 1e-4


def _ids(seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def _perturb_torch(model, seed=0, scale=0.1):
    """Random weights everywhere, norm gains included (HF initialises those to 1 and biases to
    0, which would leave a swapped gain/bias or a missing transpose of a square matrix unseen)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model.eval()


def _perturb_ours(model, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] += (rng.standard_normal(p.shape) * scale).astype(p.data.dtype)
    return model.eval()


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def _max_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# ---- transformers models -----------------------------------------------------------------
def _gpt2(**kw):
    config = transformers.GPT2Config(
        vocab_size=V, n_layer=2, n_head=4, n_embd=32, n_positions=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, **kw)
    return transformers.GPT2LMHeadModel(config)


def _llama(**kw):
    args = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6,
                bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**args, **kw}))


def _mistral(window, attn="eager"):
    config = transformers.MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        sliding_window=window, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
        attn_implementation=attn)
    return transformers.MistralForCausalLM(config)


HF_MODELS = {
    "gpt2": lambda: _gpt2(),
    "gpt2_untied": lambda: _gpt2(tie_word_embeddings=False),
    "gpt2_relu_inner": lambda: _gpt2(activation_function="relu", n_inner=48),
    "llama_gqa": lambda: _llama(),
    "llama_tied": lambda: _llama(tie_word_embeddings=True),
    "llama_mha_theta": lambda: _llama(num_key_value_heads=4, rope_theta=500.0),
    "llama_head_dim": lambda: _llama(head_dim=16),
    "llama_rope_linear": lambda: _llama(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama_rope_dynamic": lambda: _llama(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
}


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_transformers_checkpoint_loads_with_same_logits(name, tmp_path):
    hf = _perturb_torch(HF_MODELS[name]())
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_pretrained(str(tmp_path))
    ids = _ids()
    ref = _hf_logits(hf, ids)
    out = ours(ids).numpy()
    assert out.shape == ref.shape == (B, T, V)
    assert out.dtype == np.float32
    assert _max_err(out, ref) < ATOL, f"{name}: max abs error {_max_err(out, ref):.3g}"


def test_tied_llama_reties_on_load(tmp_path):
    _perturb_torch(_llama(tie_word_embeddings=True)).save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    assert ours.config.tie_embeddings
    assert ours.head.weight is ours.tok_emb.weight


def test_dynamic_rope_loads_as_plain_rope_within_the_context(tmp_path):
    # HF's dynamic NTK only changes the base past max_position_embeddings; we refuse those inputs
    _perturb_torch(_llama(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
                   ).save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    assert ours.config.rope_scaling is None and ours.config.block_size == 64
    with pytest.raises(ValueError, match="block_size"):
        ours(np.zeros((1, 65), dtype=np.int64))


def test_sharded_checkpoint_loads(tmp_path):
    hf = _perturb_torch(_llama())
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    files = os.listdir(tmp_path)
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    with open(tmp_path / "model.safetensors.index.json") as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1      # really sharded
    ids = _ids(1)
    assert _max_err(from_pretrained(str(tmp_path))(ids).numpy(), _hf_logits(hf, ids)) < ATOL


def test_gpt2_base_model_without_prefix_loads(tmp_path):
    # GPT2Model (no LM head) saves its names without "transformer."; the head is tied to wte
    lm = _perturb_torch(_gpt2())
    lm.transformer.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model_type"] == "gpt2"
    ids = _ids(2)
    assert _max_err(from_pretrained(str(tmp_path))(ids).numpy(), _hf_logits(lm, ids)) < ATOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_mistral_sliding_window_matches(attn, tmp_path):
    # transformers' mask keeps key j for query i when i - W < j <= i: W keys, our convention
    window = 5
    assert window < T
    hf = _perturb_torch(_mistral(window, attn))
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    assert ours.config.window == window
    ids = _ids(3)
    ref = _hf_logits(hf, ids)
    assert _max_err(ours(ids).numpy(), ref) < ATOL
    # the convention is pinned: one key more or less, or full attention, gives other logits
    for other in (window - 1, window + 1, None):
        model = GPT(GPTConfig(**{**ours.config.to_dict(), "window": other})).eval()
        model.load_state_dict(ours.state_dict())
        assert _max_err(model(ids).numpy(), ref) > 1e-3, f"window {other} also matches"


# ---- our models into transformers --------------------------------------------------------
SMALL = dict(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=V)
OUR_CONFIGS = {
    "gpt2": ("gpt2", {}),
    "gpt2_untied": ("gpt2", dict(tie_embeddings=False)),
    "gpt2_gelu_exact": ("gpt2", dict(mlp="gelu", ffn_hidden=48)),
    "llama_gqa": ("llama", dict(n_kv_head=2, ffn_hidden=64)),
    "llama_tied": ("llama", dict(n_kv_head=2, ffn_hidden=64, tie_embeddings=True)),
    "llama_head_dim": ("llama", dict(n_kv_head=2, ffn_hidden=64, head_dim=16)),
    "llama_rope_linear": ("llama", dict(n_kv_head=2, ffn_hidden=64, rope_theta=500.0,
                                        rope_scaling={"type": "linear", "factor": 2.0})),
    "mistral_window": ("llama", dict(n_kv_head=2, ffn_hidden=64, window=5)),
}


@pytest.mark.parametrize("name", sorted(OUR_CONFIGS))
def test_our_checkpoint_loads_in_transformers(name, tmp_path):
    preset, overrides = OUR_CONFIGS[name]
    ours = _perturb_ours(GPT(GPTConfig.preset(preset, **{**SMALL, **overrides})))
    save_pretrained(ours, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        model_type = json.load(f)["model_type"]
    assert model_type == ("mistral" if "window" in overrides else preset)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = _ids(4)
    ref = _hf_logits(hf, ids)
    assert _max_err(ours(ids).numpy(), ref) < ATOL, f"{name}: {_max_err(ours(ids).numpy(), ref)}"
    # and back: transformers' own save of what it loaded reads in again unchanged
    hf.save_pretrained(tmp_path / "again")
    assert _max_err(from_pretrained(str(tmp_path / "again"))(ids).numpy(), ref) < ATOL
