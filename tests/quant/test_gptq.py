"""GPTQ: less output error than round-to-nearest on correlated inputs for every scheme, valid
fields, no compensation (so nearly round-to-nearest) when the inputs are uncorrelated, the
model-level pass swaps the block layers and beats round-to-nearest on the model's outputs, and
bad input."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import no_grad
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.quant import (SCHEMES, QuantLinear, dequantize_weight, gptq, gptq_quantize,
                                quantize, quantize_weight)
from tinygrad_llm.quant.gptq import hessian


def problem(seed=0, n=128, out=24, N=1024):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((n, n)) * 0.3 + np.eye(n)           # correlated inputs
    x = rng.standard_normal((N, n)) @ mix
    return rng.standard_normal((out, n)).astype(np.float32), x


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gptq_beats_round_to_nearest(scheme):
    w, x = problem()
    rtn = dequantize_weight(quantize_weight(w, scheme, 64), scheme)
    fields = gptq_quantize(w, hessian(x), scheme, group_size=64)
    got = dequantize_weight(fields, scheme)
    want_fields = quantize_weight(w, scheme, 64)
    assert sorted(fields) == sorted(want_fields)
    for name in fields:
        assert fields[name].shape == want_fields[name].shape
        assert fields[name].dtype == want_fields[name].dtype
    err_gptq = np.linalg.norm(x @ (w - got).T)
    err_rtn = np.linalg.norm(x @ (w - rtn).T)
    assert err_gptq < 0.85 * err_rtn, (scheme, err_gptq / err_rtn)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1", "nf4"])
def test_uncorrelated_inputs_leave_nothing_to_compensate(scheme):
    w, _ = problem(seed=1)
    fields = gptq_quantize(w, np.eye(w.shape[1]) * 2.0, scheme, group_size=64)
    rtn = dequantize_weight(quantize_weight(w, scheme, 64), scheme)
    got = dequantize_weight(fields, scheme)
    # the same grid; only values near a rounding boundary may move, by one step (GPTQ divides by
    # the stored float16 scale, the format by the float32 one before rounding)
    moved = np.abs(got - rtn) > 1e-6
    assert moved.mean() < (0.1 if scheme == "q8_0" else 0.01)
    step = np.abs(w).max() / 100 if scheme == "q8_0" else np.abs(w).max() / 4
    assert np.abs(got - rtn).max() <= step


def test_model_pass_swaps_the_blocks_and_beats_round_to_nearest():
    tl.manual_seed(3)
    config = GPTConfig.preset("gpt2", vocab_size=40, n_layer=2, n_head=2, n_embd=64,
                              block_size=32)
    ids = np.random.default_rng(4).integers(0, 40, (8, 32))

    def model():
        tl.manual_seed(3)
        return GPT(config).eval()

    with no_grad():
        want = model()(ids).numpy()
        rtn_model = quantize(model(), "q4_0")
        g = gptq(model(), ids[:6], "q4_0")
        names = [n for n, m in g.named_modules() if isinstance(m, QuantLinear)]
        assert len(names) == 8 and all(n.startswith("blocks.") for n in names)
        err_rtn = np.abs(rtn_model(ids).numpy() - want).mean()
        err_gptq = np.abs(g(ids).numpy() - want).mean()
    assert err_gptq < err_rtn, (err_gptq, err_rtn)


def test_model_layers_off_the_block_fall_back():
    """As in quantize(): with n_embd 48 no 32-block fits the layers reading the residual stream,
    which stay float (one warning); ffn.down (192 inputs) is quantized."""
    tl.manual_seed(0)
    model = GPT(GPTConfig.preset("gpt2", vocab_size=40, n_layer=2, n_head=2, n_embd=48,
                                 block_size=16))
    ids = np.random.default_rng(0).integers(0, 40, (2, 16))
    with pytest.warns(UserWarning) as caught:
        gptq(model, ids, "q4_0")
    assert len(caught) == 1 and str(caught[0].message) == (
        "gptq: input size not a multiple of q4_0's block 32: blocks.{0,1}.attn.qkv, "
        "blocks.{0,1}.attn.proj, blocks.{0,1}.ffn.up stay in float")
    names = sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))
    assert names == ["blocks.0.ffn.down", "blocks.1.ffn.down"]
    with no_grad():
        assert np.isfinite(model(ids).numpy()).all()


def test_bad_input():
    w, x = problem(n=64)
    with pytest.raises(ValueError, match=r"H must be \(64, 64\)"):
        gptq_quantize(w, np.eye(32), "q4_0")
    with pytest.raises(ValueError, match="in_features=48 is not a multiple of the block size 32"):
        gptq_quantize(w[:, :48], np.eye(48), "q4_0")
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        gptq_quantize(w, hessian(x), "q3")
    model = GPT(GPTConfig.preset("gpt2", vocab_size=40, n_layer=1, n_head=2, n_embd=32,
                                 block_size=16))
    with pytest.raises(ValueError, match=r"calibration must be \(B, T\) token ids"):
        gptq(model, np.zeros(10), "q4_0")
