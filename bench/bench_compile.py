"""First-call cost of the Numba kernels: cold (empty cache, so Numba compiles) and warm (loaded
from the on-disk cache), each measured in a fresh process, plus `import tinygrad_llm` time.

    python bench/bench_compile.py

Prints one JSON object: {"import_s", "cold_s": {family: s}, "warm_s": {family: s}, "cold_total_s",
"warm_total_s"}. The cold run uses a temporary NUMBA_CACHE_DIR, so your own cache is untouched.
"""
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
t = time.perf_counter()
import tinygrad_llm as tl
import_s = time.perf_counter() - t
import numpy as np
import tinygrad_llm.nn.functional as F
from tinygrad_llm import kernels

def leaf(*shape, dtype):
    return tl.Tensor(np.random.default_rng(0).standard_normal(shape).astype(dtype),
                     requires_grad=True)

out = {}
t = time.perf_counter()
kernels.registered("cpu")
out["load_kernel_modules"] = time.perf_counter() - t
for dtype in (np.float32, np.float64):
    name = np.dtype(dtype).name
    steps = {
        "cross_entropy": lambda: F.cross_entropy(leaf(4, 5, dtype=dtype), np.arange(4) % 5),
        "layer_norm": lambda: F.layer_norm(leaf(4, 5, dtype=dtype), leaf(5, dtype=dtype),
                                           leaf(5, dtype=dtype)),
        "rms_norm": lambda: F.rms_norm(leaf(4, 5, dtype=dtype), leaf(5, dtype=dtype)),
        "gelu": lambda: F.gelu(leaf(4, 5, dtype=dtype), approximate="tanh")
                        + F.gelu(leaf(4, 5, dtype=dtype)),
        "embedding": lambda: F.embedding(np.arange(4), leaf(5, 3, dtype=dtype)),
        "attention": lambda: F.scaled_dot_product_attention(
            leaf(1, 2, 3, 4, dtype=dtype), leaf(1, 2, 3, 4, dtype=dtype),
            leaf(1, 2, 3, 4, dtype=dtype), is_causal=True),
    }
    for family, step in steps.items():
        t = time.perf_counter()
        y = step()
        y.backward(np.ones(y.shape, dtype))
        out[f"{family}_{name}"] = time.perf_counter() - t
from tinygrad_llm.tokenizers import BPETokenizer
t = time.perf_counter()
BPETokenizer.train("to be or not to be " * 3, vocab_size=260)
out["bpe_train"] = time.perf_counter() - t
print(json.dumps({"import_s": import_s, "first_call_s": out}))
"""


def run(env):
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = run(env)
        warm = run(env)
    rounded = {k: round(v, 3) for k, v in cold["first_call_s"].items()}
    warm_rounded = {k: round(v, 3) for k, v in warm["first_call_s"].items()}
    print(json.dumps({"import_s": round(warm["import_s"], 3),
                      "cold_total_s": round(sum(rounded.values()), 2),
                      "warm_total_s": round(sum(warm_rounded.values()), 2),
                      "cold_s": rounded, "warm_s": warm_rounded}))


if __name__ == "__main__":
    main()
