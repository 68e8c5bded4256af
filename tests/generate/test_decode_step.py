"""The fused batch-1 decode step (generate/decode_step.py, kernels/cpu/decode.py): the Numba
kernel equals the NumPy reference, and both equal the model's own forward, for every variant the
plan accepts (norms, feed-forwards, positions, GQA/MQA, biases), odd sizes, one layer and one
head, large activations, multi-token feeds, and the threaded path; models it cannot run decode
through the forward; a stale plan is never used."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import kernels, no_grad
from tinygrad_llm.generate import generate
from tinygrad_llm.generate.decode_step import DecodePlan, decode_step, forward_logits
from tinygrad_llm.generate.kv_cache import make_caches
from tinygrad_llm.kernels.cpu import decode as cpu_decode
from tinygrad_llm.models import GPT, GPTConfig

VARIANTS = {
    "gpt2": ("gpt2", {}),
    "llama_gqa": ("llama", dict(n_kv_head=2)),
    "llama_mqa_bias_layernorm": ("llama", dict(n_kv_head=1, bias=True, norm="layernorm")),
    "sinusoidal_gelu_erf": ("gpt2", dict(pos="sinusoidal", mlp="gelu")),
    "no_positions_relu_no_bias": ("gpt2", dict(pos="none", mlp="relu", bias=False)),
    "rope_scaled_tied": ("llama", dict(rope_scaling={"type": "linear", "factor": 2.0},
                                       tie_embeddings=True)),
    "odd_sizes": ("gpt2", dict(n_head=3, n_embd=21, vocab_size=7, ffn_hidden=37)),
    "one_layer_one_head": ("llama", dict(n_layer=1, n_head=1, n_kv_head=1, n_embd=6,
                                         vocab_size=1)),
}


def tiny(preset, dtype=np.float32, seed=0, **overrides):
    tl.manual_seed(seed)
    base = dict(vocab_size=41, n_layer=2, n_head=4, n_embd=32, block_size=40)
    return GPT(GPTConfig.preset(preset, **{**base, **overrides})).to(dtype=dtype).eval()


def decode_all(model, ids, split, fused=True):
    """Logits of every position: ids[:split] fed at once, then one token at a time."""
    caches = make_caches(model, 1, model.config.max_positions)
    with no_grad(), tl.use_kernels(fused):
        out = [forward_logits(model, ids[:split], caches, 0)]
        out += [forward_logits(model, ids[i:i + 1], caches, i) for i in range(split, len(ids))]
    return np.concatenate(out), caches


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_reference_and_forward_agree(name, dtype):
    preset, overrides = VARIANTS[name]
    model = tiny(preset, dtype, **overrides)
    assert DecodePlan.reason(model) is None
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, 23)
    with no_grad():
        full = model(ids[None]).data[0]
    tol = 1e-5 if dtype == np.float32 else 1e-11
    scale = np.abs(full).max() + 1e-30
    for fused in (True, False):
        for split in (1, 5, 17):       # 1: every token through the step; 17: a longer prefill
            with kernels.trace() as ran:
                got, caches = decode_all(model, ids, split, fused)
            # the kernel runs float32 models; float64 ones take the reference
            fast = fused and dtype == np.float32
            assert ("decode_step", "cpu" if fast else "reference") in ran
            assert got.dtype == dtype
            assert np.abs(got - full).max() <= tol * scale, (name, fused, split)
            assert all(c.length == len(ids) for c in caches)


def test_large_activations():
    # embeddings scaled 1e3: the norms and the softmax must stay finite and agree
    model = tiny("gpt2", np.float32)
    model.tok_emb.weight.data *= 1e3
    model.blocks[0].attn.qkv.weight.data *= 30.0
    ids = np.random.default_rng(2).integers(0, 41, 12)
    with no_grad():
        full = model(ids[None]).data[0]
    for fused in (True, False):
        got, _ = decode_all(model, ids, 1, fused)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, full, rtol=0, atol=1e-4 * np.abs(full).max())


def test_multi_token_step_writes_the_same_cache_as_the_forward():
    model = tiny("llama", np.float64, n_kv_head=2)
    ids = np.random.default_rng(3).integers(0, 41, 16)
    plan_caches = make_caches(model, 1, 40)
    assert plan_caches.plan is not None
    forward_caches = make_caches(model, 2, 40)          # batch 2: no plan, the forward path
    assert forward_caches.plan is None
    with no_grad():
        step = decode_step(ids[:9], 0, plan_caches.plan)             # the kernel, 9 tokens
        step2 = decode_step(ids[9:], 9, plan_caches.plan)            # then 7 more after them
        model(np.stack([ids, ids]), caches=forward_caches)
    np.testing.assert_allclose(np.concatenate([step, step2])[-1],
                               model(ids[None]).data[0, -1], atol=1e-10)
    for layer, cache in enumerate(forward_caches):
        np.testing.assert_allclose(plan_caches.plan.k_all[layer, :, :16], cache.k[0, :, :16],
                                   atol=1e-12)
        np.testing.assert_allclose(plan_caches.plan.v_all[layer, :, :16], cache.v[0, :, :16],
                                   atol=1e-12)


def test_threaded_path_agrees(monkeypatch):
    # every matrix and every attention split over the threads, as for a large model
    monkeypatch.setattr(cpu_decode, "PARALLEL_MODEL_BYTES", 0)
    monkeypatch.setattr(cpu_decode, "PARALLEL_BYTES", 0)
    model = tiny("llama", np.float32, n_kv_head=2, seed=4)
    assert cpu_decode._pack(DecodePlan(model, 8).weights).parallel_bytes == 0
    ids = np.random.default_rng(4).integers(0, 41, 20)
    with no_grad():
        full = model(ids[None]).data[0]
    got, _ = decode_all(model, ids, 1)
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("overrides, why", [
    (dict(prenorm=False), "post-LN blocks"),
    (dict(attention="linear"), "linear attention"),
    (dict(window=4), "sliding-window attention"),
    (dict(kv_share=2), "cross-layer KV sharing"),
    (dict(n_expert=4), "a mixture of experts"),
    (dict(pos="alibi"), "alibi position biases"),
])
def test_unsupported_models_decode_through_the_forward(overrides, why):
    model = tiny("gpt2", np.float64, **overrides)
    assert DecodePlan.reason(model) == why
    assert make_caches(model, 1, 40).plan is None
    prompt = np.random.default_rng(5).integers(0, 41, (1, 6))
    with kernels.trace() as ran:
        cached = generate(model, prompt, 8, temperature=0)
    assert not any(name == "decode_step" for name, _ in ran)
    np.testing.assert_array_equal(cached, generate(model, prompt, 8, temperature=0,
                                                   use_cache=False))


def test_generate_takes_the_fused_path_and_matches_the_uncached_decoder():
    model = tiny("gpt2", np.float32)
    prompt = np.random.default_rng(6).integers(0, 41, (1, 5))
    with kernels.trace() as ran:
        fused = generate(model, prompt, 12, temperature=0.9, top_k=10, seed=3)
    assert ran.count(("decode_step", "cpu")) == 12              # the prefill and 11 steps
    np.testing.assert_array_equal(fused, generate(model, prompt, 12, temperature=0.9, top_k=10,
                                                  seed=3, use_cache=False))


def test_a_stale_plan_is_not_used():
    model = tiny("gpt2", np.float32)
    ids = np.random.default_rng(7).integers(0, 41, 6)
    caches = make_caches(model, 1, 40)
    with no_grad():
        forward_logits(model, ids[:5], caches, 0)
        model.to(dtype=np.float64)                     # new arrays: the plan read the old ones
        assert not caches.plan.ready(model, caches, 5)
        with kernels.trace() as ran:
            forward_logits(model, ids[5:], caches, 5)  # the forward path, still correct
    assert not any(name == "decode_step" for name, _ in ran)
    # a training-mode model or a recorded graph also takes the forward
    model.train()
    assert not caches.plan.ready(model, caches, 6)


@pytest.mark.parametrize("scheme", ["int8", "q8_0", "q4_0", "q4_1", "nf4"])
@pytest.mark.parametrize("preset, overrides", [("gpt2", {}), ("llama", dict(n_kv_head=2))],
                         ids=["gpt2_tied", "llama_untied"])
def test_quantized_models_take_the_fused_path(scheme, preset, overrides):
    from tinygrad_llm.quant import quantize
    model = tiny(preset, np.float32, n_embd=64, **overrides)
    quantize(model, scheme, group_size=32, include_head=True, include_embeddings=True)
    assert DecodePlan.reason(model) is None
    ids = np.random.default_rng(8).integers(0, 41, 19)
    with no_grad():
        full = model(ids[None]).data[0]
    for fused in (True, False):
        with kernels.trace() as ran:
            got, _ = decode_all(model, ids, 3, fused)
        assert ("decode_step", "cpu" if fused else "reference") in ran
        np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1", "nf4"])
def test_threaded_quantized_path_agrees(scheme, monkeypatch):
    from tinygrad_llm.quant import quantize
    monkeypatch.setattr(cpu_decode, "PARALLEL_MODEL_BYTES", 0)
    monkeypatch.setattr(cpu_decode, "PARALLEL_BYTES", 0)
    model = quantize(tiny("gpt2", np.float32, n_embd=64, seed=5), scheme, group_size=32,
                     include_head=True, include_embeddings=True)
    ids = np.random.default_rng(9).integers(0, 41, 12)
    with no_grad():
        full = model(ids[None]).data[0]
    got, _ = decode_all(model, ids, 4)
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * np.abs(full).max())
