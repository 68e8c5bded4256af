"""Fused kernels against their NumPy references, forward and backward, in float32.

Sizes: the main job's (B=12, T=64, C=128, H=4) and a larger one (B=16, T=256, C=384, H=6). Each
entry is the best of --repeats runs after a warm-up call (so Numba's compile is not counted; the
first-call compile times are reported separately under "compile_s").

    python bench/bench_ops.py [--repeats=20] [--vocab=65] [--threads=N]

Prints one JSON object on the last line: {"machine": ..., "sizes": {"small": {kernel: {"fwd":
{"kernel_ms", "reference_ms", "speedup"}, "bwd": {...}}}, "large": {...}}, "compile_s": {...}}.
"""
import json
import os
import platform
import sys
import time

import numpy as np

SIZES = {"small": dict(B=12, T=64, C=128, H=4), "large": dict(B=16, T=256, C=384, H=6)}


def parse(argv):
    opts = {"repeats": 20, "vocab": 65, "threads": 0}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown option --{key}; known: {sorted(opts)}")
        opts[key] = int(value)
    return opts


def best_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def cases(size, vocab, rng):
    """kernel family -> (forward call, backward call), each taking the kernel name it dispatches."""
    from tinygrad_llm.ops.activation import gelu_backward, gelu_forward
    from tinygrad_llm.ops.attention import attention_backward, attention_forward
    from tinygrad_llm.ops.embedding import embedding_backward
    from tinygrad_llm.ops.norm import (layer_norm_backward, layer_norm_forward,
                                       rms_norm_backward, rms_norm_forward)
    from tinygrad_llm.ops.softmax import cross_entropy_backward, cross_entropy_forward
    b, t, c, h = size["B"], size["T"], size["C"], size["H"]
    n = b * t
    f32 = np.float32

    def randn(*shape):
        return rng.standard_normal(shape).astype(f32)

    x, w, bias, dy = randn(n, c), randn(c), randn(c), randn(n, c)
    _, mu, r = layer_norm_forward.__wrapped__(x, w, bias, 1e-5)
    _, rr = rms_norm_forward.__wrapped__(x, w, 1e-5)
    logits, targets, dloss = randn(n, vocab), rng.integers(0, vocab, n), np.full(n, 1 / n, f32)
    _, lse = cross_entropy_forward.__wrapped__(logits, targets, -100, 0.0)
    hidden, dhidden = randn(b, t, 4 * c), randn(b, t, 4 * c)
    q, k, v, do = (randn(b, h, t, c // h) for _ in range(4))
    scale = (c // h) ** -0.5
    o, alse = attention_forward.__wrapped__(q, k, v, None, True, scale)
    ids = rng.integers(0, vocab, n)
    return {
        "cross_entropy": (lambda f: f[0](logits, targets, -100, 0.0),
                          lambda f: f[1](dloss, logits, targets, lse, -100, 0.0),
                          (cross_entropy_forward, cross_entropy_backward)),
        "layer_norm": (lambda f: f[0](x, w, bias, 1e-5), lambda f: f[1](dy, x, w, mu, r, True),
                       (layer_norm_forward, layer_norm_backward)),
        "rms_norm": (lambda f: f[0](x, w, 1e-5), lambda f: f[1](dy, x, w, rr),
                     (rms_norm_forward, rms_norm_backward)),
        "gelu_tanh": (lambda f: f[0](hidden, "tanh"), lambda f: f[1](dhidden, hidden, "tanh"),
                      (gelu_forward, gelu_backward)),
        "gelu_erf": (lambda f: f[0](hidden, "none"), lambda f: f[1](dhidden, hidden, "none"),
                     (gelu_forward, gelu_backward)),
        "embedding": (None, lambda f: f[1](dy, ids, vocab), (None, embedding_backward)),
        "attention": (lambda f: f[0](q, k, v, None, True, scale),
                      lambda f: f[1](do, q, k, v, o, alse, None, True, scale),
                      (attention_forward, attention_backward)),
    }


def main(argv):
    opts = parse(argv)
    if opts["threads"]:
        os.environ["NUMBA_NUM_THREADS"] = str(opts["threads"])
        os.environ["OPENBLAS_NUM_THREADS"] = str(opts["threads"])
    import numba

    import tinygrad_llm as tl
    from tinygrad_llm import kernels

    rng = np.random.default_rng(0)
    compile_s = {}
    t0 = time.perf_counter()
    kernels.registered("cpu")                       # imports the kernel modules (no compile yet)
    import_s = time.perf_counter() - t0
    tiny = cases(dict(B=1, T=3, C=8, H=2), 5, rng)
    for family, (fwd, bwd, funcs) in tiny.items():   # first calls: load from cache or compile
        t = time.perf_counter()
        with tl.use_kernels(True):
            if fwd:
                fwd(funcs)
            bwd(funcs)
        compile_s[family] = round(time.perf_counter() - t, 3)

    results = {}
    for label, size in SIZES.items():
        results[label] = {}
        for family, (fwd, bwd, funcs) in cases(size, opts["vocab"], rng).items():
            entry = {}
            for phase, call in (("fwd", fwd), ("bwd", bwd)):
                if call is None:
                    continue
                fast = funcs[0 if phase == "fwd" else 1]
                refs = tuple(f.__wrapped__ if f else None for f in funcs)
                with tl.use_kernels(True):
                    kernel_ms = best_ms(lambda: call(funcs), opts["repeats"])
                    assert kernels.ran(fast.kernel_name) == "cpu", f"{family} {phase}: no fast path"
                reference_ms = best_ms(lambda: call(refs), max(3, opts["repeats"] // 4))
                entry[phase] = {"kernel_ms": round(kernel_ms, 3),
                                "reference_ms": round(reference_ms, 3),
                                "speedup": round(reference_ms / kernel_ms, 2)}
            results[label][family] = entry
            print(f"{label:5s} {family:14s} " + "  ".join(
                f"{p}: {e['kernel_ms']:8.3f} ms vs {e['reference_ms']:8.3f} ms ({e['speedup']:5.1f}x)"
                for p, e in entry.items()), file=sys.stderr)

    machine = {"cpu": _cpu_name(), "numba_threads": numba.get_num_threads(),
               "threading_layer": _threading_layer(numba), "load_avg": os.getloadavg()[0],
               "numpy": np.__version__, "numba": numba.__version__, "vocab": opts["vocab"]}
    print(json.dumps({"machine": machine, "sizes": {k: SIZES[k] for k in SIZES},
                      "results": results, "kernel_import_s": round(import_s, 3),
                      "first_call_s": compile_s}))


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _threading_layer(numba):
    try:
        return numba.threading_layer()
    except ValueError:          # no parallel function has run yet
        return None


if __name__ == "__main__":
    main(sys.argv[1:])
