"""Forward + backward throughput of the GPT presets, tinygrad_llm beside PyTorch when installed.

    python bench/bench_model.py                 # gpt2 and llama presets, small and large sizes
    python bench/bench_model.py --sizes=small --repeats=20

Sizes: small = 4 layers, 4 heads, 128 dims, block 64, batch 12; large = 6 layers,
6 heads, 384 dims, block 256, batch 64. Vocabulary 65 (characters). Each measurement alternates
the two frameworks step by step (the machine's noise hits both alike) and reports the median.
Prints one JSON object on the last line.
"""
import json
import os
import sys
import time

import tinygrad_llm as tl  # first: it sets OpenBLAS's thread timeout before NumPy loads
import numpy as np  # noqa: E402

SIZES = {"small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12),
         "large": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=64)}


DEFAULTS = {"sizes": "small,large", "presets": "gpt2,llama", "repeats": 10, "torch": True}


def parse(argv, defaults=DEFAULTS):
    """--key=value options over `defaults`, each converted to its default's type."""
    opts = dict(defaults)
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown option --{key}; valid: {sorted(opts)}")
        opts[key] = type(opts[key])(value) if not isinstance(opts[key], bool) else \
            value.lower() in ("1", "true", "yes")
    return opts


def build(preset, size):
    from tinygrad_llm.models import GPT, GPTConfig
    s = dict(SIZES[size])
    batch = s.pop("batch")
    extra = {"n_kv_head": s["n_head"] // 2} if preset == "llama" else {}
    config = GPTConfig.preset(preset, vocab_size=65, **s, **extra)
    return GPT(config), batch


def step_ours(model, x, y):
    model.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    return loss.item()


def step_torch(model, x, y):
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    return loss.item()


def measure(steps, repeats):
    """Median seconds per call of each function, calls interleaved."""
    for f in steps.values():
        f()
        f()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv):
    opts = parse(argv)
    torch = None
    if opts["torch"]:
        try:
            import torch
            torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count())))
            sys.path.insert(0, os.path.dirname(__file__))
            from torch_reference import TorchGPT
        except ImportError:
            torch = None
    rng = np.random.default_rng(0)
    results = {}
    for size in opts["sizes"].split(","):
        for preset in opts["presets"].split(","):
            tl.manual_seed(0)
            model, batch = build(preset, size)
            t = model.config.block_size
            x = rng.integers(0, 65, (batch, t))
            y = rng.integers(0, 65, (batch, t))
            steps = {"ours": lambda: step_ours(model, x, y)}
            if torch is not None:
                tm = TorchGPT.from_ours(model)
                tx, ty = torch.from_numpy(x), torch.from_numpy(y)
                steps["torch"] = lambda: step_torch(tm, tx, ty)
            sec = measure(steps, opts["repeats"])
            tokens = batch * t
            entry = {k: {"ms": round(v * 1e3, 2), "tokens_per_s": round(tokens / v)}
                     for k, v in sec.items()}
            if "torch" in sec:
                entry["speedup_vs_torch"] = round(sec["torch"] / sec["ours"], 3)
            results[f"{preset}_{size}"] = entry
            print(f"{preset:6s} {size:6s} " + "  ".join(
                f"{k}: {v['ms']:8.2f} ms {v['tokens_per_s']:>8,} tok/s"
                for k, v in entry.items() if isinstance(v, dict)), file=sys.stderr)
    import numba
    out = {"machine": {"cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                       "load_avg": os.getloadavg()[0], "torch": torch.__version__ if torch
                       else None},
           "sizes": SIZES, "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
