"""Quantization: size, accuracy and batch-1 decode speed per scheme, beside llama.cpp.

    python bench/bench_quant.py                                  # both models, every scheme
    python bench/bench_quant.py --models=gpt2_small --schemes=f32,q8_0,q4_0 \\
        --llama_python=/tmp/llvenv/bin/python                     # with llama.cpp side by side

Schemes: f32, int8, q8_0, q4_0, q4_1, nf4 (round to nearest) and gptq_q4_0, gptq_q4_1 (GPTQ for
the blocks' Linear layers, calibrated on 32 windows of the training split; head and embeddings
round to nearest as in the plain entry, so the two compare at the same bits).
Models: "shakespeare", the main job's checkpoint (--ckpt, default out-shakespeare/; skipped with
a note when missing), and "gpt2_small", a 12-layer/768-dim model (random init,
GPT-2 vocabulary). Every Linear, the head and the token embeddings are quantized (as llama.cpp
files are). Per scheme:
  file_mb          the safetensors checkpoint of the quantized model; gguf_mb for llama.cpp types
  weight_mb        resident bytes of the model's weights: parameters, buffers and quantized
                   layers as they are held (on the CPU their bytes as the kernels' column tiles,
                   with float32 scales, the only copy: the decode step reads them in place)
  val_ppl, ppl_change_pct, top1_agreement   (shakespeare) perplexity on the validation split,
                   its change vs float32, and how often the argmax matches the float model's
  decode_tokens_per_s  greedy single-token steps after an 8-token prompt (the prefill is not
                   timed), best of `repeats`
With --llama_python (an interpreter where llama-cpp-python imports), the same GGUF files decoded
by llama.cpp with the same thread count, in its own process, and ours / llama.cpp.

On a GPU (--device=cuda; defaults: the gpt2_small model, schemes f32,f16,q8_0,q4_0,q4_1,nf4):
each model is quantized on the host and moved to the GPU (a quantized layer keeps its packed
fields there and the CUDA quant_matmul dequantizes in registers); "f16" is the float model cast to
float16. The goal on an H100: Q4_0 decoding at least 1.5x our float16 (q4_0_vs_f16_speed).
Decode timings end with a device synchronisation; per scheme, kernel_launches_per_token counts
this library's CUDA kernels in one step, and with --reference (default on "cuda")
decode_tokens_per_s_reference is the same decode with every fused kernel off and
kernel_speedup = ours / that. llama.cpp's side runs on the CPU only and is left out on "cuda".
--files=false skips writing the checkpoints (file_mb, gguf_mb). "tiny" (2 layers, 64 dims,
vocabulary 256) is a smoke-test model. Prints one JSON object on the last line.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import tinygrad_llm as tl  # first: it sets the thread pools up before NumPy loads
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import devices  # noqa: E402
from bench_model import parse  # noqa: E402

DEFAULTS = {"models": "", "schemes": "", "ckpt": "out-shakespeare/ckpt.safetensors", "steps": 32,
            "repeats": 3, "eval_batches": 20, "llama_python": "", "threads": 0, "device": "cpu",
            "reference": "auto", "files": True}
DEVICE_DEFAULTS = {
    "cpu": {"models": "shakespeare,gpt2_small",
            "schemes": "f32,int8,q8_0,q4_0,q4_1,nf4,gptq_q4_0,gptq_q4_1"},
    "cuda": {"models": "gpt2_small", "schemes": "f32,f16,q8_0,q4_0,q4_1,nf4"}}
GGML = ("f32", "q8_0", "q4_0", "q4_1")
MODELS = {"gpt2_small": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                             block_size=1024),
          "tiny": dict(n_layer=2, n_head=2, n_embd=64, vocab_size=256, block_size=64)}


def load(name, opts):
    from tinygrad_llm.models import GPT, GPTConfig
    from tinygrad_llm.train import load_checkpoint
    if name in MODELS:
        tl.manual_seed(0)
        return GPT(GPTConfig.preset("gpt2", **MODELS[name])).eval(), None
    state, _, record = load_checkpoint(opts["ckpt"])
    model = GPT(GPTConfig(**record["model_config"]))
    model.load_state_dict(state)
    return model.eval(), record


def calibration(model, record, opts):
    """GPTQ's calibration ids: 32 windows of the training split (random ids without a corpus)."""
    rng = np.random.default_rng(0)
    T = min(model.config.block_size, 256)
    if record is None:
        return rng.integers(0, model.config.vocab_size, (8, T))
    from tinygrad_llm.data import shakespeare
    from tinygrad_llm.data.batches import split
    from tinygrad_llm.tokenizers import tokenizer_from_dict
    ids = np.asarray(split(tokenizer_from_dict(record["tokenizer"]).encode(shakespeare()),
                           0.1)[0])
    starts = rng.integers(0, len(ids) - T, 32)
    return np.stack([ids[s:s + T] for s in starts])


def quantized(name, scheme, opts):
    """The model quantized with `scheme` on the host, then moved to --device ("f16": cast)."""
    from tinygrad_llm.quant import gptq, quantize
    model, record = load(name, opts)
    if scheme.startswith("gptq_"):                  # GPTQ for the blocks, then as RTN below
        scheme = scheme[len("gptq_"):]
        gptq(model, calibration(model, record, opts), scheme, group_size=64)
    if scheme not in ("f32", "f16"):
        quantize(model, scheme, group_size=32 if scheme == "nf4" else 64, include_head=True,
                 include_embeddings=True)
    if opts["device"] != "cpu":
        model.to(opts["device"], dtype=np.float16 if scheme == "f16" else None)
    return model, record


def validation(record, opts):
    """(inputs, targets) windows of the validation split, the main job's way."""
    from tinygrad_llm.data import shakespeare
    from tinygrad_llm.data.batches import split
    from tinygrad_llm.tokenizers import tokenizer_from_dict
    ids = tokenizer_from_dict(record["tokenizer"]).encode(shakespeare())
    val = np.asarray(split(ids, 0.1)[1])
    block = record["model_config"]["block_size"]
    starts = np.linspace(0, len(val) - block - 1, opts["eval_batches"] * 8).astype(int)
    x = np.stack([val[s:s + block] for s in starts])
    return x, np.stack([val[s + 1:s + block + 1] for s in starts])


def accuracy(model, data, reference_logits=None):
    x, y = data
    losses, argmax = [], []
    with tl.no_grad():
        for i in range(0, len(x), 8):
            logits = model(x[i:i + 8]).numpy().astype(np.float64)
            z = logits - logits.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            losses.append(-np.take_along_axis(logp, y[i:i + 8, :, None], -1).mean())
            argmax.append(logits.argmax(-1))
    return float(np.exp(np.mean(losses))), np.concatenate(argmax)


def decode_speed(model, opts):
    """Tokens/s of greedy single-token steps after an 8-token prompt; on a GPU also this
    library's CUDA kernel launches per step (else None)."""
    from tinygrad_llm.generate.decode_step import forward_logits, inference
    from tinygrad_llm.generate.kv_cache import make_caches
    device = opts["device"]
    sync = devices.synchronizer(device)
    prompt = list(range(1, 9))
    best, launches = float("inf"), None
    with inference(model):
        for _ in range(opts["repeats"] + 1):                       # the first warms up
            caches = make_caches(model, 1, len(prompt) + opts["steps"] + 1)
            logits = forward_logits(model, prompt, caches, 0)
            if sync is not None:
                sync()
            before = devices.launches(device)
            t0 = time.perf_counter()
            for i in range(opts["steps"]):
                if sync is None:
                    token = int(np.asarray(logits[-1]).argmax())
                else:                       # the id is read back, as a generation loop does
                    token = int(logits[-1].argmax())
                logits = forward_logits(model, [token], caches, len(prompt) + i)
            if sync is not None:
                sync()
                launches = (devices.launches(device) - before) / opts["steps"]
            best = min(best, time.perf_counter() - t0)
    return opts["steps"] / best, launches


def resident_bytes(model):
    """Bytes the model's weights occupy in memory, each array or quantized layer counted once
    (a tied table is one PackedWeight)."""
    held = {}
    for m in model.modules():
        for a in [p.data for p in m._parameters.values() if p is not None] + [
                b for b in m._buffers.values() if b is not None]:
            held[id(a)] = a.nbytes
        packed = m.__dict__.get("packed")
        if packed is not None:
            held[id(packed)] = packed.nbytes
    return sum(held.values())


def sizes(model, scheme, tmp, files=True):
    from tinygrad_llm.quant import save_gguf
    from tinygrad_llm.train import save_checkpoint
    if not files:
        return {"weight_mb": round(resident_bytes(model) / 1e6, 2)}, None
    path = os.path.join(tmp, "model.safetensors")
    save_checkpoint(path, model)
    out = {"file_mb": round(os.path.getsize(path) / 1e6, 2),
           "weight_mb": round(resident_bytes(model) / 1e6, 2)}
    gguf_path = None
    if scheme.replace("gptq_", "") in GGML:
        try:
            gguf_path = os.path.join(tmp, f"model-{scheme}.gguf")
            save_gguf(model, gguf_path, dtype=scheme.replace("gptq_", ""))
            out["gguf_mb"] = round(os.path.getsize(gguf_path) / 1e6, 2)
        except (ImportError, ValueError) as e:
            out["gguf"] = f"not written: {e}"
            gguf_path = None
    return out, gguf_path


LLAMA_SCRIPT = """
import json, sys, time
import llama_cpp
path, steps, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=threads, n_threads_batch=threads,
                      n_batch=16, verbose=False)
best = float("inf")
for _ in range(repeats + 1):
    llm.reset()
    llm.eval(list(range(1, 9)))
    t0 = time.perf_counter()
    for i in range(steps):                  # fixed tokens: the speed does not depend on them
        llm.eval([(7 * i + 3) % 50])
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"tokens_per_s": steps / best}))
"""


def llama_speed(path, opts, threads):
    # llama.cpp runs in its own environment: tinygrad_llm sets OMP_WAIT_POLICY=PASSIVE and
    # GOMP_SPINCOUNT for its own pools (kernels/cpu/__init__.py), which would make ggml's OpenMP
    # threads sleep between ops (the passive policy alone slowed llama.cpp 2-3x, measured)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "OPENBLAS_THREAD_TIMEOUT")}
    run = subprocess.run([opts["llama_python"], "-c", LLAMA_SCRIPT, path, str(opts["steps"]),
                          str(opts["repeats"]), str(threads)], capture_output=True, text=True,
                         env=env)
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr else "failed"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def bench_model(name, opts, threads):
    if name == "shakespeare" and not os.path.exists(opts["ckpt"]):
        return {"skipped": f"{opts['ckpt']} is missing: run python examples/train_shakespeare.py"}
    results, float_argmax, data = {}, None, None
    for scheme in opts["schemes"].split(","):
        model, record = quantized(name, scheme, opts)
        entry = {}
        with tempfile.TemporaryDirectory() as tmp:
            measured, gguf_path = sizes(model, scheme, tmp, opts["files"])
            entry.update(measured)
            if record is not None:
                data = data if data is not None else validation(record, opts)
                ppl, argmax = accuracy(model, data)
                if scheme == "f32":
                    float_ppl, float_argmax = ppl, argmax
                entry["val_ppl"] = round(ppl, 4)
                if float_argmax is not None and scheme != "f32":
                    entry["ppl_change_pct"] = round(100 * (ppl / float_ppl - 1), 2)
                    entry["top1_agreement"] = round(float((argmax == float_argmax).mean()), 4)
            speed, launches = decode_speed(model, opts)
            entry["decode_tokens_per_s"] = round(speed, 1)
            if launches is not None:
                entry["kernel_launches_per_token"] = round(launches, 1)
            if opts["reference"]:
                with tl.use_kernels(False):
                    reference, _ = decode_speed(model, opts)
                entry["decode_tokens_per_s_reference"] = round(reference, 1)
                entry["kernel_speedup"] = round(speed / reference, 3)
            if gguf_path and opts["llama_python"] and opts["device"] == "cpu":
                ref = llama_speed(gguf_path, opts, threads)
                entry["llama_cpp_tokens_per_s"] = round(ref.get("tokens_per_s", 0), 1) or ref
                if "tokens_per_s" in ref:
                    entry["vs_llama_cpp"] = round(entry["decode_tokens_per_s"]
                                                  / ref["tokens_per_s"], 3)
        results[scheme] = entry
        print(f"{name} {scheme}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    for base in ("f32", "f16"):
        if base in results and "q4_0" in results:
            results[f"q4_0_vs_{base}_speed"] = round(results["q4_0"]["decode_tokens_per_s"]
                                                     / results[base]["decode_tokens_per_s"], 2)
    return results


def resolve(opts):
    """Fill the options whose default depends on --device, and check the choices."""
    device = opts["device"]
    for key, value in DEVICE_DEFAULTS.get(device, DEVICE_DEFAULTS["cpu"]).items():
        opts[key] = opts[key] or value
    if opts["reference"] not in ("auto", "true", "false"):
        raise SystemExit(f"--reference: expected auto, true or false, got {opts['reference']!r}")
    opts["reference"] = opts["reference"] == "true" or (opts["reference"] == "auto"
                                                        and device != "cpu")
    if device == "cpu" and "f16" in opts["schemes"].split(","):
        raise SystemExit("--schemes: f16 decodes on --device=cuda only (NumPy has no fast "
                         "float16 matmul)")
    unknown = set(opts["models"].split(",")) - set(MODELS) - {"shakespeare"}
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; valid: "
                         f"{sorted(MODELS) + ['shakespeare']}")
    return opts


def main(argv):
    opts = resolve(parse(argv, DEFAULTS))
    device = devices.check(opts["device"])
    import numba
    threads = opts["threads"] or numba.get_num_threads()
    numba.set_num_threads(threads)
    out = {"machine": {"cpu_count": os.cpu_count(), "threads": threads,
                       "load_avg": os.getloadavg()[0], "llama_python": opts["llama_python"]},
           "device": devices.info(device), "options": opts,
           "results": {name: bench_model(name, opts, threads)
                       for name in opts["models"].split(",")}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
