"""Quantized models on "cuda" (the CuPy stand-in without a GPU; see tests/conftest.py): the
formats decode on the device exactly as on the host, a quantized model moved to the device gives
the CPU's logits, and neither its forward nor generating a token moves a weight across (for every
scheme); save_gguf from the device and load_gguf onto it round-trip as on the CPU.

Model-level runs take the references (tl.use_kernels(False)): under Numba's CUDA simulator each
block of the quantized matvec costs tens of milliseconds. One small model keeps the kernels on."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import backend, kernels
from tinygrad_llm.generate import generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.quant import load_gguf, quantize, quantized_layers, save_gguf
from tinygrad_llm.quant.formats import SCHEMES, dequantize_weight, quantize_weight

SMALL = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=48, block_size=16)
SMALL_BYTES = 256          # ids, a position, a sampled token: far below any weight here


def make(preset="gpt2", seed=0, **overrides):
    tl.manual_seed(seed)
    model = GPT(GPTConfig.preset(preset, **{**SMALL, **overrides}))
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():         # norms and biases away from 1 and 0 too
        noise = rng.standard_normal(p.shape).astype(np.float32)
        p.data[...] = 1 + 0.1 * noise if p.ndim == 1 and name.endswith("weight") else 0.05 * noise
    return model.eval()


def quantized(scheme, preset="gpt2", **kwargs):
    return quantize(make(preset), scheme, group_size=32, **kwargs)


def logits(model, idx):
    with tl.no_grad():
        return backend.to_numpy(model(idx).data)


def smallest_weight(model):
    return min(m.packed.nbytes for m in quantized_layers(model).values())


@pytest.mark.parametrize("scheme, double_quant", [(s, False) for s in SCHEMES] + [("nf4", True)],
                         ids=list(SCHEMES) + ["nf4-double_quant"])
def test_formats_decode_on_the_device_as_on_the_host(scheme, double_quant, standin_cuda):
    w = np.random.default_rng(0).standard_normal((7, 128)).astype(np.float32) * 3
    fields = quantize_weight(w, scheme, 32, double_quant)
    on_device = {k: backend.to_device(v, "cuda") for k, v in fields.items()}
    with standin_cuda.measure() as c:
        got = dequantize_weight(on_device, scheme)
    assert backend.device_of(got) == "cuda" and got.dtype == np.float32
    assert (c.d2h_bytes, c.syncs, c.upcasts) == (0, 0, 0)
    assert c.h2d_bytes <= 64                                      # NF4's 16 levels at most
    want = dequantize_weight(fields, scheme)
    if double_quant:             # exp of the scale codes: CuPy's and NumPy's may differ by an ulp
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-6)
    else:
        np.testing.assert_array_equal(backend.to_numpy(got), want)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_model_on_the_device_gives_the_cpu_logits_and_moves_no_weight(scheme,
                                                                                standin_cuda):
    model = quantized(scheme)
    idx = np.random.default_rng(1).integers(0, SMALL["vocab_size"], (2, 7))
    want = logits(model, idx)
    model.to("cuda")
    with tl.use_kernels(False):
        got = logits(model, idx)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
        token = backend.to_device(idx[:1, :1], "cuda")
        with tl.no_grad(), standin_cuda.measure() as c:
            model(token)
    assert kernels.ran("quant_matmul") == "reference"
    assert c.h2d_bytes < SMALL_BYTES < smallest_weight(model), c
    assert c.d2h_bytes < SMALL_BYTES and c.upcasts == 0, c


@pytest.mark.parametrize("scheme", SCHEMES)
def test_generating_a_token_moves_no_weight(scheme, standin_cuda):
    """The decoder's step reads the quantized layers on the device (embeddings and head
    quantized too, tied as GPT-2's are): per token, only the sampled id comes back."""
    model = quantized(scheme, include_head=True, include_embeddings=True)
    prompt = np.array([[3, 1, 4]])
    want = generate(model, prompt, max_new_tokens=4, temperature=0.0)
    model.to("cuda")
    with tl.use_kernels(False):
        generate(model, prompt, max_new_tokens=1, temperature=0.0)        # warm the plan
        with standin_cuda.measure() as c:
            got = generate(model, prompt, max_new_tokens=4, temperature=0.0)
    np.testing.assert_array_equal(backend.to_numpy(got), want)
    assert c.h2d_bytes < 4 * SMALL_BYTES < smallest_weight(model), c
    assert c.d2h_bytes < 4 * SMALL_BYTES and c.upcasts == 0, c


def test_the_kernel_runs_in_a_model_on_the_device(standin_cuda):
    """Kernels on: the quantized projections take the CUDA matvec (one small layer per block
    quantized, to keep the simulator quick), logits as on the CPU, no weight moved."""
    model = quantize(make("llama", n_layer=1, n_embd=32, n_head=2, n_kv_head=1), "q4_1",
                     group_size=32, skip=["*.qkv", "*.ffn.*"])
    token = np.array([[5]])
    want = logits(model, token)
    model.to("cuda")
    dev = backend.to_device(token, "cuda")
    with tl.use_kernels(True), kernels.trace() as log, standin_cuda.measure() as c:
        with tl.no_grad():
            got = model(dev).data
    assert ("quant_matmul", "cuda") in log
    assert c.h2d_bytes < SMALL_BYTES < smallest_weight(model), c
    assert c.d2h_bytes == 0 and c.upcasts == 0, c
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_quantized_state_dict_loads_on_the_device(standin_cuda):
    src = quantized("nf4", double_quant=True)
    idx = np.array([[1, 2, 3]])
    want = logits(src, idx)
    dst = quantized("nf4", double_quant=True).to("cuda")
    for layer in quantized_layers(dst).values():         # different fields, to be overwritten
        layer.packed.replace("qweight", np.zeros(layer.packed.field_specs["qweight"][0],
                                                 np.uint8))
    dst.load_state_dict(src.state_dict())
    assert all(m.packed.device == "cuda" for m in quantized_layers(dst).values())
    with tl.use_kernels(False):
        np.testing.assert_allclose(logits(dst, idx), want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_quantizing_a_model_on_the_device(standin_cuda):
    """quantize() on a model already on the device: the fields land there, as on the CPU."""
    idx = np.array([[2, 7, 1]])
    want = logits(quantized("q4_1", include_head=True, include_embeddings=True), idx)
    model = quantize(make().to("cuda"), "q4_1", group_size=32, include_head=True,
                     include_embeddings=True)
    assert model.head.packed is model.tok_emb.packed and model.head.packed.device == "cuda"
    with tl.use_kernels(False):
        np.testing.assert_allclose(logits(model, idx), want, rtol=0,
                                   atol=2e-5 * np.abs(want).max())


# ---- GGUF ------------------------------------------------------------------------------------
def _same_models(got, want):
    assert got.device == want.device
    a, b = got.state_dict(), want.state_dict()
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)


@pytest.mark.parametrize("dtype", ["f32", "q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_gguf_from_and_onto_the_device_round_trips_as_on_the_cpu(preset, dtype, tmp_path,
                                                                  standin_cuda):
    pytest.importorskip("gguf")
    model = make(preset, tie_embeddings=preset == "gpt2")
    if dtype != "f32":
        quantize(model, dtype, include_head=preset == "llama")
    save_gguf(model, tmp_path / "cpu.gguf", dtype=dtype)
    model.to("cuda")
    save_gguf(model, tmp_path / "cuda.gguf", dtype=dtype)
    assert (tmp_path / "cpu.gguf").read_bytes() == (tmp_path / "cuda.gguf").read_bytes()

    on_cpu = load_gguf(tmp_path / "cpu.gguf")
    with standin_cuda.measure() as c:
        on_cuda = load_gguf(tmp_path / "cpu.gguf", device="cuda")
    assert on_cuda.device == "cuda" and c.d2h_bytes == 0
    assert all(m.packed.device == "cuda" for m in quantized_layers(on_cuda).values())
    assert len(quantized_layers(on_cuda)) == len(quantized_layers(on_cpu))
    _same_models(on_cuda.to("cpu"), on_cpu)


def test_load_gguf_onto_the_default_device(tmp_path, monkeypatch, standin_cuda):
    """$TINYGRAD_LLM_DEVICE=cuda builds the model on the device: the file's host arrays are
    uploaded into its parameters (CuPy refuses a plain host assignment)."""
    pytest.importorskip("gguf")
    model = quantize(make("llama"), "q4_0")
    save_gguf(model, tmp_path / "m.gguf", dtype="q4_0")
    monkeypatch.setenv("TINYGRAD_LLM_DEVICE", "cuda")
    loaded = load_gguf(tmp_path / "m.gguf")
    monkeypatch.delenv("TINYGRAD_LLM_DEVICE")
    assert loaded.device == "cuda"
    idx = np.array([[4, 2, 7]])
    want = logits(load_gguf(tmp_path / "m.gguf"), idx)
    with tl.use_kernels(False):
        np.testing.assert_allclose(logits(loaded, idx), want, rtol=0,
                                   atol=2e-5 * np.abs(want).max())

