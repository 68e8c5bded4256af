"""Hugging Face checkpoint I/O (models/hf.py) without torch: save_pretrained -> from_pretrained
round trips, the names and layouts written for GPT-2 and Llama, the native layout for configs
neither format expresses, hand-written bfloat16 and sharded files, config translation (4.x and
5.x rope keys), errors, and atomic writes.

Oracles: the model that was saved (identical logits and parameters), the name tables of the
Hugging Face formats written out here by hand, and float32 values truncated to bfloat16.
The comparison with transformers itself is tests/ref/test_hf_reference.py.
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tinygrad_llm.models.hf as hf
from tinygrad_llm.models import GPT, GPTConfig, from_pretrained, save_pretrained

SMALL = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=53)
IDS = np.random.default_rng(0).integers(0, 53, (2, 11))


def _model(preset, **overrides):
    model = GPT(GPTConfig.preset(preset, **{**SMALL, **overrides}))
    rng = np.random.default_rng(1)
    for _, p in model.named_parameters():      # gains and biases away from their 1 / 0 init
        p.data[...] += (rng.standard_normal(p.shape) * 0.1).astype(p.data.dtype)
    return model.eval()


def _config(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def _params(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


# ---- round trips ----------------------------------------------------------------------------
ROUND_TRIPS = {
    "gpt2": (("gpt2", {}), "gpt2"),
    "gpt2_untied_relu": (("gpt2", dict(tie_embeddings=False, mlp="relu", ffn_hidden=40)), "gpt2"),
    "llama_gqa": (("llama", dict(n_kv_head=2, ffn_hidden=64)), "llama"),
    "llama_rope_linear": (("llama", dict(n_kv_head=2, rope_scaling={"type": "linear",
                                                                     "factor": 2.0})), "llama"),
    "mistral_window": (("llama", dict(n_kv_head=2, window=4)), "mistral"),
    "native_alibi": (("gpt2", dict(pos="alibi")), "tinygrad_llm"),
    "native_moe": (("llama", dict(n_kv_head=2, n_expert=2, n_expert_per_token=1)),
                   "tinygrad_llm"),
    "native_rope_ntk": (("llama", dict(rope_scaling={"type": "ntk", "factor": 2.0})),
                        "tinygrad_llm"),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_round_trip_gives_identical_logits(name, tmp_path):
    (preset, overrides), model_type = ROUND_TRIPS[name]
    model = _model(preset, **overrides)
    save_pretrained(model, str(tmp_path))
    assert _config(tmp_path)["model_type"] == model_type
    loaded = from_pretrained(str(tmp_path))
    assert loaded.config == model.config
    assert not loaded.training
    before, after = _params(model), _params(loaded)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    np.testing.assert_array_equal(loaded(IDS).numpy(), model(IDS).numpy())


def test_dropout_does_not_force_the_native_layout(tmp_path):
    # dropout is a training setting, not architecture: a GPT-2 with dropout is still GPT-2, and a
    # MoE with dropout is still not expressible in either format
    save_pretrained(_model("gpt2", dropout=0.1), str(tmp_path / "a"))
    assert _config(tmp_path / "a")["model_type"] == "gpt2"
    save_pretrained(_model("llama", n_kv_head=2, n_expert=2, dropout=0.1), str(tmp_path / "b"))
    assert _config(tmp_path / "b")["model_type"] == "tinygrad_llm"


def test_tied_embeddings_are_tied_again_after_loading(tmp_path):
    save_pretrained(_model("gpt2"), str(tmp_path))
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    loaded = from_pretrained(str(tmp_path))
    assert loaded.head.weight is loaded.tok_emb.weight


# ---- the layouts written ------------------------------------------------------------------
def test_gpt2_layout_uses_hf_names_and_conv1d_shapes(tmp_path):
    model = _model("gpt2", tie_embeddings=False)
    save_pretrained(model, str(tmp_path))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    C, L = SMALL["n_embd"], SMALL["n_layer"]
    expected = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"}
    for i in range(L):
        expected |= {f"h.{i}.{n}.{w}" for n in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj",
                                                  "mlp.c_fc", "mlp.c_proj")
                     for w in ("weight", "bias")}
    assert set(tensors) == expected
    params = _params(model)
    assert tensors["h.0.attn.c_attn.weight"].shape == (C, 3 * C)       # Conv1D: (in, out)
    np.testing.assert_array_equal(tensors["h.0.attn.c_attn.weight"],
                                  params["blocks.0.attn.qkv.weight"].T)
    assert tensors["h.1.mlp.c_fc.weight"].shape == (C, 4 * C)
    np.testing.assert_array_equal(tensors["h.1.mlp.c_proj.weight"],
                                  params["blocks.1.ffn.down.weight"].T)
    np.testing.assert_array_equal(tensors["wpe.weight"], params["pos_emb.weight"])


def test_llama_layout_splits_qkv_into_hf_projections(tmp_path):
    model = _model("llama", n_kv_head=2, ffn_hidden=64)
    save_pretrained(model, str(tmp_path))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    C, D = SMALL["n_embd"], SMALL["n_embd"] // SMALL["n_head"]
    p = "model.layers.0."
    assert tensors[p + "self_attn.q_proj.weight"].shape == (4 * D, C)
    assert tensors[p + "self_attn.k_proj.weight"].shape == (2 * D, C)     # GQA: Hkv = 2
    assert tensors[p + "self_attn.v_proj.weight"].shape == (2 * D, C)
    qkv = _params(model)["blocks.0.attn.qkv.weight"]
    np.testing.assert_array_equal(tensors[p + "self_attn.q_proj.weight"], qkv[:4 * D])
    np.testing.assert_array_equal(tensors[p + "self_attn.k_proj.weight"], qkv[4 * D:6 * D])
    np.testing.assert_array_equal(tensors[p + "self_attn.v_proj.weight"], qkv[6 * D:])
    for name in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                 "input_layernorm", "post_attention_layernorm"):
        assert p + name + ".weight" in tensors
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(tensors)
    assert not any("qkv" in k or k.startswith("blocks.") for k in tensors)
    config = _config(tmp_path)
    assert (config["num_key_value_heads"], config["num_attention_heads"]) == (2, 4)
    assert config["architectures"] == ["LlamaForCausalLM"]


# ---- config translation -------------------------------------------------------------------
def _llama_dir(tmp_path, **config_changes):
    """A saved small Llama whose config.json is then edited (keys set; None deletes)."""
    save_pretrained(_model("llama", n_kv_head=2), str(tmp_path))
    config = _config(tmp_path)
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    return str(tmp_path)


def test_transformers5_rope_parameters_are_read(tmp_path):
    path = _llama_dir(tmp_path, rope_theta=None, rope_scaling=None, rope_parameters={
        "rope_type": "linear", "factor": 4.0, "rope_theta": 500.0})
    config = from_pretrained(path).config
    assert config.rope_theta == 500.0
    assert config.rope_scaling == {"type": "linear", "factor": 4.0}


def test_transformers4_rope_keys_are_read(tmp_path):
    path = _llama_dir(tmp_path, rope_theta=250.0, rope_scaling={"type": "linear", "factor": 2.0})
    config = from_pretrained(path).config
    assert (config.rope_theta, config.rope_scaling) == (250.0, {"type": "linear", "factor": 2.0})


def test_dynamic_rope_loads_unscaled_within_the_original_context(tmp_path):
    path = _llama_dir(tmp_path, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                 "rope_theta": 10000.0})
    config = from_pretrained(path).config
    assert config.rope_scaling is None and config.block_size == SMALL["block_size"]


def test_yarn_rope_loads_with_hugging_faces_ramp(tmp_path):
    path = _llama_dir(tmp_path, rope_parameters={"rope_type": "yarn", "factor": 2.0,
                                                 "rope_theta": 10000.0})
    config = from_pretrained(path).config
    assert config.rope_scaling == {"type": "yarn", "factor": 2.0, "ramp": "index",
                                   "beta_fast": 32.0, "beta_slow": 1.0}
    assert config.max_positions == 2 * SMALL["block_size"]


@pytest.mark.parametrize("changes, needle", [
    (dict(rope_parameters={"rope_type": "longrope", "factor": 2.0}), "longrope"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_bias=True), "attention_bias"),
])
def test_llama_configs_we_cannot_express_are_refused(tmp_path, changes, needle):
    with pytest.raises(ValueError, match=needle):
        from_pretrained(_llama_dir(tmp_path, **changes))


def test_gpt2_attention_variants_we_cannot_express_are_refused(tmp_path):
    save_pretrained(_model("gpt2"), str(tmp_path))
    config = _config(tmp_path)
    config["scale_attn_by_inverse_layer_idx"] = True
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        from_pretrained(str(tmp_path))


# ---- errors -------------------------------------------------------------------------------
def test_unsupported_model_type_is_named(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, f)
    with pytest.raises(ValueError, match="bert"):
        from_pretrained(str(tmp_path))


def test_missing_directory_config_and_weights_name_the_file(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(str(tmp_path))
    save_pretrained(_model("gpt2"), str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(str(tmp_path))


def test_missing_tensor_is_named(tmp_path):
    save_pretrained(_model("llama", n_kv_head=2), str(tmp_path))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="model.layers.1.self_attn.k_proj.weight"):
        from_pretrained(str(tmp_path))


# ---- files written by others: bfloat16, shards ----------------------------------------------
def _write_safetensors(path, tensors):
    """A safetensors file by hand: 8-byte little-endian header length, JSON header, raw data.
    tensors: name -> (dtype string, shape, bytes)."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)           # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def _bf16_bits(x):
    """bfloat16 is the top 16 bits of a float32 (truncation, the exact round trip oracle)."""
    return (np.ascontiguousarray(x, np.float32).view(np.uint32) >> 16).astype("<u2")


def test_bfloat16_checkpoint_loads_through_the_bf16_path(tmp_path):
    save_pretrained(_model("llama", n_kv_head=2), str(tmp_path))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    expected, written = {}, {}
    for name, value in tensors.items():
        if value.ndim == 2:        # matrices in bf16, norm gains left in float32 (mixed file)
            bits = _bf16_bits(value)
            written[name] = ("BF16", value.shape, bits.tobytes())
            expected[name] = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            written[name] = ("F32", value.shape, value.astype("<f4").tobytes())
            expected[name] = value
    _write_safetensors(tmp_path / "model.safetensors", written)
    with pytest.raises(TypeError):             # safetensors.numpy cannot: the bf16 path must
        load_file(str(tmp_path / "model.safetensors"))
    raw = hf.load_safetensors_dir(str(tmp_path))
    for name in expected:
        assert raw[name].dtype == np.float32
        np.testing.assert_array_equal(raw[name], expected[name], err_msg=name)
    assert not np.array_equal(expected["model.embed_tokens.weight"],
                              tensors["model.embed_tokens.weight"])   # truncation happened
    params = _params(from_pretrained(str(tmp_path)))
    np.testing.assert_array_equal(params["tok_emb.weight"], expected["model.embed_tokens.weight"])
    np.testing.assert_array_equal(params["blocks.1.norm2.weight"],
                                  expected["model.layers.1.post_attention_layernorm.weight"])
    np.testing.assert_array_equal(
        params["blocks.0.attn.qkv.weight"],
        np.concatenate([expected[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv"]))


def test_sharded_checkpoint_with_index_loads(tmp_path):
    model = _model("gpt2")
    save_pretrained(model, str(tmp_path))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    os.remove(tmp_path / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard))
        weight_map.update({k: shard for k in keys})
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    np.testing.assert_array_equal(from_pretrained(str(tmp_path))(IDS).numpy(),
                                  model(IDS).numpy())


# ---- atomic writes ------------------------------------------------------------------------
def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    first = _model("gpt2")
    save_pretrained(first, str(tmp_path))
    config_before = _config(tmp_path)

    def dying_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:            # half a file, then the crash
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", dying_save_file)
    second = _model("gpt2", n_layer=1)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(second, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]   # no .tmp
    assert _config(tmp_path) == config_before
    np.testing.assert_array_equal(from_pretrained(str(tmp_path))(IDS).numpy(),
                                  first(IDS).numpy())
