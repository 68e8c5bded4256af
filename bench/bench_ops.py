"""Fused kernels against their NumPy references, forward and backward, in float32.

Sizes: the main job's (B=12, T=64, C=128, H=4) and a larger one (B=16, T=256, C=384, H=6). Each
entry is the best of --repeats runs after a warm-up call, kernel and reference alternated so that
both see the same machine state (Numba's compile is not counted; first calls, which load the
compiled code from Numba's cache, are reported under "first_call_s").

    python bench/bench_ops.py [--repeats=20] [--vocab=65,1024] [--kernels=attention,layer_norm]

For a one-thread figure: NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_ops.py

Cross-entropy is timed at each listed vocabulary size (65: the char-level main job; 1024: a small
BPE vocabulary), as cross_entropy_v<V>.

Prints one JSON object on the last line: {"machine": ..., "sizes": ..., "results": {"small":
{kernel: {"fwd": {"kernel_ms", "reference_ms", "speedup"}, "bwd": {...}}}, "large": {...}},
"first_call_s": {...}}.
"""
import json
import os
import platform
import sys
import time

import tinygrad_llm as tl  # first: it sets OpenBLAS's thread timeout before NumPy loads
import numpy as np  # noqa: E402

SIZES = {"small": dict(B=12, T=64, C=128, H=4), "large": dict(B=16, T=256, C=384, H=6)}


def parse(argv):
    opts = {"repeats": 20, "vocab": [65, 1024], "kernels": None}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown option --{key}; known: {sorted(opts)}")
        opts[key] = ([int(v) for v in value.split(",")] if key == "vocab" else
                     value.split(",") if key == "kernels" else int(value))
    return opts


def best_ms_pair(fast, reference, repeats):
    """Best times of two calls, alternated (A B A B ...) so both see the same machine state."""
    fast()
    reference()
    fast_times, reference_times = [], []
    for _ in range(repeats):
        for fn, times in ((fast, fast_times), (reference, reference_times)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return 1e3 * min(fast_times), 1e3 * min(reference_times)


def cases(size, vocabs, rng):
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
    vocab = vocabs[0]
    hidden, dhidden = randn(b, t, 4 * c), randn(b, t, 4 * c)
    q, k, v, do = (randn(b, h, t, c // h) for _ in range(4))
    scale = (c // h) ** -0.5
    o, alse = attention_forward.__wrapped__(q, k, v, None, True, scale, 0)
    ids = rng.integers(0, vocab, n)
    table = {}
    for n_vocab in vocabs:
        logits, targets = randn(n, n_vocab), rng.integers(0, n_vocab, n)
        dloss = np.full(n, 1 / n, f32)
        _, lse = cross_entropy_forward.__wrapped__(logits, targets, -100, 0.0)
        table[f"cross_entropy_v{n_vocab}"] = (
            lambda f, logits=logits, targets=targets: f[0](logits, targets, -100, 0.0),
            lambda f, a=(dloss, logits, targets, lse): f[1](*a, -100, 0.0),
            (cross_entropy_forward, cross_entropy_backward))
    return table | {
        "layer_norm": (lambda f: f[0](x, w, bias, 1e-5), lambda f: f[1](dy, x, w, mu, r, True),
                       (layer_norm_forward, layer_norm_backward)),
        "rms_norm": (lambda f: f[0](x, w, 1e-5), lambda f: f[1](dy, x, w, rr),
                     (rms_norm_forward, rms_norm_backward)),
        "gelu_tanh": (lambda f: f[0](hidden, "tanh"), lambda f: f[1](dhidden, hidden, "tanh"),
                      (gelu_forward, gelu_backward)),
        "gelu_erf": (lambda f: f[0](hidden, "none"), lambda f: f[1](dhidden, hidden, "none"),
                     (gelu_forward, gelu_backward)),
        "embedding": (None, lambda f: f[1](dy, ids, vocab), (None, embedding_backward)),
        "attention": (lambda f: f[0](q, k, v, None, True, scale, 0),
                      lambda f: f[1](do, q, k, v, o, alse, None, True, scale, 0),
                      (attention_forward, attention_backward)),
    }


def main(argv):
    opts = parse(argv)
    import numba

    from tinygrad_llm import kernels

    rng = np.random.default_rng(0)
    compile_s = {}
    t0 = time.perf_counter()
    kernels.registered("cpu")                       # imports the kernel modules (no compile yet)
    import_s = time.perf_counter() - t0
    known = set(cases(dict(B=1, T=3, C=8, H=2), opts["vocab"], rng))
    unknown = set(opts["kernels"] or ()) - known
    if unknown:
        raise SystemExit(f"--kernels: unknown {sorted(unknown)}; known: {sorted(known)}")
    tiny = cases(dict(B=1, T=3, C=8, H=2), [5], rng)
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
            if opts["kernels"] and family not in opts["kernels"]:
                continue
            entry = {}
            for phase, call in (("fwd", fwd), ("bwd", bwd)):
                if call is None:
                    continue
                fast = funcs[0 if phase == "fwd" else 1]
                refs = tuple(f.__wrapped__ if f else None for f in funcs)

                def run_fast():
                    with tl.use_kernels(True):
                        call(funcs)
                kernel_ms, reference_ms = best_ms_pair(run_fast, lambda: call(refs),
                                                       opts["repeats"])
                with tl.use_kernels(True):
                    call(funcs)
                assert kernels.ran(fast.kernel_name) == "cpu", f"{family} {phase}: no fast path"
                entry[phase] = {"kernel_ms": round(kernel_ms, 3),
                                "reference_ms": round(reference_ms, 3),
                                "speedup": round(reference_ms / kernel_ms, 2)}
            results[label][family] = entry
            print(f"{label:5s} {family:20s} " + "  ".join(
                f"{p}: {e['kernel_ms']:8.3f} ms vs {e['reference_ms']:8.3f} ms "
                f"({e['speedup']:5.1f}x)"
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
