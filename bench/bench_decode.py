"""Batch-1 decoding speed with and without the KV cache, and the cost of a cached step as the
context grows; tinygrad_llm beside a minimal PyTorch eager decoder when torch is available.

    python bench/bench_decode.py                        # models a and b, full sizes
    python bench/bench_decode.py --quick                # a smoke run: few tokens, short prefixes
    python bench/bench_decode.py --torch_python=/tmp/refvenv/bin/python --models=a

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
(--torch_python, where torch is installed). Ratios are PyTorch's time over ours (> 1: ours is
faster). Each figure is the best of `repeats` runs. Prints one JSON object on the last line.
"""
import json
import os
import subprocess
import sys
import time

import tinygrad_llm as tl  # first: it sets OpenBLAS's thread timeout before NumPy loads
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_model import parse  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {"a": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=65, block_size=1024),
          "b": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)}

DEFAULTS = {"models": "a,b", "prompt": 8, "new_tokens": 64, "nocache_tokens_b": 16,
            "prefixes": "64,256,1024", "steps": 16, "torch": True, "torch_python": "",
            "repeats": 3, "only": "", "quick": False}
QUICK = {"new_tokens": 8, "nocache_tokens_b": 4, "prefixes": "32,64", "steps": 4, "repeats": 1}


def build(name):
    from tinygrad_llm.models import GPT, GPTConfig
    tl.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2", **MODELS[name])).eval()


def timed(f, repeats=1):
    """Best of `repeats` wall times of f() (other work on a shared machine only adds time)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


# ---- ours ------------------------------------------------------------------------------------
def measure_ours(name, opts):
    from tinygrad_llm.generate import generate
    from tinygrad_llm.generate.session import DecodeSession
    model = build(name)
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    prompt = rng.integers(0, vocab, (1, opts["prompt"]))
    nocache = opts["nocache_tokens_b"] if name == "b" else opts["new_tokens"]
    generate(model, prompt, 2, temperature=0)                        # warm up
    r = opts["repeats"]
    out = {"cached_tokens_per_s": opts["new_tokens"] / timed(
               lambda: generate(model, prompt, opts["new_tokens"], temperature=0), r),
           "uncached_tokens_per_s": nocache / timed(
               lambda: generate(model, prompt, nocache, temperature=0, use_cache=False), r),
           "ms_per_token_at": {}}
    for length in prefix_lengths(opts):
        prefix = rng.integers(0, vocab, length - opts["steps"])
        steps = rng.integers(0, vocab, opts["steps"])
        best = float("inf")
        for _ in range(r):
            session = DecodeSession(model)
            session.feed(prefix)
            best = min(best, timed(lambda: [session.feed(steps[i:i + 1])
                                            for i in range(len(steps))]))
        out["ms_per_token_at"][str(length)] = 1e3 * best / opts["steps"]
    return out


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

    def __init__(self, tm, max_len):
        import torch
        c = self.c = tm.c
        if c.pos != "learned" or c.n_kv_head != c.n_head or c.mlp != "gelu_tanh":
            raise ValueError("TorchDecoder handles the gpt2 preset only")
        self.tm = tm
        shape = (1, c.n_head, max_len, c.head_dim)
        self.k = [torch.zeros(shape) for _ in range(c.n_layer)]
        self.v = [torch.zeros(shape) for _ in range(c.n_layer)]
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
    model = build(name)
    tm = TorchGPT.from_ours(model)
    c = model.config
    rng = np.random.default_rng(0)
    prompt = torch.from_numpy(rng.integers(0, c.vocab_size, (1, opts["prompt"])))
    nocache = opts["nocache_tokens_b"] if name == "b" else opts["new_tokens"]

    def cached(n):
        dec = TorchDecoder(tm, c.block_size)
        logits = dec.feed(prompt)
        for _ in range(n):
            logits = dec.feed(logits.argmax(-1, keepdim=True))

    def uncached(n):
        idx = prompt
        for _ in range(n):
            idx = torch.cat([idx, tm(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)

    r = opts["repeats"]
    with torch.inference_mode():
        cached(2)                                                     # warm up
        out = {"cached_tokens_per_s": opts["new_tokens"] / timed(
                   lambda: cached(opts["new_tokens"]), r),
               "uncached_tokens_per_s": nocache / timed(lambda: uncached(nocache), r),
               "ms_per_token_at": {}}
        for length in prefix_lengths(opts):
            prefix = torch.from_numpy(rng.integers(0, c.vocab_size, (1, length - opts["steps"])))
            steps = torch.from_numpy(rng.integers(0, c.vocab_size, (opts["steps"], 1, 1)))
            best = float("inf")
            for _ in range(r):
                dec = TorchDecoder(tm, c.block_size)
                dec.feed(prefix)
                best = min(best, timed(lambda: [dec.feed(s) for s in steps]))
            out["ms_per_token_at"][str(length)] = 1e3 * best / opts["steps"]
    return out


# ---- driver ----------------------------------------------------------------------------------
def torch_interpreter(opts):
    """The Python that runs the torch side, or None."""
    if not opts["torch"]:
        return None
    if opts["torch_python"]:
        return opts["torch_python"]
    try:
        import torch  # noqa: F401
        return sys.executable
    except ImportError:
        return None


def child(python, framework, name, opts):
    args = [f"--{k}={v}" for k, v in opts.items() if k not in ("only", "models", "quick")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([python, os.path.abspath(__file__), f"--only={framework}",
                          f"--models={name}", *args], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"bench_decode: the {framework} run of model {name} failed:\n"
                           f"{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def rounded(entry):
    return {"cached_tokens_per_s": round(entry["cached_tokens_per_s"], 1),
            "uncached_tokens_per_s": round(entry["uncached_tokens_per_s"], 2),
            "ms_per_token_at": {k: round(v, 3) for k, v in entry["ms_per_token_at"].items()}}


def main(argv):
    argv = [a if "=" in a else a + "=true" for a in argv]          # a bare --quick is a flag
    opts = parse(argv, DEFAULTS)
    given = {a.lstrip("-").partition("=")[0] for a in argv}
    if opts["quick"]:
        opts.update({k: v for k, v in QUICK.items() if k not in given})
    prefix_lengths(opts)
    if opts["only"]:                          # a child process: one framework, one model
        measure = measure_ours if opts["only"] == "ours" else measure_torch
        result = measure(opts["models"], opts)
        print(json.dumps(result))
        return result
    torch_python = torch_interpreter(opts)
    results = {}
    for name in opts["models"].split(","):
        if name not in MODELS:
            raise SystemExit(f"--models: unknown model {name!r}; valid: {sorted(MODELS)}")
        entry = {"ours": rounded(child(sys.executable, "ours", name, opts))}
        if torch_python:
            entry["torch"] = rounded(child(torch_python, "torch", name, opts))
            ours, ref = entry["ours"], entry["torch"]
            entry["speedup_vs_torch"] = {
                "cached": round(ours["cached_tokens_per_s"] / ref["cached_tokens_per_s"], 3),
                "uncached": round(ours["uncached_tokens_per_s"] / ref["uncached_tokens_per_s"],
                                  3),
                "ms_per_token_at": {k: round(ref["ms_per_token_at"][k] / v, 3)
                                    for k, v in ours["ms_per_token_at"].items()}}
        results[name] = entry
        print(f"model {name}: " + json.dumps(entry), file=sys.stderr)
    import numba
    out = {"machine": {"cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                       "load_avg": os.getloadavg()[0], "torch_python": torch_python},
           "models": MODELS, "options": {k: v for k, v in opts.items() if k != "only"},
           "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
