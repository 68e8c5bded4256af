"""LoRA: zero-initialised B leaves the model unchanged, only adapters train, merge equals the
un-merged output and unmerge restores the base, the adapter's forward gradchecks, adapters save
and load alone, QLoRA (LoRA over an NF4 base) trains, and bad input."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, gradcheck, no_grad
from tinygrad_llm.finetune import (LoRALinear, apply_lora, load_adapters, lora_layers,
                                   lora_state_dict, merge_and_unload, merge_lora, save_adapters,
                                   unmerge_lora)
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.nn import Linear
from tinygrad_llm.optim import AdamW
from tinygrad_llm.quant import quantize

IDS = np.random.default_rng(0).integers(0, 40, (2, 16))


def tiny(dtype=np.float32, **overrides):
    tl.manual_seed(1)
    config = GPTConfig.preset("gpt2", **{**dict(vocab_size=40, n_layer=2, n_head=2, n_embd=32,
                                                block_size=16), **overrides})
    return GPT(config).to(dtype=dtype).eval()


def test_zero_b_leaves_the_model_unchanged_and_only_adapters_train():
    model = tiny()
    with no_grad():
        before = model(IDS).numpy()
    wrapped = apply_lora(model, ["*.attn.qkv", "*.ffn.down"], r=4, alpha=8)
    assert wrapped == ["blocks.0.attn.qkv", "blocks.0.ffn.down", "blocks.1.attn.qkv",
                       "blocks.1.ffn.down"]
    with no_grad():
        np.testing.assert_array_equal(model(IDS).numpy(), before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(f"{w}.lora_{ab}" for w in wrapped for ab in "AB")
    model.train()
    _, loss = model(IDS, targets=IDS)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert np.abs(model.blocks[0].attn.qkv.lora_B.grad.numpy()).sum() > 0


def test_merge_equals_unmerged_and_unmerge_restores_the_base():
    model = tiny(np.float64)
    apply_lora(model, "*.attn.*", r=3, alpha=6)
    rng = np.random.default_rng(2)
    for layer in lora_layers(model).values():
        layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape) * 0.1
    base = {n: p.numpy().copy() for n, p in model.named_parameters() if "base" in n}
    with no_grad():
        unmerged = model(IDS).numpy()
        merge_lora(model)
        merged = model(IDS).numpy()
        np.testing.assert_allclose(merged, unmerged, rtol=0, atol=1e-10)
        unmerge_lora(model)
        np.testing.assert_allclose(model(IDS).numpy(), unmerged, rtol=0, atol=1e-10)
    for n, p in model.named_parameters():
        if n in base:
            np.testing.assert_allclose(p.numpy(), base[n], rtol=0, atol=1e-12)


def test_merge_and_unload_gives_plain_linears_with_the_same_outputs():
    model = tiny(np.float64)
    apply_lora(model, "*.attn.*", r=3, alpha=6)
    rng = np.random.default_rng(3)
    for layer in lora_layers(model).values():
        layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape) * 0.1
    with no_grad():
        expected = model(IDS).numpy()
        merge_and_unload(model)
        np.testing.assert_allclose(model(IDS).numpy(), expected, rtol=0, atol=1e-10)
    assert not lora_layers(model)
    assert set(model.state_dict()) == set(tiny(np.float64).state_dict())


def test_lora_forward_gradchecks():
    tl.manual_seed(3)
    layer = LoRALinear(Linear(6, 5, dtype=np.float64), r=2, alpha=3.0)
    layer.lora_B.data[...] = np.random.default_rng(4).standard_normal((5, 2))
    x = Tensor(np.random.default_rng(5).standard_normal((3, 6)), requires_grad=True)
    gradcheck(lambda x, a, b: layer(x), x, layer.lora_A, layer.lora_B)


def test_adapters_save_and_load_alone(tmp_path):
    model = tiny()
    apply_lora(model, "*.attn.qkv", r=4)
    for layer in lora_layers(model).values():
        layer.lora_B.data[...] = 0.5
    save_adapters(model, tmp_path / "adapters.safetensors")
    state = lora_state_dict(model)
    assert sorted(state) == ["blocks.0.attn.qkv.lora_A", "blocks.0.attn.qkv.lora_B",
                             "blocks.1.attn.qkv.lora_A", "blocks.1.attn.qkv.lora_B"]
    fresh = tiny()
    apply_lora(fresh, "*.attn.qkv", r=4)
    load_adapters(fresh, tmp_path / "adapters.safetensors")
    with no_grad():
        np.testing.assert_array_equal(fresh(IDS).numpy(), model(IDS).numpy())
    other = tiny()
    apply_lora(other, "*.attn.qkv", r=2)
    with pytest.raises(ValueError, match=r"lora_A has shape \(4, 32\).*\(2, 32\)"):
        load_adapters(other, tmp_path / "adapters.safetensors")


def test_qlora_trains_over_an_nf4_base():
    model = quantize(tiny(), "nf4", group_size=32)
    apply_lora(model, ["*.attn.qkv", "*.attn.proj", "*.ffn.up", "*.ffn.down"], r=4, alpha=8)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.dtype == np.float32 for p in params)
    opt = AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(15):
        _, loss = model(IDS, targets=IDS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.numpy()))
    assert losses[-1] < losses[0] - 0.1, losses
    with pytest.raises(TypeError, match="quantized"):
        merge_lora(model)
    merged = lora_layers(model)["blocks.0.attn.qkv"].merged_linear()
    x = Tensor(np.random.default_rng(6).standard_normal((2, 32)).astype(np.float32))
    with no_grad():
        np.testing.assert_allclose(merged(x).numpy(),
                                   lora_layers(model)["blocks.0.attn.qkv"](x).numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match=r"target '\*\.attn\.q' matches no layer; the model's "
                                         r"projections are \['head', 'blocks\.0\.attn\.qkv'"):
        apply_lora(model, "*.attn.q")
    with pytest.raises(ValueError, match="r must be a positive int"):
        LoRALinear(Linear(4, 4), r=0)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapters(tiny(), "/tmp/never.safetensors")
