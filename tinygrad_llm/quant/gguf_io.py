"""GGUF in and out: a GPT as the single-file format of llama.cpp (Gerganov et al., ggml), and back.

Reading order: the optional `gguf` import, which configs each llama.cpp architecture can hold,
the one name table both directions walk (`_plan`), row helpers (RoPE permutation, splitting and
joining rows of float or block-quantized weights), tensor encoding, the tokenizer, then
save_gguf and load_gguf.

The container (header, key/values, tensor infos, aligned data) is written by the `gguf` package's
GGUFWriter and read by its GGUFReader; this file decides only names, layouts and types.

Two architectures of llama.cpp express our GPT exactly:

    "llama"  pos="rope", norm="rmsnorm", mlp="swiglu", bias=False (GQA; tied or separate head)
             token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
             ffn_gate, ffn_up, ffn_down}, output_norm, output (absent when tied: llama.cpp then
             multiplies by token_embd)
    "gpt2"   pos="learned", norm="layernorm", mlp="gelu_tanh" (without biases: written as zeros)
             token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm,
             ffn_up, ffn_down} (+ .bias each), output_norm (+ .bias), output (when untied)

Layouts. ggml lists dimensions innermost first (ne0 = the input dimension of a matrix), so a
Linear weight (out, in) is stored as it is in memory: GGUFWriter reverses NumPy's shape itself.
Our attention has one fused `qkv` projection (rows: H*D of q, Hkv*D of k, Hkv*D of v); gpt2's
attn_qkv has the same row order, llama's q, k and v are separate tensors (split on save, joined
on load).

RoPE pairs. Our RotaryEmbedding rotates the pairs (i, i + D/2) of each head (the half-split
layout of Hugging Face's Llama); llama.cpp's "llama" architecture rotates adjacent pairs
(2i, 2i + 1) with the same frequency theta^(-2i/D). Reordering each head's rows of the q and k
weights, new row 2i = old row i and new row 2i + 1 = old row i + D/2, makes the adjacent-pair
rotation of the new rows the half-split rotation of the old ones (llama.cpp's HF converter does
the same permutation); q . k is unchanged since both get the same order. Load applies the inverse.
The permutation moves whole rows, and quantization blocks run along a row, so a quantized
weight is permuted block for block, byte-exact.

Types. dtype "f32" writes every tensor F32; "f16" writes matrices (token_embd included) F16;
"q8_0" / "q4_0" / "q4_1" write matrices in llama.cpp's 32-weight blocks (formats.py's byte-exact
codecs). Norm weights, biases and position_embd stay F32 always. A matrix whose input dimension
is not a multiple of 32 cannot be blocked and is written F16 in a quantized file. A QuantLinear
already in that scheme is written from its own blocks (nothing re-quantized); other quantized
layers are dequantized first. On load, F32 / F16 / BF16 tensors become float32; Q8_0 / Q4_0 /
Q4_1 linear weights become QuantLinear layers holding the file's blocks, and a quantized
token_embd is dequantized for the Embedding (the head, when tied, shares that float table).

Tokenizer. A byte-level BPETokenizer is written as llama.cpp's "gpt2" vocabulary: each token in
GPT-2's printable byte alphabet (tokenizers/files.py: bytes_to_unicode), its type (normal, or
control for special tokens), and the merges "a b" in rank order; <|endoftext|> is the bos and eos
token. Ids the tokenizer lacks below the model's vocab_size are "[PAD<id>]" of type unused.
"""
import os
from pathlib import Path

import numpy as np

from .. import backend
from ..data.files import commit, temporary_beside
from ..models.gpt import GPT, GPTConfig
from ..tokenizers.bpe import ENDOFTEXT, BPETokenizer
from ..tokenizers.files import _check_ids_distinct, _ranks_from_merges, bytes_to_unicode
from ..tokenizers.patterns import CL100K_PATTERN, GPT2_PATTERN, O200K_PATTERN
from .formats import QK, dequantize_weight, from_ggml, quantize_weight, to_ggml
from .linear import QuantLinear

__all__ = ["save_gguf", "load_gguf", "DTYPES", "ARCHITECTURES"]

DTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
ARCHITECTURES = ("llama", "gpt2")
BLOCK_TYPES = ("q8_0", "q4_0", "q4_1")
# our pattern <-> llama.cpp's pre-tokenizer name (llama-bpe is Llama 3's, i.e. cl100k's regex)
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", CL100K_PATTERN: "llama-bpe", O200K_PATTERN: "gpt-4o"}
PATTERN_KEY = "tokenizer.ggml.tinygrad_llm.pattern"   # our exact regex; llama.cpp ignores it


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("save_gguf / load_gguf need the gguf package: pip install gguf "
                          "(the 'gguf' extra)") from None
    return gguf


# ---- which configs llama.cpp can hold ----------------------------------------------------------
def _architecture(config):
    """The llama.cpp architecture that expresses `config` exactly, or ValueError naming what
    cannot be expressed."""
    c = config
    extras = [what for what, present in (
        ("post-LN blocks (prenorm=False)", not c.prenorm),
        (f"attention={c.attention!r}", c.attention != "softmax"),
        (f"sliding-window attention (window={c.window})", c.window is not None),
        (f"cross-layer KV sharing (kv_share={c.kv_share})", c.kv_share != 1),
        (f"mixture of experts (n_expert={c.n_expert})", c.n_expert),
        ("attention-only blocks (mlp='none')", c.mlp == "none"),
        ("QK-norm (qk_norm=True)", c.qk_norm),
        (f"logit soft-capping (logit_softcap={c.logit_softcap})", c.logit_softcap is not None),
        ("U-net skips (unet_skips=True)", c.unet_skips),
        (f"value embeddings (value_embeds={c.value_embeds})", c.value_embeds)) if present]
    if extras:
        raise ValueError(f"save_gguf: llama.cpp's llama/gpt2 architectures cannot express "
                         f"{', '.join(extras)}")
    if c.pos == "rope" and c.norm == "rmsnorm" and c.mlp == "swiglu" and not c.bias:
        if c.rope_scaling and c.rope_scaling.get("type") != "linear":
            raise ValueError(f"save_gguf: rope_scaling={c.rope_scaling} cannot be expressed "
                             "(llama.cpp's llama architecture takes 'linear' scaling or none)")
        return "llama"
    if c.pos == "learned" and c.norm == "layernorm" and c.mlp == "gelu_tanh":
        # llama.cpp's gpt2 reads a bias for every norm and projection: a model without them is
        # written with zero biases (the same function), and loads back with bias=True
        if c.n_kv_head != c.n_head or c.head_dim * c.n_head != c.n_embd:
            raise ValueError(f"save_gguf: gpt2 needs n_kv_head == n_head and head_dim * n_head "
                             f"== n_embd, got n_head={c.n_head}, n_kv_head={c.n_kv_head}, "
                             f"head_dim={c.head_dim}, n_embd={c.n_embd}")
        return "gpt2"
    raise ValueError(f"save_gguf: pos={c.pos!r}, norm={c.norm!r}, mlp={c.mlp!r}, bias={c.bias} "
                     "cannot be expressed; expected llama (rope, rmsnorm, swiglu, bias=False) or "
                     "gpt2 (learned, layernorm, gelu_tanh)")


# ---- the name table ----------------------------------------------------------------------------
def _plan(arch, config):
    """(gguf base name, our module path, kind) for every tensor group, in file order.

    kinds: "embedding" (token_embd, a matrix), "position" (position_embd, F32), "norm" (weight,
    + bias for LayerNorm), "linear" (weight, + bias when config.bias), "qkv" (llama: our fused
    projection as attn_q / attn_k / attn_v)."""
    plan = [("token_embd", "tok_emb", "embedding")]
    if arch == "gpt2":
        plan.append(("position_embd", "pos_emb", "position"))
    for i in range(config.n_layer):
        g, o = f"blk.{i}.", f"blocks.{i}."
        plan.append((g + "attn_norm", o + "norm1", "norm"))
        plan.append((g + "attn_", o + "attn.qkv", "qkv") if arch == "llama"
                    else (g + "attn_qkv", o + "attn.qkv", "linear"))
        plan += [(g + "attn_output", o + "attn.proj", "linear"), (g + "ffn_norm", o + "norm2",
                                                                  "norm")]
        if arch == "llama":
            plan.append((g + "ffn_gate", o + "ffn.gate", "linear"))
        plan += [(g + "ffn_up", o + "ffn.up", "linear"), (g + "ffn_down", o + "ffn.down",
                                                           "linear")]
    plan.append(("output_norm", "norm", "norm"))
    if not config.tie_embeddings:
        plan.append(("output", "head", "linear"))
    return plan


def _resolve(model, path):
    """'blocks.0.attn.qkv' -> (parent module, attribute name, the module)."""
    parent, parts = model, path.split(".")
    for part in parts[:-1]:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    return parent, parts[-1], getattr(parent, parts[-1])


# ---- rows of float or block-quantized weights --------------------------------------------------
class _Blocks:
    """A quantized (out, in) weight as formats.py fields; every field array is indexed by row."""

    def __init__(self, scheme, fields):
        self.scheme, self.fields = scheme, fields

    def map_rows(self, fn):
        return _Blocks(self.scheme, {k: fn(v) for k, v in self.fields.items()})

    def dequantize(self):
        return dequantize_weight(self.fields, self.scheme)

    @property
    def shape(self):                      # q4 types pack two weights per byte
        rows, cols = self.fields["qweight"].shape
        return rows, cols * (1 if self.scheme == "q8_0" else 2)


def _rope_rows(n_head, head_dim):
    """Row order that turns half-split RoPE rows into llama.cpp's adjacent pairs: within each
    head, new row 2i + s = old row i + s D/2 (s = 0, 1). gguf_w = ours_w[order]."""
    rows = np.arange(n_head * head_dim).reshape(n_head, 2, head_dim // 2)
    return rows.transpose(0, 2, 1).reshape(-1)


def _take_rows(w, order):
    return w.map_rows(lambda a: a[order]) if isinstance(w, _Blocks) else w[order]


def _split_rows(w, sizes):
    cuts = np.cumsum(sizes)[:-1]
    if isinstance(w, _Blocks):
        parts = {k: np.split(v, cuts, axis=0) for k, v in w.fields.items()}
        return [_Blocks(w.scheme, {k: p[i] for k, p in parts.items()}) for i in range(len(sizes))]
    return np.split(w, cuts, axis=0)


def _join_rows(parts):
    """Concatenate row blocks; quantized parts stay quantized when all share one scheme."""
    schemes = {p.scheme if isinstance(p, _Blocks) else None for p in parts}
    if len(schemes) == 1 and None not in schemes:
        return _Blocks(parts[0].scheme, {k: np.concatenate([p.fields[k] for p in parts])
                                         for k in parts[0].fields})
    return np.concatenate([p.dequantize() if isinstance(p, _Blocks) else p for p in parts])


def _matrix(layer, dtype):
    """A Linear's or Embedding's weight as float32 (out, in), or as _Blocks when the layer is
    quantized (QuantLinear, QuantEmbedding: a `scheme` and `fields`) in dtype's scheme, so its
    blocks are written as they are. Other quantized layers are dequantized."""
    scheme = getattr(layer, "scheme", None)
    if scheme is not None:
        fields = {k: backend.to_numpy(v) for k, v in layer.fields.items()}
        if scheme == dtype:
            return _Blocks(dtype, fields)
        return dequantize_weight(fields, scheme)
    return backend.to_numpy(layer.weight.data).astype(np.float32)


def _vector(p):
    return backend.to_numpy(p.data).astype(np.float32)


# ---- tensor encoding ---------------------------------------------------------------------------
def _encode(value, matrix, dtype, gguf):
    """(array for GGUFWriter.add_tensor, raw_dtype or None). Matrices follow dtype (F16 where the
    input dimension is not a multiple of 32 in a quantized file); everything else is F32."""
    if isinstance(value, _Blocks):
        if matrix and value.scheme == dtype:
            return to_ggml(value.fields, dtype), gguf.GGMLQuantizationType[dtype.upper()]
        value = value.dequantize()
    value = np.ascontiguousarray(value, dtype=np.float32)
    if not matrix or dtype == "f32":
        return value, None
    if dtype == "f16" or value.shape[1] % QK:
        return value.astype(np.float16), None
    return to_ggml(quantize_weight(value, dtype), dtype), gguf.GGMLQuantizationType[dtype.upper()]


def _model_tensors(model, arch, dtype):
    """(gguf tensor name, is a matrix, float array or _Blocks) for every tensor of the file."""
    c = model.config
    out = []
    for base, path, kind in _plan(arch, c):
        _, _, module = _resolve(model, path)
        if kind == "embedding":
            out.append((base + ".weight", True, _matrix(module, dtype)))
        elif kind == "position":
            out.append((base + ".weight", False, _vector(module.weight)))
        elif kind == "norm":
            out.append((base + ".weight", False, _vector(module.weight)))
            if getattr(module, "bias", None) is not None:
                out.append((base + ".bias", False, _vector(module.bias)))
            elif arch == "gpt2" and not c.bias:
                out.append((base + ".bias", False, np.zeros(c.n_embd, np.float32)))
        elif kind == "linear":
            out.append((base + ".weight", True, _matrix(module, dtype)))
            if module.bias is not None:
                out.append((base + ".bias", False, _vector(module.bias)))
            elif arch == "gpt2" and not c.bias and base != "output":     # the head has none
                out.append((base + ".bias", False, np.zeros(module.out_features, np.float32)))
        else:                                             # llama's q, k, v with RoPE pair order
            d = c.head_dim
            q, k, v = _split_rows(_matrix(module, dtype),
                                  [c.n_head * d, c.n_kv_head * d, c.n_kv_head * d])
            out += [(base + "q.weight", True, _take_rows(q, _rope_rows(c.n_head, d))),
                    (base + "k.weight", True, _take_rows(k, _rope_rows(c.n_kv_head, d))),
                    (base + "v.weight", True, v)]
    return out


# ---- tokenizer ---------------------------------------------------------------------------------
def _merge_of(token, rank, ranks):
    """The two tokens BPE joined into `token` (bytes of rank `rank`): replay tiktoken's rule on
    its bytes with only lower ranks allowed; a learned token ends as exactly two parts."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"save_gguf: tokenizer token {token!r} (id {rank}) is not the join of "
                         "two lower-ranked tokens, so it has no merge for llama.cpp's list")
    return parts


def _write_tokenizer(writer, tokenizer, vocab_size, gguf):
    if tokenizer is None:
        writer.add_tokenizer_model("none")               # llama.cpp: a model without a vocab
        return
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"save_gguf: tokenizer has {tokenizer.vocab_size} ids, more than the "
                         f"model's vocab_size={vocab_size}")
    alphabet = bytes_to_unicode()
    def spell(b):
        return "".join(alphabet[x] for x in b)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in tokenizer.ranks.items():
        tokens[i], types[i] = spell(token), gguf.TokenType.NORMAL
    for text, i in tokenizer.special_tokens.items():
        tokens[i], types[i] = text, gguf.TokenType.CONTROL
    merges = [" ".join(spell(p) for p in _merge_of(t, r, tokenizer.ranks))
              for t, r in sorted(tokenizer.ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS.get(tokenizer.pattern, "default"))
    writer.add_string(PATTERN_KEY, tokenizer.pattern)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    if ENDOFTEXT in tokenizer.special_tokens:
        writer.add_bos_token_id(tokenizer.special_tokens[ENDOFTEXT])
        writer.add_eos_token_id(tokenizer.special_tokens[ENDOFTEXT])
    writer.add_add_bos_token(False)                      # ids are exactly what encode() gives


def _read_tokenizer(reader, gguf, path):
    """A BPETokenizer from a "gpt2" vocabulary, or None for any other (or no) vocabulary."""
    if _value(reader, "tokenizer.ggml.model", path, None) != "gpt2":
        return None
    tokens = _value(reader, "tokenizer.ggml.tokens", path)
    types = _value(reader, "tokenizer.ggml.token_type", path,
                   [int(gguf.TokenType.NORMAL)] * len(tokens))
    vocab, specials = {}, {}
    for i, (token, kind) in enumerate(zip(tokens, types)):
        if kind in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):
            specials[token] = i
        elif kind != gguf.TokenType.UNUSED:
            vocab[token] = i
    merges = []
    for n, line in enumerate(_value(reader, "tokenizer.ggml.merges", path, [])):
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"load_gguf: {path}: merge {n} is {line!r}, expected 'a b'")
        merges.append((f"merge {n}", parts[0], parts[1]))
    source = f"{path} (tokenizer.ggml.tokens / merges)"
    ranks, rest = _ranks_from_merges(vocab, merges, source)
    specials.update(rest)                 # normal tokens that no merge makes: kept whole
    _check_ids_distinct(ranks, specials, source)
    pre = _value(reader, "tokenizer.ggml.pre", path, "default")
    pattern = _value(reader, PATTERN_KEY, path, None)
    if pattern is None:
        by_name = {name: p for p, name in PRE_TOKENIZERS.items()}
        by_name.update({"default": GPT2_PATTERN, "dbrx": CL100K_PATTERN})
        if pre not in by_name:
            raise ValueError(f"load_gguf: {path}: pre-tokenizer tokenizer.ggml.pre={pre!r} is not "
                             f"supported; supported: {sorted(by_name)}")
        pattern = by_name[pre]
    return BPETokenizer(ranks, pattern, specials, name=Path(path).stem)


# ---- save --------------------------------------------------------------------------------------
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0",
               "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1"}


def _write_metadata(writer, arch, config, dtype, gguf):
    c = config
    writer.add_name("tinygrad_llm")
    writer.add_file_type(int(gguf.LlamaFileType[_FILE_TYPES[dtype]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.ffn_hidden)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_kv_head)
    writer.add_vocab_size(c.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(c.norm_eps)
        return
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim)
    if c.head_dim * c.n_head != c.n_embd:        # llama.cpp assumes n_embd / n_head otherwise
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    if c.rope_scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(c.rope_scaling["factor"])


def save_gguf(model, path, dtype="f32", tokenizer=None):
    """Write `model` (a GPT) to `path` as a GGUF file llama.cpp runs.

    dtype: "f32", "f16", "q8_0", "q4_0" or "q4_1" for the matrices (norms, biases and position
    embeddings stay F32). tokenizer: a BPETokenizer to embed as llama.cpp's gpt2 vocabulary, or
    None. The file is written beside `path` under a temporary name, fsync'ed and renamed, so an
    interrupted save leaves any old file whole. Returns the path."""
    gguf = _import_gguf()
    if not isinstance(model, GPT):
        raise TypeError(f"save_gguf: model must be a tinygrad_llm GPT, got {type(model).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"save_gguf: dtype must be one of {DTYPES}, got {dtype!r}")
    if tokenizer is not None and not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"save_gguf: tokenizer must be a BPETokenizer or None, got "
                        f"{type(tokenizer).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save_gguf: path must be a str or os.PathLike, got {type(path).__name__}")
    arch = _architecture(model.config)
    tensors = [(name, *_encode(value, matrix, dtype, gguf))
               for name, matrix, value in _model_tensors(model, arch, dtype)]
    tmp = temporary_beside(path)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _write_metadata(writer, arch, model.config, dtype, gguf)
        _write_tokenizer(writer, tokenizer, model.config.vocab_size, gguf)
        for name, array, raw_dtype in tensors:
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        commit(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)         # gone after a successful commit
    return path


# ---- load --------------------------------------------------------------------------------------
_REQUIRED = object()


def _value(reader, key, path, default=_REQUIRED):
    field = reader.get_field(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"load_gguf: {path} lacks the metadata key {key!r}")
        return default
    return field.contents()


def _read_tensor(t, gguf, path):
    """A GGUFReader tensor -> float32 array or _Blocks, in NumPy order (out, in)."""
    q = gguf.GGMLQuantizationType
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    if t.tensor_type in (q.F32, q.F16):
        return np.array(t.data, dtype=np.float32).reshape(shape)
    if t.tensor_type == q.BF16:        # bfloat16 is float32's high half: widen exactly
        bits = np.array(t.data).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if t.tensor_type.name.lower() in BLOCK_TYPES and len(shape) == 2:
        scheme = t.tensor_type.name.lower()
        return _Blocks(scheme, from_ggml(np.array(t.data), scheme, shape))
    raise ValueError(f"load_gguf: {path}: tensor {t.name!r} has type {t.tensor_type.name}, which "
                     f"is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1)")


def _decimal(x):
    """A float32 metadata value as the shortest decimal that rounds to it: 1e-5 is stored as
    9.99999975e-06 and comes back as 1e-5, the value the model was saved with."""
    return float(str(np.float32(x)))


def _config_from_file(reader, arch, tensors, path):
    def key(name, default=_REQUIRED):
        value = _value(reader, f"{arch}.{name}", path, default)
        if isinstance(value, list):
            raise ValueError(f"load_gguf: {path}: per-layer {arch}.{name}={value} cannot be "
                             "expressed (one value for every layer expected)")
        return value
    if "token_embd.weight" not in tensors:
        raise ValueError(f"load_gguf: {path} has no token_embd.weight tensor")
    vocab_size = int(tensors["token_embd.weight"].shape[1])      # ggml dims: (n_embd, V)
    n_embd, n_head = key("embedding_length"), key("attention.head_count")
    common = dict(vocab_size=vocab_size, n_layer=key("block_count"), n_head=n_head,
                  n_embd=n_embd, ffn_hidden=key("feed_forward_length"),
                  tie_embeddings="output.weight" not in tensors)
    if key("expert_count", 0):
        raise ValueError(f"load_gguf: {path}: mixture of experts ({arch}.expert_count="
                         f"{key('expert_count')}) cannot be expressed")
    if arch == "gpt2":
        if "position_embd.weight" not in tensors:
            raise ValueError(f"load_gguf: {path} has no position_embd.weight tensor")
        rows = int(tensors["position_embd.weight"].shape[1])
        return GPTConfig.preset("gpt2", block_size=rows,
                                norm_eps=_decimal(key("attention.layer_norm_epsilon")), **common)
    head_dim = key("attention.key_length", n_embd // n_head)
    if key("attention.value_length", head_dim) != head_dim:
        raise ValueError(f"load_gguf: {path}: key_length {head_dim} != value_length "
                         f"{key('attention.value_length')} cannot be expressed")
    if key("rope.dimension_count", head_dim) != head_dim:
        raise ValueError(f"load_gguf: {path}: partial RoPE (rope.dimension_count="
                         f"{key('rope.dimension_count')}, head_dim={head_dim}) cannot be "
                         "expressed")
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"load_gguf: {path}: rope.scaling.type={scaling!r} cannot be expressed "
                         "('linear' or none)")
    rope_scaling = ({"type": "linear", "factor": _decimal(key("rope.scaling.factor"))}
                    if scaling == "linear" else None)
    return GPTConfig.preset(
        "llama", block_size=key("context_length"), n_kv_head=key("attention.head_count_kv",
                                                                  n_head),
        head_dim=head_dim, norm_eps=_decimal(key("attention.layer_norm_rms_epsilon")),
        rope_theta=_decimal(key("rope.freq_base", 10000.0)), rope_scaling=rope_scaling, **common)


def _check_shape(name, value, want, path):
    if tuple(value.shape) != tuple(want):
        raise ValueError(f"load_gguf: {path}: tensor {name!r} has shape {tuple(value.shape)}, "
                         f"expected {tuple(want)} from the file's metadata")


def _fill(param, value):
    """Write a host array read from the file into a parameter, wherever the parameter lives (a
    device array takes a host one only through an explicit upload)."""
    param.data[...] = backend.to_device(value, param.device)


def _set_linear(parent, attr, layer, weight, bias):
    """Put weight (float or _Blocks) and bias into `layer`, swapping in a QuantLinear for
    blocks (as quantize() does) on the layer's device."""
    if isinstance(weight, _Blocks):
        q = QuantLinear(layer.in_features, layer.out_features, weight.scheme,
                        bias=bias is not None, device=layer.weight.device, fields=weight.fields)
        layer = q
        setattr(parent, attr, q)
    else:
        _fill(layer.weight, weight)
    if bias is not None:
        _fill(layer.bias, bias)


def load_gguf(path, return_tokenizer=False, device=None):
    """A GPT (float32, eval mode) from a GGUF file of architecture "llama" or "gpt2" (ours, or
    one llama.cpp's converters wrote), on `device` ("cpu", "cuda"; None: the default device,
    $TINYGRAD_LLM_DEVICE or "cpu"): each tensor is read on the host and uploaded once, quantized
    ones as their blocks. return_tokenizer=True returns (model, tokenizer), the tokenizer a
    BPETokenizer for a gpt2-style BPE vocabulary, else None."""
    gguf = _import_gguf()
    device = backend.check_device(device)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_gguf: path must be a str or os.PathLike, got {type(path).__name__}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"load_gguf: no GGUF file at {Path(path).absolute()}")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError) as e:
        raise ValueError(f"load_gguf: {path} is not a readable GGUF file ({e})") from e
    arch = _value(reader, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise ValueError(f"load_gguf: {path}: general.architecture={arch!r} is not supported; "
                         f"supported: {ARCHITECTURES}")
    tensors = {t.name: t for t in reader.tensors}
    config = _config_from_file(reader, arch, tensors, path)
    model = GPT(config)
    used = set()

    def read(name, want):
        if name not in tensors:
            raise ValueError(f"load_gguf: {path} has no tensor {name!r}")
        used.add(name)
        value = _read_tensor(tensors[name], gguf, path)
        _check_shape(name, value, want, path)
        return value

    for base, module_path, kind in _plan(arch, config):
        parent, attr, module = _resolve(model, module_path)
        if kind in ("embedding", "position"):
            w = read(base + ".weight", module.weight.shape)
            _fill(module.weight, w.dequantize() if isinstance(w, _Blocks) else w)
        elif kind == "norm":
            _fill(module.weight, read(base + ".weight", (config.n_embd,)))
            if getattr(module, "bias", None) is not None:
                _fill(module.bias, read(base + ".bias", (config.n_embd,)))
        elif kind == "linear":
            shape = (module.out_features, module.in_features)
            bias = read(base + ".bias", shape[:1]) if module.bias is not None else None
            _set_linear(parent, attr, module, read(base + ".weight", shape), bias)
        else:
            d, c = config.head_dim, config.n_embd
            q = read(base + "q.weight", (config.n_head * d, c))
            k = read(base + "k.weight", (config.n_kv_head * d, c))
            v = read(base + "v.weight", (config.n_kv_head * d, c))
            q = _take_rows(q, np.argsort(_rope_rows(config.n_head, d)))
            k = _take_rows(k, np.argsort(_rope_rows(config.n_kv_head, d)))
            _set_linear(parent, attr, module, _join_rows([q, k, v]), None)
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise ValueError(f"load_gguf: {path}: tensors {unknown[:8]} cannot be expressed by a "
                         f"{arch} GPT")
    tokenizer = _read_tokenizer(reader, gguf, path) if return_tokenizer else None
    model.to(device)                # a no-op when the default device was asked for
    model.eval()
    return (model, tokenizer) if return_tokenizer else model
