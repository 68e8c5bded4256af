"""Hugging Face checkpoints in and out: GPT-2 and Llama (and Mistral) directories of config.json +
model.safetensors (or a sharded model.safetensors.index.json), read and written without torch.

The name tables below are the whole mapping; each entry is (our name, Hugging Face name, how the
array changes). GPT-2 stores its projections as Conv1D weights (in, out), the transpose of a
Linear's (out, in). Llama stores q, k and v separately; ours is one fused `qkv` (rows q, then k,
then v), so they are concatenated on load and split on save. Hugging Face's Llama already uses the
half-split rotary layout (pairs i, i + D/2) that ops/rope.py implements, so q and k rows need no
permutation. Mistral's `sliding_window` W lets query i see keys i-W+1..i, as GPTConfig.window
does (checked against transformers 5.23, eager and SDPA), so it is copied unchanged. A config
this library can express but neither format can (ALiBi, MoE, static NTK RoPE, ...) is saved in
the native layout: our state_dict names and our GPTConfig, under model_type "tinygrad_llm".

Writes are atomic (a temporary file, fsync, rename), so an interrupted save leaves the old file.
"""
import json
import math
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from .gpt import GPT, GPTConfig

__all__ = ["from_pretrained", "save_pretrained", "load_safetensors_dir", "SUPPORTED"]

SUPPORTED = ("gpt2", "llama", "mistral", "tinygrad_llm")
CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"


# ---- reading the files --------------------------------------------------------------------
def _header(path):
    """The JSON header of a safetensors file: an 8-byte little-endian length, then the JSON."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


def _bf16_file(path):
    """A safetensors file holding bfloat16 tensors (NumPy has no bfloat16): read the header and
    widen each bf16 value to float32 by placing its 16 bits in the high half of a float32 (bf16 is
    float32 with the low 16 mantissa bits dropped, so this is exact)."""
    out = {}
    n, header = _header(path)
    with open(path, "rb") as f:
        f.seek(8 + n)
        data = f.read()
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1",
              "BOOL": np.bool_}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        raw = data[start:end]
        if meta["dtype"] == "BF16":
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            out[name] = bits.view(np.float32).reshape(meta["shape"])
        elif meta["dtype"] in dtypes:
            values = np.frombuffer(raw, dtypes[meta["dtype"]]).reshape(meta["shape"])
            out[name] = values.astype(values.dtype.newbyteorder("="))
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
    return out


def _load_file(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"from_pretrained: weights file {path!r} does not exist")
    # the header says whether bfloat16 is inside; safetensors.numpy cannot read it (no NumPy dtype)
    _, header = _header(path)
    if any(meta.get("dtype") == "BF16" for name, meta in header.items() if name != "__metadata__"):
        return _bf16_file(path)
    return load_file(path)


def load_safetensors_dir(path):
    """name -> NumPy array from model.safetensors or from every shard of the index."""
    single, index = os.path.join(path, WEIGHTS), os.path.join(path, INDEX)
    if os.path.exists(single):
        return _load_file(single)
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(_load_file(os.path.join(path, shard)))
        return tensors
    raise FileNotFoundError(f"no {WEIGHTS} or {INDEX} in {path!r}")


def _read_config(path):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"from_pretrained: model directory {path!r} does not exist")
    file = os.path.join(path, CONFIG)
    if not os.path.exists(file):
        raise FileNotFoundError(f"from_pretrained: no {CONFIG} in {path!r} (expected a Hugging "
                                "Face model directory)")
    with open(file) as f:
        hf = json.load(f)
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        archs = hf.get("architectures")
        raise ValueError(f"from_pretrained: unsupported architecture model_type={kind!r} "
                         f"(architectures={archs}) in {file}; supported: {SUPPORTED}")
    return hf


# ---- config translation -------------------------------------------------------------------
def _rope_from_hf(hf):
    """(rope_theta, our rope_scaling, block_size) from a Llama/Mistral config.

    transformers 5 writes `rope_parameters` ({"rope_type", "rope_theta", "factor", ...});
    4.x wrote `rope_theta` and `rope_scaling` ({"rope_type" or "type", "factor"}). Linear maps to
    our position interpolation (HF divides inv_freq by the factor: the same angles). HF's
    "dynamic" NTK recomputes the base only once a sequence outgrows the original context, so
    within it the angles are plain RoPE's: it loads as unscaled RoPE with block_size at that
    context, and longer inputs are refused rather than silently differing. Our static "ntk"
    has no Hugging Face counterpart (it is saved in the native layout)."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    block_size = hf.get("max_position_embeddings", 2048)
    scaling = hf.get("rope_scaling")
    if params.get("rope_type", "default") != "default":
        scaling = params
    if not scaling or scaling.get("rope_type", scaling.get("type", "default")) == "default":
        return theta, None, block_size
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return theta, {"type": "linear", "factor": float(scaling["factor"])}, block_size
    if kind == "dynamic":
        original = scaling.get("original_max_position_embeddings") or block_size
        return theta, None, min(block_size, original)
    if kind == "yarn":
        return _yarn_from_hf(scaling, block_size, theta)
    raise ValueError(f"from_pretrained: rope scaling type {kind!r} is not supported (expected "
                     "'linear', 'dynamic' or 'yarn')")


def _yarn_from_hf(scaling, block_size, theta):
    """Hugging Face's YaRN as ours: the ramp over the pair index (ramp="index") and its attention
    factor. Its max_position_embeddings is the extended length when the original is given (then
    the factor is their ratio), else the original one."""
    if scaling.get("truncate", True) is False:
        raise ValueError("from_pretrained: YaRN with truncate=False is not supported")
    original = scaling.get("original_max_position_embeddings")
    factor = float(block_size / original if original else scaling["factor"])
    ours = {"type": "yarn", "factor": factor, "ramp": "index",
            "beta_fast": float(scaling.get("beta_fast") or 32),
            "beta_slow": float(scaling.get("beta_slow") or 1)}
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")

    def get_mscale(m):                     # DeepSeek's form of the temperature 0.1 ln(s) + 1
        return 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0

    if scaling.get("attention_factor") is not None:
        ours["mscale"] = float(scaling["attention_factor"])
    elif mscale and mscale_all_dim:
        ours["mscale"] = get_mscale(mscale) / get_mscale(mscale_all_dim)
    return theta, ours, int(original or block_size)


def _config_from_hf(hf):
    kind = hf["model_type"]
    if kind == "tinygrad_llm":
        return GPTConfig(**hf["config"])
    if kind == "gpt2":
        # attention variants GPT2LMHeadModel can switch on and our attention cannot express
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
            raise ValueError("from_pretrained: GPT-2 checkpoints with scale_attn_weights=False or "
                             "scale_attn_by_inverse_layer_idx=True are not supported")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu"):
            raise ValueError(f"from_pretrained: GPT-2 activation_function {act!r} is not "
                             "supported (gelu_new, gelu_pytorch_tanh, gelu or relu)")
        return GPTConfig.preset(
            "gpt2", vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
            n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
            ffn_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp={"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                 "relu": "relu"}[act],
            tie_embeddings=hf.get("tie_word_embeddings", True))
    theta, scaling, block_size = _rope_from_hf(hf)
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("from_pretrained: Llama checkpoints with attention_bias/mlp_bias are "
                         "not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"from_pretrained: hidden_act={hf['hidden_act']!r} is not supported "
                         "(our SwiGLU gates with silu)")
    return GPTConfig.preset(
        "llama", vocab_size=hf["vocab_size"], block_size=block_size,
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        n_embd=hf["hidden_size"], head_dim=hf.get("head_dim"),
        ffn_hidden=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=scaling,
        window=hf.get("sliding_window") if kind == "mistral" else None,
        tie_embeddings=hf.get("tie_word_embeddings", False))


def _is_gpt2(c):
    return (c.pos == "learned" and c.norm == "layernorm" and c.mlp in ("gelu_tanh", "gelu", "relu")
            and c.bias and c.n_kv_head == c.n_head and c.head_dim * c.n_head == c.n_embd
            and _plain(c))


def _is_llama(c):
    # static NTK scaling has no Hugging Face rope_type ("dynamic" differs below the context);
    # YaRN saves in the native layout (ours may ramp over r, theirs over the pair index)
    linear = not c.rope_scaling or c.rope_scaling.get(
        "type", c.rope_scaling.get("rope_type")) == "linear"
    return (c.pos == "rope" and c.norm == "rmsnorm" and c.mlp == "swiglu" and not c.bias
            and linear and _plain(c))


def _plain(c):
    """No architectural extra that neither format has (dropout is a training setting: ignored)."""
    return (c.prenorm and c.attention == "softmax" and c.kv_share == 1 and not c.n_expert
            and not c.qk_norm and c.logit_softcap is None and not c.unet_skips
            and not c.value_embeds)


def _hf_config(c):
    if _is_gpt2(c) and c.window is None:
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
                "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
                "n_inner": c.ffn_hidden, "layer_norm_epsilon": c.norm_eps,
                "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu",
                                        "relu": "relu"}[c.mlp],
                "tie_word_embeddings": c.tie_embeddings, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0}
    if _is_llama(c):
        out = {"model_type": "mistral" if c.window else "llama",
               "architectures": ["MistralForCausalLM" if c.window else "LlamaForCausalLM"],
               "vocab_size": c.vocab_size, "max_position_embeddings": c.block_size,
               "hidden_size": c.n_embd, "intermediate_size": c.ffn_hidden,
               "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
               "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
               "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
               "tie_word_embeddings": c.tie_embeddings, "attention_bias": False,
               "mlp_bias": False, "hidden_act": "silu"}
        if c.rope_scaling:        # the 4.x key; transformers 5 converts it on load
            out["rope_scaling"] = {"rope_type": "linear", "factor": c.rope_scaling["factor"]}
        if c.window:
            out["sliding_window"] = c.window
        return out
    return {"model_type": "tinygrad_llm", "config": c.to_dict()}


# ---- name tables ---------------------------------------------------------------------------
T = "transpose"      # Conv1D (in, out) <-> Linear (out, in)


def _gpt2_names(c):
    """(ours, theirs, transform) for every GPT-2 tensor."""
    names = [("tok_emb.weight", "wte.weight", None), ("pos_emb.weight", "wpe.weight", None),
             ("norm.weight", "ln_f.weight", None), ("norm.bias", "ln_f.bias", None)]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        names += [(ours + "norm1.weight", theirs + "ln_1.weight", None),
                  (ours + "norm1.bias", theirs + "ln_1.bias", None),
                  (ours + "attn.qkv.weight", theirs + "attn.c_attn.weight", T),
                  (ours + "attn.qkv.bias", theirs + "attn.c_attn.bias", None),
                  (ours + "attn.proj.weight", theirs + "attn.c_proj.weight", T),
                  (ours + "attn.proj.bias", theirs + "attn.c_proj.bias", None),
                  (ours + "norm2.weight", theirs + "ln_2.weight", None),
                  (ours + "norm2.bias", theirs + "ln_2.bias", None),
                  (ours + "ffn.up.weight", theirs + "mlp.c_fc.weight", T),
                  (ours + "ffn.up.bias", theirs + "mlp.c_fc.bias", None),
                  (ours + "ffn.down.weight", theirs + "mlp.c_proj.weight", T),
                  (ours + "ffn.down.bias", theirs + "mlp.c_proj.bias", None)]
    if not c.tie_embeddings:
        names.append(("head.weight", "lm_head.weight", None))
    return names


def _llama_names(c):
    """(ours, theirs, None) for every Llama tensor except the fused qkv (handled apart)."""
    names = [("tok_emb.weight", "model.embed_tokens.weight", None),
             ("norm.weight", "model.norm.weight", None)]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        names += [(ours + "norm1.weight", theirs + "input_layernorm.weight", None),
                  (ours + "attn.proj.weight", theirs + "self_attn.o_proj.weight", None),
                  (ours + "norm2.weight", theirs + "post_attention_layernorm.weight", None),
                  (ours + "ffn.gate.weight", theirs + "mlp.gate_proj.weight", None),
                  (ours + "ffn.up.weight", theirs + "mlp.up_proj.weight", None),
                  (ours + "ffn.down.weight", theirs + "mlp.down_proj.weight", None)]
    if not c.tie_embeddings:
        names.append(("head.weight", "lm_head.weight", None))
    return names


def _qkv_split(c):
    return np.cumsum([c.n_head * c.head_dim, c.n_kv_head * c.head_dim])


# ---- load and save --------------------------------------------------------------------------
def _tensor(tensors, theirs, ours):
    if theirs not in tensors:
        raise ValueError(f"from_pretrained: checkpoint has no tensor {theirs!r} (needed for "
                         f"{ours})")
    return tensors[theirs]


def _ours_from_hf(kind, c, tensors):
    if kind == "tinygrad_llm":
        return tensors
    if kind == "gpt2":
        # GPT2LMHeadModel saves under "transformer."; GPT2Model without a prefix
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        names = _gpt2_names(c)
    else:
        names = _llama_names(c)
    state = {}
    for ours, theirs, how in names:
        value = _tensor(tensors, theirs, ours)
        state[ours] = value.T if how == T else value
    if kind in ("llama", "mistral"):
        for i in range(c.n_layer):
            p, ours = f"model.layers.{i}.self_attn.", f"blocks.{i}.attn.qkv.weight"
            state[ours] = np.concatenate(
                [_tensor(tensors, p + f"{x}_proj.weight", ours) for x in "qkv"], axis=0)
    return state


def _hf_from_ours(kind, c, state):
    if kind == "tinygrad_llm":
        return dict(state)
    out = {}
    for ours, theirs, how in (_gpt2_names(c) if kind == "gpt2" else _llama_names(c)):
        out[theirs] = state[ours].T if how == T else state[ours]
    if kind in ("llama", "mistral"):
        for i in range(c.n_layer):
            q, k, v = np.split(state[f"blocks.{i}.attn.qkv.weight"], _qkv_split(c), axis=0)
            p = f"model.layers.{i}.self_attn."
            out[p + "q_proj.weight"], out[p + "k_proj.weight"], out[p + "v_proj.weight"] = q, k, v
    return out


def from_pretrained(path, dtype=np.float32, device=None):
    """A GPT with the weights of the Hugging Face (or native) checkpoint directory `path`."""
    hf = _read_config(path)
    config = _config_from_hf(hf)
    model = GPT(config)
    state = _ours_from_hf(hf["model_type"], config, load_safetensors_dir(path))
    if config.tie_embeddings:
        state.pop("head.weight", None)
        state["head.weight"] = state["tok_emb.weight"]
    model.load_state_dict({k: np.asarray(v, dtype=dtype) for k, v in state.items()})
    if device is not None:
        model.to(device)
    return model.eval()


def _atomic_write(path, write):
    tmp = path + ".tmp"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:                      # a failed write leaves no half-written temporary behind
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pretrained(model, path):
    """Write `model` to directory `path` as config.json + model.safetensors, in Hugging Face's
    GPT-2 or Llama layout when its config is one of those, else in the native layout."""
    os.makedirs(path, exist_ok=True)
    hf = _hf_config(model.config)
    state = {k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("head.weight")          # safetensors refuses shared memory; HF re-ties
    tensors = {k: np.ascontiguousarray(v) for k, v in
               _hf_from_ours(hf["model_type"], model.config, state).items()}
    _atomic_write(os.path.join(path, WEIGHTS),
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "np"}))

    def write_config(tmp):
        with open(tmp, "w") as f:
            json.dump(hf, f, indent=2)
    _atomic_write(os.path.join(path, CONFIG), write_config)
