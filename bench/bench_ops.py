"""Fused kernels against their readable references, forward and backward, in float32, on the CPU
(Numba against NumPy) or a GPU (CUDA against CuPy), and beside PyTorch eager on the same device.

Sizes: small (B=12, T=64, C=128, H=4: bench_train's config a) and large (B=16, T=256, C=384, H=6);
"tiny" (B=1, T=5, C=8, H=2) is a smoke test. Each entry is the best of --repeats runs after a
warm-up call, kernel and reference alternated so that both see the same machine state (Numba's
compile is not counted; first calls, which load the compiled code from Numba's cache or compile
it, are reported under "first_call_s").

    python bench/bench_ops.py [--repeats=20] [--vocab=65,1024] [--kernels=attention,layer_norm]
    python bench/bench_ops.py --device=cuda [--torch_python=/tmp/torchvenv/bin/python]

For a one-thread figure: NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_ops.py

Cross-entropy is timed at each listed vocabulary size (65: the char-level main job; 1024: a small
BPE vocabulary; on "cuda" 65 and GPT-2's 50257 by default), as cross_entropy_v<V>. On "cuda" the
families with only a CUDA kernel (swiglu, rope) are timed too, each sample is --calls
back-to-back calls (default 10) between two device synchronisations, divided by --calls, and each
entry gives "kernel_launches", the launches of one fast call. PyTorch's side (same shapes and
dtype, its own random values; the backward is torch.autograd.grad through the op) runs in its own
process: under --torch_python, or this interpreter on "cuda" when torch imports here (--torch=
auto; true or false force it on or off).

Prints one JSON object on the last line: {"machine": ..., "device": {"device", "name"}, "sizes":
..., "results": {"small": {kernel: {"fwd": {"kernel_ms", "reference_ms", "speedup"[, "torch_ms",
"vs_torch"][, "kernel_launches"]}, "bwd": {...}}}, "large": {...}}, "first_call_s": {...}}.
speedup = reference / kernel, vs_torch = torch / kernel (> 1: ours is faster).
"""
import json
import os
import sys
import time

import tinygrad_llm as tl  # first: it sets OpenBLAS's thread timeout before NumPy loads
import numpy as np  # noqa: E402

from tinygrad_llm import backend  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import devices  # noqa: E402

SIZES = {"small": dict(B=12, T=64, C=128, H=4), "large": dict(B=16, T=256, C=384, H=6),
         "tiny": dict(B=1, T=5, C=8, H=2)}
VOCAB = {"cpu": [65, 1024], "cuda": [65, 50257]}
CALLS = {"cpu": 1, "cuda": 10}
LISTS = {"vocab": int, "kernels": str, "sizes": str}


def parse(argv):
    opts = {"repeats": 20, "vocab": None, "kernels": None, "sizes": ["small", "large"],
            "device": "cpu", "calls": 0, "torch": "auto", "torch_python": "", "only": ""}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown option --{key}; known: {sorted(opts)}")
        opts[key] = ([LISTS[key](v) for v in value.split(",")] if key in LISTS else
                     int(value) if key in ("repeats", "calls") else value)
    unknown = set(opts["sizes"]) - set(SIZES)
    if unknown:
        raise SystemExit(f"--sizes: unknown {sorted(unknown)}; known: {sorted(SIZES)}")
    if opts["torch"] not in ("auto", "true", "false"):
        raise SystemExit(f"--torch: expected auto, true or false, got {opts['torch']!r}")
    opts["vocab"] = opts["vocab"] or VOCAB.get(opts["device"], VOCAB["cpu"])
    opts["calls"] = opts["calls"] or CALLS.get(opts["device"], 1)
    return opts


def best_ms(fn, repeats, sync=None, calls=1):
    """Best time of fn() in ms. With `sync` (a GPU), each sample is `calls` back-to-back calls
    between two synchronisations, divided by `calls`: a call returns once its launches are
    queued, and one small op alone would time mostly the synchronisation."""
    if sync is None:
        return min(_timed(fn) for _ in range(repeats)) * 1e3
    return min(_timed_on_device(fn, sync, calls) for _ in range(repeats)) * 1e3


def best_ms_pair(fast, reference, repeats, sync=None, calls=1):
    """Best times of two calls, alternated (A B A B ...) so both see the same machine state."""
    fast()
    reference()
    fast_times, reference_times = [], []
    for _ in range(repeats):
        for fn, times in ((fast, fast_times), (reference, reference_times)):
            if sync is None:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            else:
                times.append(_timed_on_device(fn, sync, calls))
    return 1e3 * min(fast_times), 1e3 * min(reference_times)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _timed_on_device(fn, sync, calls):
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) / calls


def cases(size, vocabs, rng, device="cpu"):
    """kernel family -> (forward call, backward call, (forward, backward) kernels): the calls
    take the pair of functions to run (the dispatching kernels or their references). Only the
    families with a fast version on `device` are listed; arrays are made on the host from `rng`
    and moved to `device`."""
    from tinygrad_llm import kernels
    from tinygrad_llm.ops.activation import gelu_backward, gelu_forward
    from tinygrad_llm.ops.attention import attention_backward, attention_forward
    from tinygrad_llm.ops.embedding import embedding_backward
    from tinygrad_llm.ops.norm import (layer_norm_backward, layer_norm_forward,
                                       rms_norm_backward, rms_norm_forward)
    from tinygrad_llm.ops.softmax import cross_entropy_backward, cross_entropy_forward
    b, t, c, h = size["B"], size["T"], size["C"], size["H"]
    n = b * t
    f32 = np.float32

    def put(a):
        return backend.to_device(a, device)

    def randn(*shape):
        return put(rng.standard_normal(shape).astype(f32))

    x, w, bias, dy = randn(n, c), randn(c), randn(c), randn(n, c)
    _, mu, r = layer_norm_forward.__wrapped__(x, w, bias, 1e-5)
    _, rr = rms_norm_forward.__wrapped__(x, w, 1e-5)
    vocab = vocabs[0]
    hidden, dhidden = randn(b, t, 4 * c), randn(b, t, 4 * c)
    q, k, v, do = (randn(b, h, t, c // h) for _ in range(4))
    scale = (c // h) ** -0.5
    o, alse = attention_forward.__wrapped__(q, k, v, None, True, scale, 0)
    ids = put(rng.integers(0, vocab, n))
    table = {}
    for n_vocab in vocabs:
        logits, targets = randn(n, n_vocab), put(rng.integers(0, n_vocab, n))
        dloss = put(np.full(n, 1 / n, f32))
        _, lse = cross_entropy_forward.__wrapped__(logits, targets, -100, 0.0)
        table[f"cross_entropy_v{n_vocab}"] = (
            lambda f, logits=logits, targets=targets: f[0](logits, targets, -100, 0.0),
            lambda f, a=(dloss, logits, targets, lse): f[1](*a, -100, 0.0),
            (cross_entropy_forward, cross_entropy_backward))
    table |= {
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
    fast = set(kernels.registered(device))
    if {"swiglu_forward", "rope_forward"} <= fast:     # CUDA-only families (drawn only then)
        table |= _cuda_only_cases(b, t, c, h, randn, put)
    return {family: entry for family, entry in table.items()
            if all(f.kernel_name in fast for f in entry[2] if f is not None)}


def _cuda_only_cases(b, t, c, h, randn, put):
    from tinygrad_llm.ops.activation import swiglu_backward, swiglu_forward
    from tinygrad_llm.ops.rope import rope_backward, rope_forward
    gate, up, dgate = randn(b, t, 4 * c), randn(b, t, 4 * c), randn(b, t, 4 * c)
    d = c // h
    xq, dq = randn(b, h, t, d), randn(b, h, t, d)
    angle = np.outer(np.arange(t), 10000.0 ** (-np.arange(0, d, 2) / d))
    angle = np.concatenate([angle, angle], axis=1)                    # (T, D), both halves
    cos, sin = put(np.cos(angle).astype(np.float32)), put(np.sin(angle).astype(np.float32))
    return {"swiglu": (lambda f: f[0](gate, up), lambda f: f[1](dgate, gate, up),
                       (swiglu_forward, swiglu_backward)),
            "rope": (lambda f: f[0](xq, cos, sin), lambda f: f[1](dq, cos, sin),
                     (rope_forward, rope_backward))}


def main(argv):
    opts = parse(argv)
    device = devices.check(opts["device"], ours=opts["only"] != "torch")
    if opts["only"] == "torch":                 # a child process: PyTorch's side
        out = torch_results(opts)
        print(json.dumps(out))
        return out
    import numba

    from tinygrad_llm import kernels

    sync, calls = devices.synchronizer(device), opts["calls"]
    rng = np.random.default_rng(0)
    compile_s = {}
    t0 = time.perf_counter()
    kernels.registered(device)                      # imports the kernel modules (no compile yet)
    import_s = time.perf_counter() - t0
    known = set(cases(dict(B=1, T=3, C=8, H=2), opts["vocab"], rng, device))
    unknown = set(opts["kernels"] or ()) - known
    if unknown:
        raise SystemExit(f"--kernels: unknown {sorted(unknown)}; known: {sorted(known)}")
    tiny = cases(dict(B=1, T=3, C=8, H=2), [5], rng, device)
    for family, (fwd, bwd, funcs) in tiny.items():   # first calls: load from cache or compile
        if not _selected(family, opts["kernels"]):
            continue
        t = time.perf_counter()
        with tl.use_kernels(True):
            if fwd:
                fwd(funcs)
            bwd(funcs)
        if sync is not None:
            sync()
        compile_s[family] = round(time.perf_counter() - t, 3)

    results = {}
    for label in opts["sizes"]:
        results[label] = {}
        for family, (fwd, bwd, funcs) in cases(SIZES[label], opts["vocab"], rng, device).items():
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
                                                       opts["repeats"], sync, calls)
                before = devices.launches(device)
                with tl.use_kernels(True):
                    call(funcs)
                assert kernels.ran(fast.kernel_name) == device, f"{family} {phase}: no fast path"
                entry[phase] = {"kernel_ms": round(kernel_ms, 3),
                                "reference_ms": round(reference_ms, 3),
                                "speedup": round(reference_ms / kernel_ms, 2)}
                if device != "cpu":
                    entry[phase]["kernel_launches"] = devices.launches(device) - before
            results[label][family] = entry
            print(f"{label:5s} {family:20s} " + "  ".join(
                f"{p}: {e['kernel_ms']:8.3f} ms vs {e['reference_ms']:8.3f} ms "
                f"({e['speedup']:5.1f}x)"
                for p, e in entry.items()), file=sys.stderr)

    torch_facts, torch_error = None, None
    use_torch = opts["torch"] == "true" or (opts["torch"] == "auto" and (
        bool(opts["torch_python"]) or device != "cpu"))
    python = devices.torch_interpreter(use_torch, opts["torch_python"])
    families = sorted({f for entries in results.values() for f in entries})
    side = {"results": {}}
    if python and families:
        try:
            side = devices.run_child(python, __file__, [
                "--only=torch", f"--device={device}", f"--sizes={','.join(opts['sizes'])}",
                f"--vocab={','.join(map(str, opts['vocab']))}", f"--kernels={','.join(families)}",
                f"--repeats={opts['repeats']}", f"--calls={calls}"], "the PyTorch run")
            torch_facts = side["torch"]
        except RuntimeError as e:           # PyTorch's side failing keeps ours: say why
            torch_error = devices.last_lines(e)
            print(f"PyTorch's side failed: {torch_error}", file=sys.stderr)
    if side["results"]:
        for label, entries in side["results"].items():
            for family, phases in entries.items():
                for phase, torch_ms in phases.items():
                    e = results[label][family][phase]
                    e["torch_ms"] = torch_ms
                    e["vs_torch"] = round(torch_ms / e["kernel_ms"], 2)
                print(f"{label:5s} {family:20s} PyTorch " + "  ".join(
                    f"{p}: {ms:8.3f} ms" for p, ms in phases.items()), file=sys.stderr)

    machine = {"cpu": devices.cpu_name(), "numba_threads": numba.get_num_threads(),
               "threading_layer": _threading_layer(numba), "load_avg": os.getloadavg()[0],
               "numpy": np.__version__, "numba": numba.__version__, "vocab": opts["vocab"]}
    out = {"machine": machine, "device": devices.info(device),
           "sizes": {k: SIZES[k] for k in opts["sizes"]}, "results": results,
           "kernel_import_s": round(import_s, 3), "first_call_s": compile_s}
    if device != "cpu":
        out["calls_per_sample"] = calls
    if torch_facts is not None:
        out["torch"] = torch_facts
    if torch_error is not None:
        out["torch_error"] = torch_error
    print(json.dumps(out))
    return out


def _selected(family, chosen):
    """Whether --kernels chose `family` (the first calls name cross-entropy by a tiny vocab)."""
    if not chosen:
        return True
    if family.startswith("cross_entropy_v"):
        return any(k.startswith("cross_entropy_v") for k in chosen)
    return family in chosen


# ---- PyTorch's side (a child process, possibly another interpreter) --------------------------
def torch_cases(size, vocabs, dev):
    """family -> a builder of (forward call or None, backward call) in PyTorch on `dev`, the same
    shapes as cases(); built lazily, so only the families asked for hold memory."""
    import torch
    import torch.nn.functional as TF
    b, t, c, h = size["B"], size["T"], size["C"], size["H"]
    n, d = b * t, c // h
    g = torch.Generator().manual_seed(0)

    def randn(*shape, grad=False):
        return torch.randn(*shape, generator=g).to(dev).requires_grad_(grad)

    def ints(high, n):
        return torch.randint(0, high, (n,), generator=g).to(dev)

    def pair(forward, inputs, dy):
        """(forward without a graph, backward through one graph kept for repeated calls)."""
        out = forward()

        def fwd():
            with torch.no_grad():
                forward()
        return fwd, lambda: torch.autograd.grad(out, inputs, dy, retain_graph=True)

    def norm(kind):
        x, w, bias, dy = randn(n, c, grad=True), randn(c, grad=True), randn(c, grad=True), \
            randn(n, c)
        if kind == "layer_norm":
            return pair(lambda: TF.layer_norm(x, (c,), w, bias, 1e-5), (x, w, bias), dy)
        return pair(lambda: TF.rms_norm(x, (c,), w, 1e-5), (x, w), dy)

    def gelu(approximate):
        hidden, dhidden = randn(b, t, 4 * c, grad=True), randn(b, t, 4 * c)
        return pair(lambda: TF.gelu(hidden, approximate=approximate), (hidden,), dhidden)

    def embedding():
        weight, ids, dy = randn(vocabs[0], c, grad=True), ints(vocabs[0], n), randn(n, c)
        return None, pair(lambda: TF.embedding(ids, weight), (weight,), dy)[1]

    def attention():
        q, k, v = (randn(b, h, t, d, grad=True) for _ in range(3))
        return pair(lambda: TF.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                            scale=d ** -0.5),
                    (q, k, v), randn(b, h, t, d))

    def cross_entropy(n_vocab):
        logits, targets = randn(n, n_vocab, grad=True), ints(n_vocab, n)
        return pair(lambda: TF.cross_entropy(logits, targets), (logits,), None)

    def swiglu():
        gate, up = randn(b, t, 4 * c, grad=True), randn(b, t, 4 * c, grad=True)
        return pair(lambda: TF.silu(gate) * up, (gate, up), randn(b, t, 4 * c))

    def rope():
        x = randn(b, h, t, d, grad=True)
        angle = torch.outer(torch.arange(t, dtype=torch.float64),
                            10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d))
        angle = torch.cat([angle, angle], dim=1)
        cos, sin = angle.cos().float().to(dev), angle.sin().float().to(dev)
        return pair(lambda: x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin,
                    (x,), randn(b, h, t, d))

    table = {f"cross_entropy_v{v}": (lambda v=v: cross_entropy(v)) for v in vocabs}
    return table | {"layer_norm": lambda: norm("layer_norm"), "rms_norm": lambda: norm("rms"),
                    "gelu_tanh": lambda: gelu("tanh"), "gelu_erf": lambda: gelu("none"),
                    "embedding": embedding, "attention": attention, "swiglu": swiglu,
                    "rope": rope}


def torch_results(opts):
    """{"torch": facts, "results": {size: {family: {phase: ms}}}} for --kernels on --device."""
    dev, sync, facts = devices.torch_setup(opts["device"])
    results = {}
    for label in opts["sizes"]:
        built = torch_cases(SIZES[label], opts["vocab"], dev)
        results[label] = {}
        for family in opts["kernels"] or sorted(built):
            entry = {}
            for phase, call in zip(("fwd", "bwd"), built[family]()):
                if call is not None:
                    call()                                       # warm-up
                    entry[phase] = round(best_ms(call, opts["repeats"], sync, opts["calls"]), 3)
            results[label][family] = entry
    return {"torch": facts, "results": results}


def _threading_layer(numba):
    try:
        return numba.threading_layer()
    except ValueError:          # no parallel function has run yet
        return None


if __name__ == "__main__":
    main(sys.argv[1:])
