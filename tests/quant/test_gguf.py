"""GGUF files (llama.cpp's format): exact f32 round trips (llama with GQA, tied and untied; gpt2),
f16 within float16 rounding, q8_0 / q4_0 / q4_1 files whose tensors have the right types,
shapes and bytes (against the `gguf` package's quantizers) and whose models equal quantize()'s,
the RoPE row permutation against an interleaved-RoPE NumPy reference run straight from the file,
the embedded BPE tokenizer, bad input, and (when llama-cpp-python is installed) llama.cpp itself
running our file."""
import os

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.generate import generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.nn import Linear
from tinygrad_llm.quant import quantize, quantized_layers
from tinygrad_llm.quant.formats import dequantize_weight, quantize_weight
from tinygrad_llm.quant.gguf_io import _rope_rows, load_gguf, save_gguf
from tinygrad_llm.tokenizers import BPETokenizer, bytes_to_unicode

gguf = pytest.importorskip("gguf")
QT = gguf.GGMLQuantizationType

SMALL = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=80, block_size=32)
CONFIGS = {
    "llama-gqa-untied": ("llama", dict(n_kv_head=2, tie_embeddings=False)),
    "llama-gqa-tied": ("llama", dict(n_kv_head=2, tie_embeddings=True)),
    "gpt2-tied": ("gpt2", dict(tie_embeddings=True)),
    "gpt2-untied": ("gpt2", dict(tie_embeddings=False)),
}
TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
        "and by opposing end them. To die, to sleep; no more; and by a sleep to say we end the "
        "heart-ache and the thousand natural shocks that flesh is heir to.\n") * 4


def randomize(model, seed=0, std=0.05):
    """Random values in every parameter, norms and biases included (a misrouted norm weight or
    bias would then change the logits)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape).astype(np.float32)
        is_norm = p.ndim == 1 and name.endswith("weight")
        p.data[...] = 1 + 0.1 * noise if is_norm else std * noise
    return model.eval()


def make(key, seed=0, std=0.05, **overrides):
    preset, extra = CONFIGS[key]
    tl.manual_seed(seed)
    return randomize(GPT(GPTConfig.preset(preset, **{**SMALL, **extra, **overrides})), seed, std)


def ids(vocab=80, t=16, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, (2, t))


def logits(model, idx):
    with tl.no_grad():
        return model(idx).numpy()


def tensors_of(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def field(path, key):
    f = gguf.GGUFReader(path).get_field(key)
    return None if f is None else f.contents()


# ---- f32 and f16 -------------------------------------------------------------------------------
@pytest.mark.parametrize("key", CONFIGS)
def test_f32_round_trip_is_exact(key, tmp_path):
    model = make(key)
    path = tmp_path / "m.gguf"
    save_gguf(model, path)
    loaded = load_gguf(path)
    assert loaded.config.to_dict() == model.config.to_dict()
    want, got = model.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)
    assert (loaded.head.weight is loaded.tok_emb.weight) == model.config.tie_embeddings
    np.testing.assert_array_equal(logits(loaded, ids()), logits(model, ids()))
    assert not [f for f in os.listdir(tmp_path) if f != "m.gguf"]      # no temporary left


@pytest.mark.parametrize("key", ["llama-gqa-untied", "gpt2-tied"])
def test_f16_round_trip_is_the_float16_rounding(key, tmp_path):
    model = make(key)
    save_gguf(model, tmp_path / "m.gguf", dtype="f16")
    types = {n: t.tensor_type for n, t in tensors_of(tmp_path / "m.gguf").items()}
    for name, qtype in types.items():
        matrix = name.endswith(".weight") and "norm" not in name and name != "position_embd.weight"
        assert qtype == (QT.F16 if matrix else QT.F32), name
    loaded = load_gguf(tmp_path / "m.gguf")
    # the same model with its matrices rounded to float16 by hand is the loaded one exactly
    for name, p in model.named_parameters():
        if p.ndim == 2 and not name.startswith("pos_emb"):
            p.data[...] = p.data.astype(np.float16).astype(np.float32)
    for name, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), model.state_dict()[name].numpy(), name)
    np.testing.assert_array_equal(logits(loaded, ids()), logits(model, ids()))


# ---- quantized files ---------------------------------------------------------------------------
def expected_layout(model, arch):
    """gguf tensor name -> ggml dims (ne0 = in, ne1 = out) for every tensor the file must hold."""
    c, d = model.config, model.config.head_dim
    out = {"token_embd.weight": [c.n_embd, c.vocab_size], "output_norm.weight": [c.n_embd]}
    if not c.tie_embeddings:
        out["output.weight"] = [c.n_embd, c.vocab_size]
    if arch == "gpt2":
        out.update({"position_embd.weight": [c.n_embd, c.block_size],
                    "output_norm.bias": [c.n_embd]})
    for i in range(c.n_layer):
        b = f"blk.{i}."
        out.update({b + "attn_norm.weight": [c.n_embd], b + "ffn_norm.weight": [c.n_embd],
                    b + "attn_output.weight": [c.n_head * d, c.n_embd],
                    b + "ffn_up.weight": [c.n_embd, c.ffn_hidden],
                    b + "ffn_down.weight": [c.ffn_hidden, c.n_embd]})
        if arch == "llama":
            out.update({b + "attn_q.weight": [c.n_embd, c.n_head * d],
                        b + "attn_k.weight": [c.n_embd, c.n_kv_head * d],
                        b + "attn_v.weight": [c.n_embd, c.n_kv_head * d],
                        b + "ffn_gate.weight": [c.n_embd, c.ffn_hidden]})
        else:
            qkv = 3 * c.n_embd
            out.update({b + "attn_qkv.weight": [c.n_embd, qkv], b + "attn_qkv.bias": [qkv],
                        b + "attn_norm.bias": [c.n_embd], b + "ffn_norm.bias": [c.n_embd],
                        b + "attn_output.bias": [c.n_embd], b + "ffn_up.bias": [c.ffn_hidden],
                        b + "ffn_down.bias": [c.n_embd]})
    return out


def quantized_reference(model, scheme):
    """What the loaded file must equal: the embedding through the scheme's round trip, then
    quantize() on the linear layers, the head included when it has its own weight."""
    with tl.no_grad():
        w = model.tok_emb.weight.numpy()
        model.tok_emb.weight.data[...] = dequantize_weight(quantize_weight(w, scheme), scheme)
    # a tied head stays the (float) embedding table, as llama.cpp multiplies by token_embd
    return quantize(model, scheme, include_head=not model.config.tie_embeddings)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("key", CONFIGS)
def test_quantized_file_types_shapes_and_logits(scheme, key, tmp_path):
    model = make(key)
    path = tmp_path / "m.gguf"
    save_gguf(model, path, dtype=scheme)
    arch = CONFIGS[key][0]
    layout = expected_layout(model, arch)
    tensors = tensors_of(path)
    assert set(tensors) == set(layout)
    for name, t in tensors.items():
        assert t.shape.tolist() == layout[name], name
        vector = len(layout[name]) == 1 or name == "position_embd.weight"
        assert t.tensor_type == (QT.F32 if vector else QT[scheme.upper()]), name
    assert field(path, "general.file_type") == int(gguf.LlamaFileType[f"MOSTLY_{scheme.upper()}"])
    loaded = load_gguf(path)
    reference = quantized_reference(make(key), scheme)
    assert set(quantized_layers(loaded)) == set(quantized_layers(reference))
    for name, layer in quantized_layers(reference).items():
        for f, value in layer.fields.items():
            np.testing.assert_array_equal(getattr(quantized_layers(loaded)[name], f), value,
                                          f"{name}.{f}")
    np.testing.assert_array_equal(loaded.tok_emb.weight.numpy(),
                                  reference.tok_emb.weight.numpy())
    np.testing.assert_allclose(logits(loaded, ids()), logits(reference, ids()), rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1"])
def test_block_bytes_equal_the_gguf_packages_quantizer(scheme, tmp_path):
    model = make("llama-gqa-untied")
    save_gguf(model, tmp_path / "m.gguf", dtype=scheme)
    tensors = tensors_of(tmp_path / "m.gguf")
    qtype = QT[scheme.upper()]
    up = model.blocks[1].ffn.up.weight.numpy()
    np.testing.assert_array_equal(tensors["blk.1.ffn_up.weight"].data,
                                  gguf.quants.quantize(up, qtype))
    c = model.config
    q = model.blocks[0].attn.qkv.weight.numpy()[:c.n_head * c.head_dim]
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data,
                                  gguf.quants.quantize(q[_rope_rows(c.n_head, c.head_dim)], qtype))


def test_input_dims_off_the_block_size_are_written_f16(tmp_path):
    # n_embd 48: every matrix reading the residual stream has 48 inputs (not a multiple of 32);
    # ffn_down reads ffn_hidden = 128 and is blocked
    model = make("llama-gqa-untied", n_embd=48)
    save_gguf(model, tmp_path / "m.gguf", dtype="q4_0")
    types = {n: t.tensor_type for n, t in tensors_of(tmp_path / "m.gguf").items()}
    assert types["blk.0.ffn_down.weight"] == QT.Q4_0
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == QT.F16
    assert types["output.weight"] == types["blk.1.ffn_gate.weight"] == QT.F16
    loaded = load_gguf(tmp_path / "m.gguf")
    assert sorted(quantized_layers(loaded)) == ["blocks.0.ffn.down", "blocks.1.ffn.down"]
    reference = model                   # its F16 matrices rounded, its ffn_down quantized
    with tl.no_grad():
        for name, p in reference.named_parameters():
            if p.ndim == 2 and "ffn.down" not in name:
                p.data[...] = p.data.astype(np.float16).astype(np.float32)
    quantize(reference, "q4_0", skip=["*attn*", "*gate", "*up", "head"])
    np.testing.assert_allclose(logits(loaded, ids()), logits(reference, ids()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheme", ["q4_0", "nf4"])
def test_a_model_whose_layers_fell_back_exports(scheme, tmp_path):
    """quantize() kept the 48-input layers in float (none of the scheme's blocks fits them): a
    q4_0 file writes those F16 (llama.cpp's own fallback) and the quantized ffn_down from its
    blocks (q4_0: the loaded model is the same) or requantized (nf4: close to it)."""
    model = make("llama-gqa-untied", n_embd=48)
    with tl.no_grad():
        for p in model.parameters():                    # values F16 holds exactly
            p.data[...] = p.data.astype(np.float16).astype(np.float32)
    with pytest.warns(UserWarning, match="stay in float"):
        quantize(model, scheme, group_size=32, include_head=True)
    assert sorted(quantized_layers(model)) == ["blocks.0.ffn.down", "blocks.1.ffn.down"]
    save_gguf(model, tmp_path / "m.gguf", dtype="q4_0")
    types = {n: t.tensor_type for n, t in tensors_of(tmp_path / "m.gguf").items()}
    assert types["blk.0.ffn_down.weight"] == QT.Q4_0
    assert types["blk.0.attn_q.weight"] == types["output.weight"] == QT.F16
    loaded = load_gguf(tmp_path / "m.gguf")
    assert sorted(quantized_layers(loaded)) == ["blocks.0.ffn.down", "blocks.1.ffn.down"]
    want, got = logits(model, ids()), logits(loaded, ids())
    tol = 1e-6 if scheme == "q4_0" else 0.1 * np.abs(want).max()   # nf4 -> q4_0: requantized
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("key", ["llama-gqa-untied", "gpt2-untied"])
def test_quantized_layers_are_written_from_their_own_blocks(key, tmp_path):
    model = quantize(make(key), "q4_1", include_head=True)
    save_gguf(model, tmp_path / "m.gguf", dtype="q4_1")
    loaded = load_gguf(tmp_path / "m.gguf")
    for name, layer in quantized_layers(model).items():
        for f, value in layer.fields.items():
            np.testing.assert_array_equal(getattr(quantized_layers(loaded)[name], f), value,
                                          f"{name}.{f}")


def test_quantized_embedding_is_written_from_its_own_blocks(tmp_path):
    from tinygrad_llm.quant import linear
    if not hasattr(linear, "QuantEmbedding"):
        pytest.skip("this tree's quantize() has no QuantEmbedding")
    model = quantize(make("gpt2-tied"), "q8_0", include_head=True, include_embeddings=True)
    save_gguf(model, tmp_path / "m.gguf", dtype="q8_0")
    assert "output.weight" not in tensors_of(tmp_path / "m.gguf")
    loaded = load_gguf(tmp_path / "m.gguf")
    fields = {k: np.asarray(v) for k, v in model.tok_emb.fields.items()}
    np.testing.assert_array_equal(loaded.tok_emb.weight.numpy(),
                                  dequantize_weight(fields, "q8_0"))
    assert loaded.head.weight is loaded.tok_emb.weight
    np.testing.assert_allclose(logits(loaded, ids()), logits(model, ids()), rtol=0, atol=1e-5)


# ---- the file as llama.cpp reads it ------------------------------------------------------------
@pytest.mark.parametrize("key", CONFIGS)
def test_file_holds_llama_cpp_names_and_metadata(key, tmp_path):
    model = make(key)
    path = tmp_path / "m.gguf"
    save_gguf(model, path)
    arch, c = CONFIGS[key][0], model.config
    assert field(path, "general.architecture") == arch
    assert set(tensors_of(path)) == set(expected_layout(model, arch))
    want = {"context_length": c.block_size, "embedding_length": c.n_embd, "block_count": 2,
            "feed_forward_length": c.ffn_hidden, "attention.head_count": 4,
            "attention.head_count_kv": c.n_kv_head, "vocab_size": 80}
    if arch == "llama":
        want.update({"rope.freq_base": 10000.0, "rope.dimension_count": 16})
        assert field(path, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(c.norm_eps)
    else:
        assert field(path, "gpt2.attention.layer_norm_epsilon") == pytest.approx(c.norm_eps)
    for name, value in want.items():
        assert field(path, f"{arch}.{name}") == value, name
    assert field(path, "general.file_type") == int(gguf.LlamaFileType.ALL_F32)
    assert field(path, "tokenizer.ggml.model") == "none"


def test_rope_row_order():
    # head of D = 8: new rows (0, 1), (2, 3), ... are the old pairs (0, 4), (1, 5), ...
    np.testing.assert_array_equal(_rope_rows(2, 8), [0, 4, 1, 5, 2, 6, 3, 7,
                                                     8, 12, 9, 13, 10, 14, 11, 15])
    order = _rope_rows(3, 16)
    np.testing.assert_array_equal(np.arange(48)[order][np.argsort(order)], np.arange(48))


def rope_interleaved(x, theta):
    """llama.cpp's rotation of adjacent pairs: x (T, n, D), pair (2i, 2i + 1) by p theta^(-2i/D)."""
    t, _, d = x.shape
    angle = np.arange(t)[:, None] * theta ** (-np.arange(0, d, 2) / d)        # (T, D/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def file_reference_logits(path, tokens):
    """A float64 NumPy forward over the F32 file's own tensors and metadata, written the way
    llama.cpp reads them: tokens (T,) -> logits (T, V)."""
    reader = gguf.GGUFReader(path)
    w = {t.name: np.array(t.data, np.float64) for t in reader.tensors}
    arch = reader.get_field("general.architecture").contents()
    def meta(k):
        return reader.get_field(f"{arch}.{k}").contents()
    h, hkv = meta("attention.head_count"), meta("attention.head_count_kv")
    t, d = len(tokens), meta("embedding_length") // h

    def norm(x, name):
        if arch == "llama":
            eps = meta("attention.layer_norm_rms_epsilon")
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w[name + ".weight"]
        eps = meta("attention.layer_norm_epsilon")
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w[name + ".weight"] \
            + w[name + ".bias"]

    def linear(x, name):
        return x @ w[name + ".weight"].T + w.get(name + ".bias", 0.0)

    x = w["token_embd.weight"][tokens]
    if arch == "gpt2":
        x = x + w["position_embd.weight"][:t]
    causal = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(meta("block_count")):
        b = f"blk.{i}."
        a = norm(x, b + "attn_norm")
        if arch == "llama":
            q = rope_interleaved(linear(a, b + "attn_q").reshape(t, h, d), meta("rope.freq_base"))
            k = rope_interleaved(linear(a, b + "attn_k").reshape(t, hkv, d),
                                 meta("rope.freq_base"))
            v = linear(a, b + "attn_v").reshape(t, hkv, d)
        else:
            q, k, v = np.split(linear(a, b + "attn_qkv").reshape(t, 3 * h, d), 3, axis=1)
        k, v = np.repeat(k, h // hkv, axis=1), np.repeat(v, h // hkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + causal
        p = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), v).reshape(t, h * d)
        x = x + linear(o, b + "attn_output")
        f = norm(x, b + "ffn_norm")
        if arch == "llama":
            g = linear(f, b + "ffn_gate")
            f = (g / (1 + np.exp(-g))) * linear(f, b + "ffn_up")
        else:
            u = linear(f, b + "ffn_up")
            f = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
        x = x + linear(f, b + "ffn_down")
    head = w.get("output.weight", w["token_embd.weight"])
    return norm(x, "output_norm") @ head.T


@pytest.mark.parametrize("key", CONFIGS)
def test_llama_cpp_layout_reference_run_from_the_file_equals_our_model(key, tmp_path):
    # the reference knows nothing of our layout: adjacent-pair RoPE on the permuted q/k rows,
    # separate q/k/v (llama) or gpt2's fused qkv, llama.cpp's tied head
    model = make(key, std=0.1)
    save_gguf(model, tmp_path / "m.gguf")
    tokens = ids(t=24)[0]
    want = logits(model, tokens[None])[0]
    got = file_reference_logits(tmp_path / "m.gguf", tokens)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_reference_catches_a_missing_permutation(tmp_path, monkeypatch):
    # with the permutation switched off, the interleaved reference must disagree (so the test
    # above can fail)
    from tinygrad_llm.quant import gguf_io
    model = make("llama-gqa-untied", std=0.1)
    monkeypatch.setattr(gguf_io, "_rope_rows", lambda n, d: np.arange(n * d))
    save_gguf(model, tmp_path / "m.gguf")
    tokens = ids(t=24)[0]
    want = logits(model, tokens[None])[0]
    got = file_reference_logits(tmp_path / "m.gguf", tokens)
    assert np.abs(got - want).max() > 1e-3 * np.abs(want).max()


# ---- tokenizer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT, vocab_size=300)


def test_tokenizer_round_trip(tokenizer, tmp_path):
    model = make("llama-gqa-untied", vocab_size=320)          # 20 ids past the tokenizer's
    path = tmp_path / "m.gguf"
    save_gguf(model, path, tokenizer=tokenizer)
    loaded, tok = load_gguf(path, return_tokenizer=True)
    assert tok == tokenizer
    sample = "To sleep, perchance to dream: ay, there's the rub!\n<|endoftext|> 12345 ünïcödé"
    np.testing.assert_array_equal(tok.encode(sample), tokenizer.encode(sample))
    assert tok.decode(tok.encode(sample)) == sample
    eot = tokenizer.special_tokens["<|endoftext|>"]
    assert field(path, "tokenizer.ggml.bos_token_id") == eot
    assert field(path, "tokenizer.ggml.eos_token_id") == eot
    assert field(path, "tokenizer.ggml.model") == "gpt2"
    assert field(path, "tokenizer.ggml.pre") == "gpt-2"
    tokens, types = field(path, "tokenizer.ggml.tokens"), field(path, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 320
    assert tokens[eot] == "<|endoftext|>" and types[eot] == gguf.TokenType.CONTROL
    assert tokens[ord(" ")] == "Ġ" and types[ord(" ")] == gguf.TokenType.NORMAL
    assert tokens[319] == "[PAD319]" and types[319] == gguf.TokenType.UNUSED
    merges = field(path, "tokenizer.ggml.merges")
    assert len(merges) == len(tokenizer.ranks) - 256
    alphabet = bytes_to_unicode()
    first = tokenizer.token_bytes(256)                        # the first merge learned
    assert merges[0].replace(" ", "") == "".join(alphabet[b] for b in first)
    np.testing.assert_array_equal(logits(loaded, ids(320)), logits(model, ids(320)))


def test_tokenizer_is_optional(tmp_path):
    save_gguf(make("gpt2-tied"), tmp_path / "m.gguf")
    model, tok = load_gguf(tmp_path / "m.gguf", return_tokenizer=True)
    assert isinstance(model, GPT) and tok is None


def test_tokenizer_larger_than_the_model_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="300 ids, more than the model's vocab_size=80"):
        save_gguf(make("gpt2-tied"), tmp_path / "m.gguf", tokenizer=tokenizer)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, overrides, message", [
    ("llama", dict(pos="alibi"), "pos='alibi'"),
    ("llama", dict(window=8), "sliding-window"),
    ("llama", dict(n_expert=4), "mixture of experts"),
    ("gpt2", dict(prenorm=False), "post-LN"),
    ("gpt2", dict(attention="linear"), "attention='linear'"),
    ("llama", dict(kv_share=2), "KV sharing"),
    ("llama", dict(bias=True), "bias=True"),
    ("gpt2", dict(mlp="gelu"), "mlp='gelu'"),
    ("llama", dict(rope_scaling={"type": "ntk", "factor": 2.0}), "rope_scaling"),
    ("gpt2", dict(qk_norm=True), "QK-norm"),
    ("llama", dict(logit_softcap=15.0), "soft-capping"),
    ("gpt2", dict(unet_skips=True), "U-net skips"),
    ("gpt2", dict(value_embeds=1), "value embeddings"),
])
def test_unsupported_configs_are_refused(preset, overrides, message, tmp_path):
    model = GPT(GPTConfig.preset(preset, **{**SMALL, **overrides}))
    with pytest.raises(ValueError, match=message):
        save_gguf(model, tmp_path / "m.gguf")
    assert not os.listdir(tmp_path)


def test_bad_arguments(tmp_path):
    model = make("gpt2-tied")
    with pytest.raises(ValueError, match="dtype must be one of .* got 'q5_0'"):
        save_gguf(model, tmp_path / "m.gguf", dtype="q5_0")
    with pytest.raises(TypeError, match="model must be a tinygrad_llm GPT, got Linear"):
        save_gguf(Linear(4, 4), tmp_path / "m.gguf")
    with pytest.raises(TypeError, match="tokenizer must be a BPETokenizer or None, got dict"):
        save_gguf(model, tmp_path / "m.gguf", tokenizer={})
    with pytest.raises(FileNotFoundError, match="no GGUF file at .*missing.gguf"):
        load_gguf(tmp_path / "missing.gguf")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        load_gguf(3)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        load_gguf(tmp_path / "junk.gguf")


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.gguf"
    save_gguf(make("gpt2-tied"), path)
    before = path.read_bytes()
    bad = GPT(GPTConfig.preset("gpt2", **{**SMALL, "prenorm": False}))
    with pytest.raises(ValueError):
        save_gguf(bad, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.gguf"]


def rewrite(src, dst, arch=None, change=None, extra=()):
    """Copy a GGUF file through GGUFWriter, optionally under another architecture name, with
    change(name, tensor) -> (array, raw_dtype) for some tensors and extra (name, array) added."""
    reader = gguf.GGUFReader(src)
    old_arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(dst, arch or old_arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        key = key.replace(old_arch + ".", (arch or old_arch) + ".", 1)
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for t in reader.tensors:
        array, raw = np.array(t.data), (None if t.tensor_type in (QT.F32, QT.F16)
                                         else t.tensor_type)
        if change is not None and change(t.name, t) is not None:
            array, raw = change(t.name, t)
        writer.add_tensor(t.name, array, raw_dtype=raw)
    for name, array in extra:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_rewrite_helper_copies_a_loadable_file(tmp_path):
    model = make("llama-gqa-untied")
    save_gguf(model, tmp_path / "a.gguf", dtype="q8_0")
    rewrite(tmp_path / "a.gguf", tmp_path / "b.gguf")
    np.testing.assert_array_equal(logits(load_gguf(tmp_path / "b.gguf"), ids()),
                                  logits(load_gguf(tmp_path / "a.gguf"), ids()))


def test_unsupported_architecture_in_a_file(tmp_path):
    save_gguf(make("gpt2-tied"), tmp_path / "a.gguf")
    rewrite(tmp_path / "a.gguf", tmp_path / "falcon.gguf", arch="falcon")
    with pytest.raises(ValueError, match="general.architecture='falcon' is not supported"):
        load_gguf(tmp_path / "falcon.gguf")


def test_unsupported_tensor_type_in_a_file(tmp_path):
    save_gguf(make("llama-gqa-untied"), tmp_path / "a.gguf")

    def to_q5_0(name, t):
        if name == "blk.1.ffn_up.weight":
            return gguf.quants.quantize(np.array(t.data), QT.Q5_0), QT.Q5_0
        return None
    rewrite(tmp_path / "a.gguf", tmp_path / "q5.gguf", change=to_q5_0)
    with pytest.raises(ValueError, match="'blk.1.ffn_up.weight' has type Q5_0, which is not "
                                         "supported"):
        load_gguf(tmp_path / "q5.gguf")


def test_unknown_and_misshapen_tensors_in_a_file(tmp_path):
    save_gguf(make("llama-gqa-untied"), tmp_path / "a.gguf")
    rewrite(tmp_path / "a.gguf", tmp_path / "extra.gguf",
            extra=[("rope_freqs.weight", np.ones(8, np.float32))])
    with pytest.raises(ValueError, match=r"tensors \['rope_freqs.weight'\] cannot be expressed"):
        load_gguf(tmp_path / "extra.gguf")

    def shrink(name, t):
        return (np.array(t.data)[:, :32], None) if name == "blk.0.ffn_down.weight" else None
    rewrite(tmp_path / "a.gguf", tmp_path / "small.gguf", change=shrink)
    with pytest.raises(ValueError, match=r"'blk.0.ffn_down.weight' has shape \(64, 32\), "
                                         r"expected \(64, 192\)"):
        load_gguf(tmp_path / "small.gguf")


# ---- llama.cpp itself (optional) ---------------------------------------------------------------
PROMPT = "To be, or not to be"


def llama_cpp_logits(path, prompt):
    """llama.cpp (llama-cpp-python) on our file: the Llama object and the logits (T, V) of the
    prompt's positions. The KV cache is F32 (llama.cpp's default F16 costs ~1e-3 of the logits)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False,
                          type_k=0, type_v=0)
    llm.eval(prompt.tolist())
    return llm, np.array(llm.scores[:len(prompt)])


@pytest.mark.parametrize("key", ["llama-gqa-untied", "llama-gqa-tied", "gpt2-tied"])
def test_llama_cpp_runs_our_file(key, tokenizer, tmp_path):
    model = make(key, vocab_size=tokenizer.vocab_size, block_size=64, std=0.2)
    path = tmp_path / "m.gguf"
    save_gguf(model, path, tokenizer=tokenizer)
    prompt = tokenizer.encode(PROMPT)
    llm, theirs = llama_cpp_logits(path, prompt)
    text = PROMPT + ", that is<|endoftext|> the question"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
        tokenizer.encode(text).tolist()
    ours = logits(model, prompt[None])[0]
    # llama: ~2e-6 of the largest logit; gpt2 ~3e-4 (ggml's CPU GELU reads a float16 table)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-3 * np.abs(ours).max())
    steps = []
    for _ in range(32):
        steps.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(steps[-1:])
    want = generate(model, prompt[None], max_new_tokens=32, temperature=0)[0, len(prompt):]
    assert steps == want.tolist()


@pytest.mark.parametrize("scheme", ["q4_0", "q4_1"])
@pytest.mark.parametrize("key", ["llama-gqa-untied", "gpt2-untied"])
def test_llama_cpp_reads_our_blocks(key, scheme, tokenizer, tmp_path):
    # llama.cpp also rounds the activations to 8 bits, so it cannot match our float-activation
    # product exactly; but it must sit far closer to our quantized model than either sits to the
    # float model (a misread block would land at the float model's distance or beyond)
    model = make(key, vocab_size=tokenizer.vocab_size, block_size=64)
    save_gguf(model, tmp_path / "m.gguf", dtype=scheme, tokenizer=tokenizer)
    prompt = tokenizer.encode(PROMPT)
    _, theirs = llama_cpp_logits(tmp_path / "m.gguf", prompt)
    ours = logits(load_gguf(tmp_path / "m.gguf"), prompt[None])[0]
    float_gap = np.abs(ours - logits(model, prompt[None])[0]).max()
    assert np.abs(theirs - ours).max() < 0.25 * float_gap


def test_gpt2_without_biases_is_written_with_zero_biases(tmp_path):
    # the main job's model: GPT-2 layout, bias=False; llama.cpp's gpt2 reads a bias everywhere
    tl.manual_seed(11)
    model = GPT(GPTConfig.preset("gpt2", **{**SMALL, "bias": False})).eval()
    save_gguf(model, tmp_path / "m.gguf")
    loaded = load_gguf(tmp_path / "m.gguf")
    assert loaded.config.bias is True
    assert not np.any(loaded.blocks[0].attn.qkv.bias.numpy())
    ids = np.random.default_rng(12).integers(0, SMALL["vocab_size"], (1, 9))
    with tl.no_grad():
        np.testing.assert_array_equal(loaded(ids).numpy(), model(ids).numpy())
