"""QuantLinear and quantize(model): the Numba product equals dequantize-then-matmul (every
scheme, odd sizes, one row, large inputs, the threaded path), the layer equals its dequantized
float layer, x's gradient checks, quantize swaps the right layers and keeps the model's
predictions, and quantized checkpoints save smaller and load back exactly (but not into a float
model)."""
import os

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, gradcheck, kernels, no_grad
from tinygrad_llm.kernels.cpu import quant as cpu_quant
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.nn import Linear
from tinygrad_llm.quant import QuantLinear, quantize, quantized_layers
from tinygrad_llm.quant.formats import (SCHEMES, dequantize_operands, dequantize_weight,
                                        matmul_operands, quantize_weight)
from tinygrad_llm.quant.linear import PackedWeight, RowMajor, quant_matmul, quant_pack
from tinygrad_llm.train import load_checkpoint, save_checkpoint
from tinygrad_llm.train.checkpoint import model_arrays

SHAPES = [(1, 32, 1), (3, 64, 2), (17, 96, 5), (65, 128, 1), (768, 256, 3)]


def packed(scheme, rows, cols, seed=0, group=32, double_quant=False):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return PackedWeight(scheme, quantize_weight(w, scheme, group, double_quant))


def dense(weight):
    return dequantize_operands(*weight.operands).astype(np.float64)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{o}x{i}x{t}" for o, i, t in SHAPES])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_kernel_equals_dequantize_then_matmul(scheme, shape, scale):
    rows, cols, tokens = shape
    weight = packed(scheme, rows, cols, double_quant=rows == 17)
    x = (np.random.default_rng(1).standard_normal((tokens, cols)) * scale).astype(np.float32)
    want = x.astype(np.float64) @ dense(weight).T
    got = quant_matmul(x, weight)
    assert kernels.ran("quant_matmul") == "cpu"
    with tl.use_kernels(False):
        ref = quant_matmul(x, weight)
    assert got.dtype == ref.dtype == np.float32 and got.shape == (tokens, rows)
    tol = 1e-5 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    np.testing.assert_allclose(ref, want, rtol=0, atol=tol)


@pytest.mark.parametrize("cols", [1, 7, 18, 33])
def test_int8_rows_of_any_width(cols):
    """int8's block is a whole row, so the one-token kernel's four-rows-per-pass loop has a
    remainder of 1 to 3 rows to take."""
    weight = packed("int8", 300, cols)
    x = np.random.default_rng(1).standard_normal((1, cols)).astype(np.float32)
    want = x.astype(np.float64) @ dense(weight).T
    got = quant_matmul(x, weight)
    assert kernels.ran("quant_matmul") == "cpu"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_threaded_rows_agree(scheme, monkeypatch):
    monkeypatch.setattr(cpu_quant, "PARALLEL_BYTES", 0)
    weight = packed(scheme, 37, 128, seed=2)
    x = np.random.default_rng(3).standard_normal((3, 128)).astype(np.float32)
    np.testing.assert_allclose(quant_matmul(x, weight), x @ dense(weight).T, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("rows", [1, 255, 257, 300])
def test_packed_weight_keeps_one_copy_and_gives_the_fields_back(scheme, rows):
    """On the CPU a PackedWeight holds qweight and its scales only as the kernel's column tiles;
    the row-major fields come back bit for bit, and rows(ids) decodes the same rows as the whole
    matrix."""
    w = np.random.default_rng(5).standard_normal((rows, 64)).astype(np.float32) * 3
    fields = quantize_weight(w, scheme, 32, double_quant=rows == 257)
    weight = PackedWeight(scheme, fields)
    kept = set(weight._fields)          # only NF4's double-quantized scale codes stay as they are
    assert weight.tiles is not None and kept == (set(fields) - {"qweight", "absmax"}
                                                 if scheme == "nf4" and rows == 257 else set())
    assert weight.nbytes == weight.tiles.nbytes + sum(fields[k].nbytes for k in kept)
    back = weight.fields
    assert set(back) == set(fields)
    for name, value in fields.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        np.testing.assert_array_equal(back[name], value, name)
    assert weight.qweight is back["qweight"]          # the same array while it is held
    ids = np.array([rows - 1, 0, rows // 2, rows - 1])
    np.testing.assert_array_equal(weight.rows(ids), weight.dequantize()[ids])
    np.testing.assert_array_equal(weight.dequantize(), dequantize_weight(fields, scheme))


def test_packed_weight_made_with_the_kernels_off_runs_the_reference():
    with tl.use_kernels(False):
        weight = packed("q4_0", 40, 64)
    assert weight.tiles is None and isinstance(weight.layout, RowMajor) and not weight._fields
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(quant_matmul(x, weight), x @ dense(weight).T, rtol=0, atol=1e-4)
    assert kernels.ran("quant_matmul") == "reference"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("rows", [1, 257])
def test_column_tiles_give_back_what_the_reference_layout_holds(scheme, rows):
    """quant_pack's reference keeps matmul_operands' arrays (RowMajor); the CPU's column tiles
    answer row_major / scales / mins with the same arrays, whole or by rows."""
    w = np.random.default_rng(6).standard_normal((rows, 64)).astype(np.float32)
    q, scale, minimum, levels, group = matmul_operands(quantize_weight(w, scheme, 32), scheme)
    tiles = quant_pack(q, scale, minimum, levels, group)
    assert kernels.ran("quant_pack") == "cpu"
    with tl.use_kernels(False):
        ref = quant_pack(q, scale, minimum, levels, group)
    assert isinstance(ref, RowMajor) and ref.row_major() is q and ref.scales() is scale
    ids = np.array([rows - 1, 0, rows // 2])
    for which in (None, ids):
        for name in ("row_major", "scales", "mins"):
            got, want = getattr(tiles, name)(which), getattr(ref, name)(which)
            if want is None:
                assert got is None, name
                continue
            np.testing.assert_array_equal(got, want, name)     # scales come back as float32
            assert got.dtype == want.dtype or name != "row_major", name


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quant_linear_equals_its_dequantized_float_layer(scheme):
    tl.manual_seed(0)
    linear = Linear(64, 24)
    q = QuantLinear.from_linear(linear, scheme, group_size=32)
    w_hat = q.dequantize()
    np.testing.assert_array_equal(w_hat, dequantize_weight(q.fields, scheme))
    x = Tensor(np.random.default_rng(4).standard_normal((2, 3, 64)).astype(np.float32))
    with no_grad():
        got = q(x).numpy()
    want = x.numpy() @ w_hat.T + linear.bias.numpy()
    assert got.shape == (2, 3, 24)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # quantization error stays small relative to the float layer
    rel = np.abs(got - linear(x).numpy()).max() / np.abs(want).max()
    assert rel < {"int8": 0.02, "q8_0": 0.02}.get(scheme, 0.2)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1", "nf4"])
def test_input_gradient_checks(scheme):
    tl.manual_seed(1)
    q = QuantLinear.from_linear(Linear(32, 5), scheme, group_size=32)
    q.bias.data = q.bias.data.astype(np.float64)
    q.bias.requires_grad = False
    x = Tensor(np.random.default_rng(5).standard_normal((3, 32)), requires_grad=True)
    gradcheck(lambda x: (q(x) ** 2).sum(), x)


def tiny_model(**overrides):
    tl.manual_seed(2)
    base = dict(vocab_size=50, n_layer=2, n_head=2, n_embd=64, block_size=32)
    return GPT(GPTConfig.preset("gpt2", **{**base, **overrides})).eval()


def test_quantize_swaps_the_linear_layers():
    model = tiny_model()
    quantize(model, "q4_0")
    names = sorted(quantized_layers(model))
    assert names == sorted(f"blocks.{i}.{n}" for i in range(2)
                           for n in ("attn.qkv", "attn.proj", "ffn.up", "ffn.down"))
    assert isinstance(model.head, Linear)                      # tied to the embeddings: kept
    untied = quantize(tiny_model(tie_embeddings=False), "q8_0", include_head=True,
                      skip=["blocks.1.*"])
    assert sorted(quantized_layers(untied)) == sorted(
        ["head"] + [f"blocks.0.{n}" for n in ("attn.qkv", "attn.proj", "ffn.up", "ffn.down")])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_model_keeps_its_predictions(scheme):
    model = tiny_model()
    ids = np.random.default_rng(6).integers(0, 50, (2, 24))
    with no_grad():
        before = model(ids).numpy()
        quantize(model, scheme, group_size=32)
        after = model(ids).numpy()
    agree = (before.argmax(-1) == after.argmax(-1)).mean()
    assert agree >= {"int8": 0.95, "q8_0": 0.95}.get(scheme, 0.8), agree


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "nf4"])
def test_checkpoint_round_trip_and_size(scheme, tmp_path):
    model = tiny_model(n_embd=128)
    float_path, quant_path = tmp_path / "f.safetensors", tmp_path / "q.safetensors"
    save_checkpoint(str(float_path), model)
    quantize(model, scheme, group_size=64)
    save_checkpoint(str(quant_path), model)
    ratio = os.path.getsize(quant_path) / os.path.getsize(float_path)
    # the embeddings (50 x 128 + 32 x 128) stay float; the four matrices per layer shrink
    assert ratio < {"q8_0": 0.45, "q4_0": 0.35, "nf4": 0.35}[scheme], ratio
    state, _, _ = load_checkpoint(str(quant_path))
    fresh = quantize(tiny_model(n_embd=128), scheme, group_size=64)
    tl.manual_seed(9)
    fresh.load_state_dict(state)
    ids = np.random.default_rng(7).integers(0, 50, (1, 16))
    with no_grad():
        np.testing.assert_array_equal(fresh(ids).numpy(), model(ids).numpy())
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.(qweight|weight)"):
        tiny_model(n_embd=128).load_state_dict(state)             # quantized into float


def test_tied_table_is_held_and_saved_once_and_stays_tied(tmp_path):
    """With head and embeddings quantized, the tied table is one PackedWeight: its bytes are
    resident once, written once (the head's keys alias the embedding's), and a load into a
    fresh model changes both through the one object."""
    model = quantize(tiny_model(vocab_size=64), "q4_0", include_head=True,
                     include_embeddings=True)
    assert model.head.packed is model.tok_emb.packed
    arrays, aliases = model_arrays(model)
    pairs = {(k, v) for k, v in aliases.items()}
    assert pairs in ({("head.qweight", "tok_emb.qweight"), ("head.scale", "tok_emb.scale")},
                     {("tok_emb.qweight", "head.qweight"), ("tok_emb.scale", "head.scale")})
    assert not set(aliases) & set(arrays)
    path = str(tmp_path / "q.safetensors")
    save_checkpoint(path, model)
    state, _, _ = load_checkpoint(path)
    fresh = quantize(tiny_model(vocab_size=64), "q4_0", include_head=True,
                     include_embeddings=True)
    tl.manual_seed(9)
    key = fresh.head.packed.key
    fresh.load_state_dict(state)
    assert fresh.head.packed is fresh.tok_emb.packed and fresh.head.packed.key is not key
    ids = np.random.default_rng(7).integers(0, 64, (1, 16))
    with no_grad():
        np.testing.assert_array_equal(fresh(ids).numpy(), model(ids).numpy())


def test_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"unknown scheme 'q2'.*'q8_0'"):
        quantize(model, "q2")
    with pytest.raises(ValueError, match=r"quantize\('nf4'\): group_size must be one of "
                                         r"\(32, 64, 128\), got 48"):
        quantize(model, "nf4", group_size=48)
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        QuantLinear(48, 4, "q4_0")              # a layer built by hand does not fall back
    q = QuantLinear.from_linear(Linear(32, 4), "q8_0")
    with pytest.raises(ValueError, match="last dim 31, expected in_features=32"):
        q(Tensor(np.zeros((2, 31), np.float32)))


def odd_model(**overrides):
    """n_embd 48: every matrix reading the residual stream has 48 inputs, a multiple of no
    32-block; ffn.down reads 192."""
    tl.manual_seed(3)
    base = dict(vocab_size=50, n_layer=2, n_head=2, n_embd=48, block_size=16)
    return GPT(GPTConfig.preset("gpt2", **{**base, **overrides})).eval()


def test_llama_preset_quantizes_to_nf4_with_the_defaults():
    """n_embd 128 gives ffn_hidden 352 = 11 * 32: the down projections take NF4's group of 32
    (the default 64 does not divide them), the rest keep 64, and one warning says so."""
    model = GPT(GPTConfig.preset("llama", n_embd=128))
    with pytest.warns(UserWarning) as caught:
        quantize(model, "nf4")
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "quantize: input size not a multiple of nf4's block 64: blocks.{" +
        ",".join(map(str, range(16))) + "}.ffn.down take group_size=32")
    groups = {name: layer.group_size for name, layer in quantized_layers(model).items()}
    assert len(groups) == 16 * 5
    assert all(g == (32 if name.endswith("ffn.down") else 64) for name, g in groups.items())
    with no_grad():
        assert np.isfinite(model(np.zeros((1, 4), np.int64)).numpy()).all()


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1", "nf4"])
def test_layers_no_block_fits_stay_in_float(scheme):
    """As llama.cpp keeps a tensor F16 when no block of its type fits, those layers stay the
    float Linear they were (a tied head and its table with them), named in one warning; the model
    is the one quantize(skip=those layers) gives, and a fresh one loads its checkpoint."""
    model = odd_model()
    with pytest.warns(UserWarning) as caught:
        quantize(model, scheme, group_size=32, include_head=True, include_embeddings=True)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"quantize: input size not a multiple of {scheme}'s block 32: head, "
        "blocks.{0,1}.attn.qkv, blocks.{0,1}.attn.proj, blocks.{0,1}.ffn.up, tok_emb stay in "
        "float")
    assert sorted(quantized_layers(model)) == ["blocks.0.ffn.down", "blocks.1.ffn.down"]
    assert type(model.head) is Linear and model.head.weight is model.tok_emb.weight
    assert model.head.weight.dtype == np.float32
    skipped = quantize(odd_model(), scheme, group_size=32, skip=["*attn*", "*up"])
    ids = np.random.default_rng(0).integers(0, 50, (2, 8))
    with no_grad():
        want = skipped(ids).numpy()
        np.testing.assert_array_equal(model(ids).numpy(), want)
    fresh = odd_model(vocab_size=50)
    tl.manual_seed(4)
    with pytest.warns(UserWarning):
        quantize(fresh, scheme, group_size=32, include_head=True, include_embeddings=True)
    fresh.load_state_dict(model.state_dict())
    with no_grad():
        np.testing.assert_array_equal(fresh(ids).numpy(), want)

