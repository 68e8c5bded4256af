"""GPTConfig(mlp="none"): attention-only blocks (Elhage et al., 2021). The config is validated
like the other fields, the blocks have neither a feed-forward nor its norm, the model trains
(float64 directional gradcheck) and decodes through the reference path, and the paths that
cannot express it (the fused decode step, GGUF, the Transformer-XL blocks) refuse it by name,
while save_pretrained keeps it in the native layout."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.generate import generate
from tinygrad_llm.generate.decode_step import DecodePlan
from tinygrad_llm.models import GPT, GPTConfig, TransformerXL, TransformerXLConfig
from tinygrad_llm.models.gpt import make_ffn
from tinygrad_llm.nn.block import TransformerBlock
from tinygrad_llm.quant import save_gguf

V = 13


def tiny(**overrides):
    return GPTConfig.preset("gpt2", **{**dict(n_layer=2, n_head=4, n_embd=16, block_size=8,
                                              vocab_size=V, mlp="none"), **overrides})


def test_config_has_no_feed_forward_width():
    assert tiny().ffn_hidden == 0
    assert tiny(ffn_hidden=0).ffn_hidden == 0
    with pytest.raises(ValueError, match="mlp='none'.*ffn_hidden.*got 64"):
        tiny(ffn_hidden=64)
    with pytest.raises(ValueError, match="mlp='none'.*n_expert=4"):
        tiny(n_expert=4)
    with pytest.raises(ValueError, match="mlp='nothing' is not one of .*'none'"):
        tiny(mlp="nothing")


@pytest.mark.parametrize("prenorm", [True, False])
def test_blocks_have_no_ffn_and_no_second_norm(prenorm):
    model = GPT(tiny(prenorm=prenorm))
    names = [n for n, _ in model.named_parameters()]
    assert not any(".ffn." in n or ".norm2." in n for n in names)
    assert all(b.ffn is None and b.norm2 is None for b in model.blocks)
    with_mlp = GPT(tiny(prenorm=prenorm, mlp="gelu_tanh"))
    assert {n for n, _ in with_mlp.named_parameters()} - set(names) == {
        f"blocks.{i}.{part}" for i in range(2) for part in
        ("ffn.up.weight", "ffn.up.bias", "ffn.down.weight", "ffn.down.bias", "norm2.weight",
         "norm2.bias")}
    assert "attention only" in repr(model.blocks[0])


def test_block_output_is_the_attention_residual_alone():
    model = GPT(tiny(n_layer=1)).to(dtype=np.float64)
    block = model.blocks[0]
    x = tl.Tensor(np.random.default_rng(0).standard_normal((2, 5, 16)))
    y, _ = block(x)
    a, _ = block.attn(block.norm1(x))
    np.testing.assert_allclose(y.numpy(), (x + a).numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="ffn and norm2 must both be given or both be None"):
        TransformerBlock(block.attn, None, block.norm1, block.norm1)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_whole_model_directional_gradcheck(impl, pos):
    model = GPT(tiny(pos=pos)).to(dtype=np.float64)
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, V, (2, 6)), rng.integers(0, V, (2, 6))
    params = dict(model.named_parameters())
    chosen = [params[n] for n in ("tok_emb.weight", "blocks.0.attn.qkv.weight",
                                  "blocks.1.attn.proj.weight", "blocks.0.norm1.weight",
                                  "norm.weight")]
    assert tl.gradcheck(lambda *_: model(idx, tgt)[1], *chosen, directions=4)
    assert tl.gradcheck(lambda *_: model(idx), *chosen, directions=4)


def test_generation_uses_the_reference_path_and_matches_the_full_forward():
    model = GPT(tiny(block_size=16))
    model.eval()
    assert DecodePlan.reason(model) == "attention-only blocks (mlp='none')"
    prompt = np.array([[1, 2, 3]])
    out = generate(model, prompt, max_new_tokens=5, temperature=0.0)
    ids = prompt
    for _ in range(5):                       # greedy by full forwards, no cache
        with tl.no_grad():
            logits = model(ids).numpy()
        ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, ids)


def test_formats_that_cannot_express_it_refuse_by_name(tmp_path):
    model = GPT(tiny())
    with pytest.raises(ValueError, match=r"save_gguf: .*attention-only blocks \(mlp='none'\)"):
        save_gguf(model, str(tmp_path / "m.gguf"))
    with pytest.raises(ValueError, match="make_ffn: mlp='none' has no feed-forward"):
        TransformerXL(TransformerXLConfig(n_layer=1, n_head=2, n_embd=8, block_size=8,
                                          vocab_size=V, mlp="none"))
    with pytest.raises(ValueError, match="make_ffn: mlp='none'"):
        make_ffn(tiny())


def test_save_pretrained_keeps_the_native_layout(tmp_path):
    model = GPT(tiny())
    model.save_pretrained(str(tmp_path))
    loaded = GPT.from_pretrained(str(tmp_path))
    assert loaded.config.mlp == "none" and loaded.blocks[0].ffn is None
    idx = np.random.default_rng(1).integers(0, V, (2, 8))
    with tl.no_grad():
        np.testing.assert_array_equal(loaded(idx).numpy(), model(idx).numpy())
