"""Training-step throughput (forward, backward, clipping, AdamW or Muon) of small and GPT-2-sized
models, tinygrad_llm beside PyTorch eager when installed, and MFU against this machine's measured
matmul peak; on the CPU or a GPU (--device=cuda).

    python bench/bench_train.py                    # configs a and b
    python bench/bench_train.py --configs=a --repeats=30
    python bench/bench_train.py --device=cuda --torch_python=/tmp/torchvenv/bin/python
    python bench/bench_train.py --optimizer=muon   # Muon on the blocks' matrices, AdamW the rest

(a) gpt2 preset, 4 layers, 4 heads, 128 dims, block 64, batch 12, vocabulary 65;
(b) 6 layers, 6 heads, 384 dims, block 256, batch 64;
(c) GPT-2 small: 12 layers, 12 heads, 768 dims, block 1024, batch 8, vocabulary 50257 (the GPU
    goal: at least 0.7x PyTorch eager's tokens/s on an H100); the default on "cuda" is a,c.
Each framework runs in its own process (PyTorch's OpenMP workers spin after each op by default,
which would tax the other framework's steps in a shared process; --isolate=false keeps ours in
this one), in rounds A B A B; each reports the median step of a round and the best round is kept.

On "cuda": the model, the optimizer state and the batch live on the GPU; each timed step ends
with a device synchronisation (PyTorch's with torch.cuda.synchronize(), on torch.cuda with SDPA
attention); "reference" is ours with every fused kernel off (tl.use_kernels(False)), and
kernel_launches_per_step counts this library's CUDA kernels in one step; MFU is against CuPy's
float32 GEMM peak on the device. Prints one JSON object on the last line.

--optimizer=muon: both sides step Muon (optim/muon.py; PyTorch's torch.optim.Muon, where that
PyTorch has it) on the blocks' 2-D weights and AdamW on the rest. The FLOPs then count Muon's
Newton-Schulz products (newton_schulz_flops, 5 steps a matrix) beside the model's 6 per parameter
per token: each config reports flops_per_step and newton_schulz_flops_per_step, and MFU divides
their sum by the step time. The step's other optimizer work (elementwise) is left out, as AdamW's
is.
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
from bench_model import SIZES, build, measure, parse  # noqa: E402

from tinygrad_llm import backend  # noqa: E402

CONFIGS = {"a": "small", "b": "large", "c": "gpt2_small"}
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch=8)
GPT2_VOCAB = 50257

DEFAULTS = {"configs": "", "preset": "gpt2", "repeats": 10, "torch": True, "only": "",
            "rounds": 2, "device": "cpu", "torch_python": "", "reference": "auto",
            "isolate": True, "peak_n": 0, "optimizer": "adamw"}
OPTIMIZERS = ("adamw", "muon")
DEVICE_CONFIGS = {"cpu": "a,b", "cuda": "a,c"}
PEAK_N = {"cpu": 1024, "cuda": 4096}


def build_config(preset, name):
    """(model, batch) of config `name`: a and b as bench_model builds them (vocabulary 65), c as
    GPT-2 small with its vocabulary."""
    if name not in CONFIGS:
        raise SystemExit(f"--configs: unknown config {name!r}; valid: {sorted(CONFIGS)}")
    if name != "c":
        return build(preset, CONFIGS[name])
    from tinygrad_llm.models import GPT, GPTConfig
    s = dict(GPT2_SMALL)
    batch = s.pop("batch")
    extra = {"n_kv_head": s["n_head"] // 2} if preset == "llama" else {}
    return GPT(GPTConfig.preset(preset, vocab_size=GPT2_VOCAB, **s, **extra)), batch


def flops_per_token(c):
    """Training FLOPs per token: 6 per parameter (the GEMMs forward and backward) plus the
    attention score and value products, 12 L H D T (Kaplan et al., 2020; as nanoGPT counts)."""
    ffn = (3 if c.mlp == "swiglu" else 2) * c.n_embd * c.ffn_hidden
    attn = c.n_embd * (c.n_head + 2 * c.n_kv_head) * c.head_dim + c.n_head * c.head_dim * c.n_embd
    n = c.n_layer * (ffn + attn) + c.n_embd * c.vocab_size
    return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size


def matmul_peak(n=1024, repeats=10, device="cpu"):
    """Best float32 GEMM throughput of NumPy's BLAS here (CuPy's cuBLAS on "cuda"), FLOP/s."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a = backend.to_device(a, device)
    sync = devices.synchronizer(device)
    a @ a
    best = min(_timed(lambda: a @ a, sync) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(f, sync=None):
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    f()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def muon_optimizer(model):
    """Muon over muon_param_groups (the blocks' matrices; AdamW for the rest), this bench's
    AdamW settings for the AdamW groups and the learning rate for every group."""
    from tinygrad_llm.optim import Muon, muon_param_groups
    return Muon(muon_param_groups(model, muon_lr=1e-3, adam_lr=1e-3, weight_decay=0.1),
                betas=(0.9, 0.99))


def newton_schulz_flops_per_step(model):
    """Muon's Newton-Schulz FLOPs in one step of `model` (0 under AdamW)."""
    return muon_optimizer(model).flops_per_step()


def _torch_muon(torch, tm):
    """torch.optim.Muon on the blocks' 2-D weights (TorchGPT names them "blocks__..."), AdamW on
    the rest: the split muon_param_groups makes (PyTorch's own Muon scales its update by
    sqrt(max(1, rows / cols)) where ours defaults to 0.2 sqrt(max(rows, cols)): the same FLOPs)."""
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError(f"--optimizer=muon: PyTorch {torch.__version__} has no "
                           "torch.optim.Muon (added in 2.9)")
    matrices = [p for n, p in tm.params.items() if n.startswith("blocks__") and p.ndim == 2]
    rest = [p for n, p in tm.params.items() if not (n.startswith("blocks__") and p.ndim == 2)]
    muon = torch.optim.Muon(matrices, lr=1e-3, weight_decay=0.1)
    adamw = torch.optim.AdamW(rest, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    return muon, adamw


def run_one(framework, name, preset, repeats, device="cpu", optimizer="adamw"):
    """(median seconds per training step, config, tokens per step, launches per step) of
    `framework` ("ours", "reference": ours with the kernels off, or "torch") on config `name`,
    stepping `optimizer` ("adamw" or "muon")."""
    from tinygrad_llm.optim import AdamW, clip_grad_norm_, param_groups_for_weight_decay
    tl.manual_seed(0)
    model, batch = build_config(preset, name)
    t = model.config.block_size
    rng = np.random.default_rng(0)
    vocab = GPT2_VOCAB if name == "c" else 65
    x, y = rng.integers(0, vocab, (batch, t)), rng.integers(0, vocab, (batch, t))
    launches = None
    if framework in ("ours", "reference"):
        sync = devices.synchronizer(device)
        if device != "cpu":
            model.to(device)
            x, y = backend.to_device(x, device), backend.to_device(y, device)
        if optimizer == "muon":
            opt = muon_optimizer(model)
        else:
            opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=1e-3, betas=(0.9, 0.99))

        def step():
            _, loss = model(x, y)
            loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            if sync is not None:            # the step's queued GPU work belongs to its time
                sync()
        switch = tl.use_kernels(False) if framework == "reference" else contextlib.nullcontext()
        with switch:
            sec = measure({framework: step}, repeats)[framework]
            if device != "cpu":
                before = devices.launches(device)
                step()
                launches = devices.launches(device) - before
    else:
        import torch
        from torch_reference import TorchGPT
        dev, sync, _ = devices.torch_setup(device)
        tm = TorchGPT.from_ours(model).to(dev)
        if optimizer == "muon":
            topts = _torch_muon(torch, tm)
        else:
            topts = (torch.optim.AdamW(tm.parameters(), lr=1e-3, betas=(0.9, 0.99),
                                       weight_decay=0.1),)
        tx, ty = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

        def step():
            _, loss = tm(tx, ty)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
            for topt in topts:
                topt.step()
                topt.zero_grad(set_to_none=True)
            if sync is not None:
                sync()
        sec = measure({framework: step}, repeats)[framework]
    return sec, model.config, batch * t, launches


def resolve(opts):
    """Fill the options whose default depends on --device."""
    device = opts["device"]
    opts["configs"] = opts["configs"] or DEVICE_CONFIGS.get(device, DEVICE_CONFIGS["cpu"])
    if opts["reference"] not in ("auto", "true", "false"):
        raise SystemExit(f"--reference: expected auto, true or false, got {opts['reference']!r}")
    opts["reference"] = opts["reference"] == "true" or (opts["reference"] == "auto"
                                                        and device != "cpu")
    opts["peak_n"] = opts["peak_n"] or PEAK_N.get(device, PEAK_N["cpu"])
    if opts["optimizer"] not in OPTIMIZERS:
        raise SystemExit(f"--optimizer: expected one of {OPTIMIZERS}, got {opts['optimizer']!r}")
    return opts


def main(argv):
    opts = resolve(parse(argv, DEFAULTS))
    device = devices.check(opts["device"], ours=opts["only"] != "torch")
    if opts["only"]:                          # a child process: one framework, one config
        sec, _, _, launches = run_one(opts["only"], opts["configs"], opts["preset"],
                                      opts["repeats"], device, opts["optimizer"])
        print(json.dumps({"seconds": sec, "launches": launches}))
        return sec
    frameworks = ["ours"] + (["reference"] if opts["reference"] else [])
    pythons = {fw: sys.executable for fw in frameworks}
    torch_python = devices.torch_interpreter(opts["torch"], opts["torch_python"])
    if torch_python:
        frameworks.append("torch")
        pythons["torch"] = torch_python
    peak = matmul_peak(opts["peak_n"], device=device)
    results = {}
    for name in opts["configs"].split(","):
        best, launches, torch_error = {}, None, None
        for _ in range(opts["rounds"]):
            for fw in frameworks:
                if fw == "torch" and torch_error is not None:
                    continue
                if fw != "torch" and not opts["isolate"]:
                    sec, _, _, n = run_one(fw, name, opts["preset"], opts["repeats"], device,
                                           opts["optimizer"])
                else:
                    try:
                        child = devices.run_child(pythons[fw], __file__, [
                            f"--only={fw}", f"--configs={name}", f"--preset={opts['preset']}",
                            f"--repeats={opts['repeats']}", f"--device={device}",
                            f"--optimizer={opts['optimizer']}"],
                            f"the {fw} run of config {name}")
                    except RuntimeError as e:   # PyTorch's side failing keeps ours: say why
                        if fw != "torch":
                            raise
                        torch_error = devices.last_lines(e)
                        print(f"PyTorch's side failed: {torch_error}", file=sys.stderr)
                        continue
                    sec, n = child["seconds"], child["launches"]
                best[fw] = min(best.get(fw, sec), sec)
                launches = n if fw == "ours" else launches
        tl.manual_seed(0)
        model, batch = build_config(opts["preset"], name)
        tokens = batch * model.config.block_size
        ns_flops = newton_schulz_flops_per_step(model) if opts["optimizer"] == "muon" else 0
        flops = flops_per_token(model.config) * tokens + ns_flops
        entry = {k: {"ms_per_iter": round(v * 1e3, 2), "tokens_per_s": round(tokens / v),
                     "mfu": round(flops / v / peak, 4)} for k, v in best.items()}
        entry.update(flops_per_step=flops, newton_schulz_flops_per_step=ns_flops)
        if launches is not None:
            entry["ours"]["kernel_launches_per_step"] = launches
        if "torch" in best:
            entry["speedup_vs_torch"] = round(best["torch"] / best["ours"], 3)
        if "reference" in best:
            entry["speedup_vs_reference"] = round(best["reference"] / best["ours"], 3)
        if torch_error is not None:
            entry["torch_error"] = torch_error
        results[name] = entry
        print(f"config {name}: " + "  ".join(
            f"{k}: {v['ms_per_iter']:8.2f} ms {v['tokens_per_s']:>8,} tok/s mfu {v['mfu']:.3f}"
            for k, v in entry.items() if isinstance(v, dict)), file=sys.stderr)
    import numba
    out = {"machine": {"cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                       "load_avg": os.getloadavg()[0], "matmul_peak_gflops": round(peak / 1e9, 1),
                       "torch": "torch" in frameworks},
           "device": devices.info(device),
           "configs": {k: (dict(GPT2_SMALL, vocab_size=GPT2_VOCAB) if k == "c" else SIZES[v])
                       for k, v in CONFIGS.items()},
           "preset": opts["preset"], "optimizer": opts["optimizer"], "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
