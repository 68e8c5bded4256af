"""Training-step throughput (forward, backward, clipping, AdamW) of the main job's model shapes,
tinygrad_llm beside PyTorch eager when installed, and MFU against this machine's measured matmul
peak.

    python bench/bench_train.py                    # configs a and b
    python bench/bench_train.py --configs=a --repeats=30

(a) gpt2 preset, 4 layers, 4 heads, 128 dims, block 64, batch 12, vocabulary 65;
(b) 6 layers, 6 heads, 384 dims, block 256, batch 64. Each framework runs in its own process
(PyTorch's OpenMP workers spin after each op by default, which would tax the other framework's
steps in a shared process), in rounds A B A B; each reports the median step of a round and the
best round is kept. Prints one JSON object on the last line.
"""
import json
import os
import sys
import time

import tinygrad_llm as tl  # first: it sets OpenBLAS's thread timeout before NumPy loads
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_model import SIZES, build, measure, parse  # noqa: E402

CONFIGS = {"a": "small", "b": "large"}


DEFAULTS = {"configs": "a,b", "preset": "gpt2", "repeats": 10, "torch": True, "only": "",
            "rounds": 2}


def flops_per_token(c):
    """Training FLOPs per token: 6 per parameter (the GEMMs forward and backward) plus the
    attention score and value products, 12 L H D T (Kaplan et al., 2020; as nanoGPT counts)."""
    ffn = (3 if c.mlp == "swiglu" else 2) * c.n_embd * c.ffn_hidden
    attn = c.n_embd * (c.n_head + 2 * c.n_kv_head) * c.head_dim + c.n_head * c.head_dim * c.n_embd
    n = c.n_layer * (ffn + attn) + c.n_embd * c.vocab_size
    return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size


def matmul_peak(n=1024, repeats=10):
    """Best float32 GEMM throughput of NumPy's BLAS here, FLOP/s."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def run_one(framework, name, preset, repeats):
    """Median seconds per training step of `framework` ("ours" or "torch") on config `name`."""
    from tinygrad_llm.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
    tl.manual_seed(0)
    model, batch = build(preset, CONFIGS[name])
    t = model.config.block_size
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (batch, t)), rng.integers(0, 65, (batch, t))
    if framework == "ours":
        opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=1e-3, betas=(0.9, 0.99))

        def step():
            _, loss = model(x, y)
            loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    else:
        import torch
        from torch_reference import TorchGPT
        tm = TorchGPT.from_ours(model)
        topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            _, loss = tm(tx, ty)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
            topt.step()
            topt.zero_grad(set_to_none=True)
    return measure({framework: step}, repeats)[framework], model.config, batch * t


def main(argv):
    opts = parse(argv, DEFAULTS)
    if opts["only"]:                          # a child process: one framework, one config
        sec, _, _ = run_one(opts["only"], opts["configs"], opts["preset"], opts["repeats"])
        print(json.dumps({"seconds": sec}))
        return sec
    import subprocess
    frameworks = ["ours"]
    if opts["torch"]:
        try:
            import torch  # noqa: F401
            frameworks.append("torch")
        except ImportError:
            pass
    peak = matmul_peak()
    results = {}
    for name in opts["configs"].split(","):
        best = {}
        for _ in range(opts["rounds"]):
            for fw in frameworks:
                out = subprocess.run(
                    [sys.executable, __file__, f"--only={fw}", f"--configs={name}",
                     f"--preset={opts['preset']}", f"--repeats={opts['repeats']}"],
                    capture_output=True, text=True, check=True).stdout
                sec = json.loads(out.strip().splitlines()[-1])["seconds"]
                best[fw] = min(best.get(fw, sec), sec)
        tl.manual_seed(0)
        model, batch = build(opts["preset"], CONFIGS[name])
        tokens = batch * model.config.block_size
        fpt = flops_per_token(model.config)
        entry = {k: {"ms_per_iter": round(v * 1e3, 2), "tokens_per_s": round(tokens / v),
                     "mfu": round(fpt * tokens / v / peak, 4)} for k, v in best.items()}
        if "torch" in best:
            entry["speedup_vs_torch"] = round(best["torch"] / best["ours"], 3)
        results[name] = entry
        print(f"config {name}: " + "  ".join(
            f"{k}: {v['ms_per_iter']:8.2f} ms {v['tokens_per_s']:>8,} tok/s mfu {v['mfu']:.3f}"
            for k, v in entry.items() if isinstance(v, dict)), file=sys.stderr)
    import numba
    out = {"machine": {"cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                       "load_avg": os.getloadavg()[0], "matmul_peak_gflops": round(peak / 1e9, 1),
                       "torch": "torch" in frameworks},
           "configs": {k: SIZES[v] for k, v in CONFIGS.items()}, "preset": opts["preset"],
           "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
