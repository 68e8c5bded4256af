"""Batch-1 decoding speed with and without the KV cache, and the cost of a cached step as the
context grows; tinygrad_llm beside a minimal PyTorch eager decoder when torch is available, on
the CPU or a GPU (--device=cuda).

    python bench/bench_decode.py                        # models a and b, full sizes
    python bench/bench_decode.py --quick                # a smoke run: few tokens, short prefixes
    python bench/bench_decode.py --torch_python=/tmp/refvenv/bin/python --models=a
    python bench/bench_decode.py --device=cuda --torch_python=/tmp/torchvenv/bin/python

Models (random init, gpt2 preset, block 1024 so the long prefixes fit):
  (a) the char model: 4 layers, 4 heads, 128 dims, vocabulary 65;
  (b) GPT-2 small: 12 layers, 12 heads, 768 dims, vocabulary 50257 (about 124M parameters).
Figures per model and framework (greedy decoding, so sampling costs nothing):
  cached / uncached tokens/s: `generate(..., use_cache=True / False)` making new_tokens tokens
      after a prompt of `prompt` tokens (model b decodes only nocache_tokens_b without the cache:
      each uncached step re-runs the whole context);
  ms/token at context L: a session prefilled with L - steps tokens, then `steps` single-token
      feeds timed, so the timed steps attend over L - steps .. L positions.
PyTorch's decoder keeps per-layer K/V tensors preallocated to the block size and writes each
step's keys in place (what the cache here does). Each framework runs in its own process (torch's
OpenMP workers spin between ops and would tax the other), possibly under another interpreter
(--torch_python, where torch is installed); --isolate=false keeps ours in this process. Ratios
are PyTorch's time over ours (> 1: ours is faster). Each figure is the best of `repeats` runs.

On "cuda" (the goal: cached decoding of model b at least 1.0x PyTorch eager on an H100):
the model and the cache live on the GPU and every timed region ends with a device
synchronisation. Both sides read each generated id back to the host, as a generation loop must
(for stop tokens and streaming); the ms/token steps feed given ids through
decode_step.forward_logits, which leaves the logits on the device (DecodeSession.feed, used on
the CPU, copies them to the host). PyTorch runs on torch.cuda with SDPA attention. "reference" is
ours with every fused kernel off (tl.use_kernels(False)), and kernel_launches_per_token counts
this library's CUDA kernels in one cached step. Prints one JSON object on the last line.
"""
import contextlib
import json
import os
import sys
import time

import tinygrad_llm as tl  # first: it sets OpenBLAS's thread timeout before NumPy loads
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import devices  # noqa: E402
from bench_model import parse  # noqa: E402

MODELS = {"a": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=65, block_size=1024),
          "b": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)}

DEFAULTS = {"models": "a,b", "prompt": 8, "new_tokens": 64, "nocache_tokens_b": 16,
            "prefixes": "64,256,1024", "steps": 16, "torch": True, "torch_python": "",
            "repeats": 3, "only": "", "quick": False, "device": "cpu", "reference": "auto",
            "isolate": True}
QUICK = {"new_tokens": 8, "nocache_tokens_b": 4, "prefixes": "32,64", "steps": 4, "repeats": 1}


def build(name):
    from tinygrad_llm.models import GPT, GPTConfig
    tl.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2", **MODELS[name])).eval()


def timed(f, repeats=1, sync=None):
    """Best of `repeats` wall times of f() (other work on a shared machine only adds time); with
    `sync` (a GPU) the region starts and ends with a device synchronisation."""
    best = float("inf")
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        f()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


# ---- ours ------------------------------------------------------------------------------------
def measure_ours(name, opts):
    """Our figures; opts["only"] == "reference" runs them with every fused kernel off."""
    from tinygrad_llm.generate import generate
    device = opts["device"]
    switch = tl.use_kernels(False) if opts["only"] == "reference" else contextlib.nullcontext()
    model = build(name)
    if device != "cpu":
        model.to(device)
    sync = devices.synchronizer(device)
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    prompt = rng.integers(0, vocab, (1, opts["prompt"]))
    nocache = opts["nocache_tokens_b"] if name == "b" else opts["new_tokens"]
    r = opts["repeats"]
    with switch:
        generate(model, prompt, 2, temperature=0)                    # warm up (on a GPU:
        generate(model, prompt, 1, temperature=0, use_cache=False)   # compiles, cuBLAS plans)
        out = {"cached_tokens_per_s": opts["new_tokens"] / timed(
                   lambda: generate(model, prompt, opts["new_tokens"], temperature=0), r, sync),
               "uncached_tokens_per_s": nocache / timed(
                   lambda: generate(model, prompt, nocache, temperature=0, use_cache=False), r,
                   sync),
               "ms_per_token_at": {}}
        for length in prefix_lengths(opts):
            prefix = rng.integers(0, vocab, length - opts["steps"])
            steps = rng.integers(0, vocab, opts["steps"])
            feed = session_steps if device == "cpu" else cache_steps
            best = min(timed(feed(model, prefix, steps), sync=sync) for _ in range(r))
            out["ms_per_token_at"][str(length)] = 1e3 * best / opts["steps"]
            if device != "cpu" and "kernel_launches_per_token" not in out:
                run = cache_steps(model, prefix, steps)
                before = devices.launches(device)
                run()
                out["kernel_launches_per_token"] = (devices.launches(device) - before) / len(steps)
    return out


def session_steps(model, prefix, steps):
    """A call that feeds the step ids one at a time to a DecodeSession prefilled with `prefix`."""
    from tinygrad_llm.generate.session import DecodeSession
    session = DecodeSession(model)
    session.feed(prefix)
    return lambda: [session.feed(steps[i:i + 1]) for i in range(len(steps))]


def cache_steps(model, prefix, steps):
    """A call that feeds the step ids one at a time through forward_logits after a prefill of
    `prefix` (the logits stay on the model's device)."""
    from tinygrad_llm.generate.decode_step import forward_logits, inference
    from tinygrad_llm.generate.kv_cache import make_caches
    caches = make_caches(model, 1, model.config.block_size)
    with inference(model):
        forward_logits(model, prefix, caches, 0)

    def run():
        with inference(model):
            for i in range(len(steps)):
                forward_logits(model, steps[i:i + 1], caches, len(prefix) + i)
    return run


def prefix_lengths(opts):
    lengths = [int(x) for x in str(opts["prefixes"]).split(",")]
    for n in lengths:
        if not opts["steps"] < n <= 1024:
            raise SystemExit(f"--prefixes: each must be in ({opts['steps']}, 1024], got {n}")
    return lengths


# ---- PyTorch ---------------------------------------------------------------------------------
class TorchDecoder:
    """GPT-2 (learned positions, LayerNorm, GELU) decoded with a KV cache in PyTorch eager,
    reading torch_reference.TorchGPT's weights (copied from ours)."""

    def __init__(self, tm, max_len, device="cpu"):
        import torch
        c = self.c = tm.c
        if c.pos != "learned" or c.n_kv_head != c.n_head or c.mlp != "gelu_tanh":
            raise ValueError("TorchDecoder handles the gpt2 preset only")
        self.tm = tm
        shape = (1, c.n_head, max_len, c.head_dim)
        self.k = [torch.zeros(shape, device=device) for _ in range(c.n_layer)]
        self.v = [torch.zeros(shape, device=device) for _ in range(c.n_layer)]
        self.length = 0

    def feed(self, idx):
        """idx: (1, t) long tensor -> logits (1, V) of its last position."""
        import torch.nn.functional as TF
        tm, c = self.tm, self.c
        b, t = idx.shape
        s = self.length
        if t > 1 and s > 0:
            raise ValueError("TorchDecoder: a multi-token feed only as the prefill")
        h, d = c.n_head, c.head_dim
        x = TF.embedding(idx, tm.p("tok_emb.weight")) + tm.p("pos_emb.weight")[s:s + t]
        for i in range(c.n_layer):
            pre = f"blocks.{i}."
            qkv = tm._linear(tm._norm(x, pre + "norm1"), pre + "attn.qkv").view(b, t, 3 * h, d)
            q, k, v = (qkv[:, :, j * h:(j + 1) * h].transpose(1, 2) for j in range(3))
            self.k[i][:, :, s:s + t] = k
            self.v[i][:, :, s:s + t] = v
            o = TF.scaled_dot_product_attention(q, self.k[i][:, :, :s + t],
                                                self.v[i][:, :, :s + t], is_causal=t > 1)
            x = x + tm._linear(o.transpose(1, 2).reshape(b, t, h * d), pre + "attn.proj")
            f = TF.gelu(tm._linear(tm._norm(x, pre + "norm2"), pre + "ffn.up"),
                        approximate="tanh")
            x = x + tm._linear(f, pre + "ffn.down")
        self.length += t
        return TF.linear(tm._norm(x[:, -1], "norm"), tm.p("head.weight"))


def measure_torch(name, opts):
    import torch
    from torch_reference import TorchGPT
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count())))
    dev, sync, _ = devices.torch_setup(opts["device"])
    on_gpu = sync is not None
    model = build(name)
    tm = TorchGPT.from_ours(model).to(dev)
    c = model.config
    rng = np.random.default_rng(0)
    prompt = torch.from_numpy(rng.integers(0, c.vocab_size, (1, opts["prompt"]))).to(dev)
    nocache = opts["nocache_tokens_b"] if name == "b" else opts["new_tokens"]

    def next_id(logits):
        nxt = logits.argmax(-1, keepdim=True)
        if on_gpu:
            nxt.item()                  # read back as our generate does (one sync per token)
        return nxt

    def cached(n):
        dec = TorchDecoder(tm, c.block_size, dev)
        logits = dec.feed(prompt)
        for _ in range(n):
            logits = dec.feed(next_id(logits))

    def uncached(n):
        idx = prompt
        for _ in range(n):
            idx = torch.cat([idx, next_id(tm(idx)[:, -1])], dim=1)

    r = opts["repeats"]
    with torch.inference_mode():
        cached(2)                                                     # warm up
        uncached(1)
        out = {"cached_tokens_per_s": opts["new_tokens"] / timed(
                   lambda: cached(opts["new_tokens"]), r, sync),
               "uncached_tokens_per_s": nocache / timed(lambda: uncached(nocache), r, sync),
               "ms_per_token_at": {}}
        for length in prefix_lengths(opts):
            prefix = torch.from_numpy(rng.integers(0, c.vocab_size,
                                                   (1, length - opts["steps"]))).to(dev)
            steps = torch.from_numpy(rng.integers(0, c.vocab_size,
                                                  (opts["steps"], 1, 1))).to(dev)
            best = float("inf")
            for _ in range(r):
                dec = TorchDecoder(tm, c.block_size, dev)
                dec.feed(prefix)
                best = min(best, timed(lambda: [dec.feed(s) for s in steps], sync=sync))
            out["ms_per_token_at"][str(length)] = 1e3 * best / opts["steps"]
    return out


# ---- driver ----------------------------------------------------------------------------------
def child(python, framework, name, opts):
    args = [f"--{k}={v}" for k, v in opts.items() if k not in ("only", "models", "quick")]
    return devices.run_child(python, __file__, [f"--only={framework}", f"--models={name}", *args],
                             f"the {framework} run of model {name}")


def measure(python, framework, name, opts):
    """One framework's figures on one model: in a child process, or here (ours, --isolate=false)."""
    if framework != "torch" and not opts["isolate"]:
        return measure_ours(name, dict(opts, only=framework))
    return child(python, framework, name, opts)


def rounded(entry):
    out = {"cached_tokens_per_s": round(entry["cached_tokens_per_s"], 1),
           "uncached_tokens_per_s": round(entry["uncached_tokens_per_s"], 2),
           "ms_per_token_at": {k: round(v, 3) for k, v in entry["ms_per_token_at"].items()}}
    if "kernel_launches_per_token" in entry:
        out["kernel_launches_per_token"] = round(entry["kernel_launches_per_token"], 1)
    return out


def ratios(ours, other):
    """Ours against another framework's figures (> 1: ours is faster)."""
    return {"cached": round(ours["cached_tokens_per_s"] / other["cached_tokens_per_s"], 3),
            "uncached": round(ours["uncached_tokens_per_s"] / other["uncached_tokens_per_s"], 3),
            "ms_per_token_at": {k: round(other["ms_per_token_at"][k] / v, 3)
                                for k, v in ours["ms_per_token_at"].items()}}


def main(argv):
    argv = [a if "=" in a else a + "=true" for a in argv]          # a bare --quick is a flag
    opts = parse(argv, DEFAULTS)
    given = {a.lstrip("-").partition("=")[0] for a in argv}
    if opts["quick"]:
        opts.update({k: v for k, v in QUICK.items() if k not in given})
    if opts["reference"] not in ("auto", "true", "false"):
        raise SystemExit(f"--reference: expected auto, true or false, got {opts['reference']!r}")
    prefix_lengths(opts)
    device = devices.check(opts["device"], ours=opts["only"] != "torch")
    if opts["only"]:                          # a child process: one framework, one model
        measure_one = measure_torch if opts["only"] == "torch" else measure_ours
        result = measure_one(opts["models"], opts)
        print(json.dumps(result))
        return result
    torch_python = devices.torch_interpreter(opts["torch"], opts["torch_python"])
    reference = opts["reference"] == "true" or (opts["reference"] == "auto" and device != "cpu")
    results = {}
    for name in opts["models"].split(","):
        if name not in MODELS:
            raise SystemExit(f"--models: unknown model {name!r}; valid: {sorted(MODELS)}")
        entry = {"ours": rounded(measure(sys.executable, "ours", name, opts))}
        if reference:
            entry["reference"] = rounded(measure(sys.executable, "reference", name, opts))
            entry["speedup_vs_reference"] = ratios(entry["ours"], entry["reference"])
        if torch_python:
            try:
                entry["torch"] = rounded(child(torch_python, "torch", name, opts))
                entry["speedup_vs_torch"] = ratios(entry["ours"], entry["torch"])
            except RuntimeError as e:       # PyTorch's side failing keeps ours: say why
                entry["torch_error"] = devices.last_lines(e)
        results[name] = entry
        print(f"model {name}: " + json.dumps(entry), file=sys.stderr)
    import numba
    out = {"machine": {"cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                       "load_avg": os.getloadavg()[0], "torch_python": torch_python},
           "device": devices.info(device),
           "models": MODELS, "options": {k: v for k, v in opts.items() if k != "only"},
           "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
