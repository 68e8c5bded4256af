"""What long context costs: attention time and peak memory against sequence length for four ways
of attending, and the per-token decode time and cache size of each KV cache at long contexts.

    python examples/long_context_costs.py                  # about 4 minutes on 2 cores
    python examples/long_context_costs.py --quick=true     # about 1 minute: T up to 4k

1. Attention curves, at B = 1, H = n_head (1), D = 64, float32, causal, T from 256 to 16k (quick:
   4k), forward and forward + backward, for
     full     the readable reference (ops/attention.py with tl.use_kernels(False)): it builds
              the (T, T) scores, their probabilities and, in backward, their gradients;
     tiled    the default path of F.scaled_dot_product_attention on the CPU: the Numba kernel
              tiled with an online softmax (Milakov & Gimelshein, 2018; Dao et al., 2022),
              which never holds more than a tile of scores;
     window   the same kernel with a sliding window of 256 keys (Beltagy et al., 2020), which
              skips the tiles outside it;
     linear   F.linear_attention (Katharopoulos et al., 2020), elu + 1 features, chunked.
   Each point runs in a fresh process (`threads` BLAS and Numba threads, default 1), so one
   point's allocations do not hide another's. Time is the best of up to `repeats` runs after a
   small warm-up that compiles or loads the Numba kernels (its first call is reported apart),
   fewer once a point's runs pass point_seconds. Peak memory comes from one more run: ru_maxrss
   after it minus ru_maxrss before it, with the high-water mark restarted there (Linux) and
   glibc made to give every block of 64 KiB or more fresh pages, so that memory reused from an
   earlier run counts (peak_exact says whether both held); Linux counts resident pages in
   batches, so points under RSS_RESOLUTION_MB (1 MB) are left out of the fits. The same run
   also reports array_mb, the peak of the bytes traced by tracemalloc (NumPy's arrays, exact to
   the byte; not BLAS's or Numba's own scratch). Full attention is skipped where its peak,
   extrapolated as T^2 from the last size, would pass max_full_gb.
   Reported: every curve's exponent (the slope on log-log axes, power_law_fit over T >= 1k) and
   the crossovers (the T where one curve passes another, interpolated on log-log axes).
2. Decode: a randomly initialised RoPE GPT (Llama-style, 4 layers, 256 wide, 4 heads) is
   prefilled with 1k, 4k and 16k random tokens (quick: 1k, 4k) through a DecodeSession with each
   cache: dense float32 (the fused decode step), per-token int8, KIVI at 4 and 2 bits (Liu et
   al., 2024), H2O keeping a quarter of the context (Zhang et al., 2023), and sinks (4 sinks +
   a window of sink_window - 4 keys, StreamingLLM, Xiao et al., 2023). Then `decode_steps`
   single-token feeds are timed (median): tokens/s, and the cache's bytes per context token
   (its nbytes over the tokens seen). The dense float cache runs the fused decode step
   (generate/decode_step.py); the others run the model's forward with the cache, so part of
   their gap to dense is that path's per-op overhead, not the cache.

What the figures show: the O(T^2) memory of full attention against the O(T) of the tiled kernel
(its exponent near 1; the window saves time, not memory: both hold only their outputs and
gradients), the T^2 time that both exact forms share (the tiled kernel only saves the
memory traffic) while the window's and linear attention's time grow as T, the T where linear
attention's constant cost per token beats exact attention, and for decoding how the time per
token grows with the context for the caches that hold it all (dense, int8, KIVI, whose unpacking
costs time) and stays flat for sinks. What they do not show: one CPU (by default one thread),
NumPy/BLAS and Numba, one small head of 64 dims at batch 1; a GPU, many heads or a fused
FlashAttention on other hardware move every constant and so every crossover, and exponents
fitted over 1k-16k include the fixed costs still visible at 1k. The decode model is untrained
(timings and sizes only, no quality) and the machine is shared: rerun on a quiet one before
quoting a figure.
"""
import ctypes
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm import kernels
from tinygrad_llm.generate import DecodeSession, cache_nbytes
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.train import OptionError, ScriptError, parse_args, run_main
from tinygrad_llm.train.report import (crossovers, power_law_fit, print_table, save_figure,
                                       write_json)

METHODS = ("full", "tiled", "window", "linear")
MODES = ("forward", "forward+backward")
CACHES = ("dense", "int8", "kivi4", "kivi2", "h2o", "sinks")
METRICS = ("time_ms", "peak_mb", "array_mb")
FIT_FROM = 1024                    # exponents are fitted over T >= this
RSS_RESOLUTION_MB = 1.0            # Linux counts resident pages in batches of up to 256 KiB
SAME_CURVE = 0.02                  # curves within 2 % at every T do not cross: they coincide


@dataclasses.dataclass
class Args:
    quick: bool = False          # T up to 4k, contexts 1k and 4k, fewer decode steps
    out_dir: str = "out-long-context-costs"   # long_context_costs.json and .png
    sizes: str = None            # attention lengths T, comma-separated (none: 256 .. 16384)
    n_head: int = 1              # attention heads (full attention at 16k: ~4.5 GB per head)
    head_dim: int = 64           # D
    window: int = 256            # the sliding window's span in keys
    threads: int = 1             # BLAS and Numba threads in each measuring process
    repeats: int = 3             # timed runs per point at most (the best is kept)
    point_seconds: float = 5.0   # no further run of a point once its runs took this long
    max_full_gb: float = 8.0     # skip full attention where its predicted peak passes this
    contexts: str = None         # decode context lengths (none: 1024,4096,16384)
    decode_steps: int = None     # timed single-token steps per context (none: 32; quick: 16)
    n_layer: int = 4             # the decode model's blocks
    n_embd: int = 256            # its width
    decode_heads: int = 4        # its heads (head_dim n_embd / decode_heads)
    sink_window: int = 1024      # keys a sinks cache holds (4 sinks included)
    prefill_chunk: int = 1024    # tokens per forward while prefilling a cache
    seed: int = 0                # weights and tokens of the decode model


def _ints(name, text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(f"{name}: expected comma-separated ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise OptionError(f"{name}: expected positive ints, got {text!r}")
    return sorted(set(values))


def resolve(args):
    """Fill the defaults that depend on quick, and check the rest."""
    top = 4096 if args.quick else 16384
    sizes = args.sizes or ",".join(str(2 ** i) for i in range(8, 15) if 2 ** i <= top)
    contexts = args.contexts or ("1024,4096" if args.quick else "1024,4096,16384")
    steps = args.decode_steps or (16 if args.quick else 32)
    for name in ("n_head", "head_dim", "window", "threads", "repeats", "n_layer", "n_embd",
                 "decode_heads", "sink_window", "prefill_chunk"):
        if getattr(args, name) < 1:
            raise OptionError(f"{name}: expected an int >= 1, got {getattr(args, name)}")
    if args.sink_window <= 4:
        raise OptionError(f"sink_window: must exceed the 4 sinks, got {args.sink_window}")
    if args.n_embd % args.decode_heads:
        raise OptionError(f"n_embd={args.n_embd} is not divisible by "
                          f"decode_heads={args.decode_heads}")
    if steps < 1:
        raise OptionError(f"decode_steps: expected an int >= 1, got {steps}")
    return dataclasses.replace(args, sizes=_ints("sizes", sizes),
                               contexts=_ints("contexts", contexts), decode_steps=steps)


# ---- one measurement, in a fresh process ------------------------------------------------------
def _peak_rss():
    """The process's high-water resident memory in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _count_reused_memory():
    """From now on give every block of 64 KiB or more its own pages, returned when freed, and
    hand the free pages of the heap back (glibc's mallopt(M_MMAP_MAX, M_MMAP_THRESHOLD) and
    malloc_trim):
    otherwise a run can reuse memory freed by an earlier one without the resident size
    growing. Returns whether it could (False off glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold, m_mmap_max = -3, -4
    # tinygrad_llm turned mmap off at import (M_MMAP_MAX 0); glibc's default maximum is 65536
    if not (libc.mallopt(m_mmap_max, 65536) and libc.mallopt(m_mmap_threshold, 64 * 1024)):
        return False
    libc.malloc_trim(0)
    return True


def _restart_peak():
    """Lower the high-water mark to the memory resident now, where Linux allows it (writing 5 to
    /proc/self/clear_refs), so that the next peak is the run's own and not one left by the
    imports or the warm-up. Returns whether it could; if not, a run's peak shows only where it
    passes the earlier one."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _attention_inputs(T, spec, rng):
    """q, k, v (1, H, T, D) float32 Tensors and, for backward, a random cotangent."""
    shape = (1, spec["n_head"], T, spec["head_dim"])
    grad = spec["mode"] == "forward+backward"
    # drawn as float32: a float64 draw freed after its cast would leave memory that the run
    # could reuse without its resident size growing
    qkv = [tl.Tensor(rng.standard_normal(shape, dtype=np.float32), requires_grad=grad)
           for _ in range(3)]
    dout = rng.standard_normal(shape, dtype=np.float32) if grad else None
    return qkv, dout


def _attend(method, q, k, v, window):
    if method == "full":
        with tl.use_kernels(False):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if method == "tiled":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if method == "window":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, window=window)
    return F.linear_attention(q, k, v, causal=True)


def _run_attention(method, qkv, dout, window):
    """One forward (and backward): the seconds it took."""
    for x in qkv:
        x.grad = None
    start = time.perf_counter()
    out = _attend(method, *qkv, window)
    if dout is not None:
        with tl.use_kernels(method != "full"):
            out.backward(dout)
    return time.perf_counter() - start


def attention_point(spec):
    """Time and peak memory of one (method, mode, T), run where nothing else was allocated."""
    rng = np.random.default_rng(spec["seed"])
    method, T = spec["method"], spec["T"]
    # the warm-up compiles (or loads from Numba's cache) what the run will call
    small, small_dout = _attention_inputs(min(T, 256), spec, rng)
    with kernels.trace() as ran:
        first_call = _run_attention(method, small, small_dout, spec["window"])
    second_call = _run_attention(method, small, small_dout, spec["window"])
    # a curve is only worth its name if the path it names ran (linear attention has no kernel)
    expected = "reference" if method == "full" else "cpu"
    if method != "linear" and (not ran or any(impl != expected for _, impl in ran)):
        raise RuntimeError(f"{method}: expected the {expected} attention, but ran {ran}")
    del small, small_dout
    qkv, dout = _attention_inputs(T, spec, rng)
    times = []
    while not times or (len(times) < spec["repeats"] and sum(times) < spec["point_seconds"]):
        times.append(_run_attention(method, qkv, dout, spec["window"]))
    # one more run for the memory, with glibc made to show reused memory (which costs page
    # faults, so it is not timed); the last run's gradients are freed first
    for x in qkv:
        x.grad = None
    gc.collect()
    exact = _count_reused_memory() and _restart_peak()
    tracemalloc.start()
    arrays = tracemalloc.get_traced_memory()[0]
    base = _peak_rss()
    _run_attention(method, qkv, dout, spec["window"])
    peak = _peak_rss() - base
    arrays = tracemalloc.get_traced_memory()[1] - arrays
    tracemalloc.stop()
    return {"time_s": min(times), "runs": len(times), "peak_mb": max(peak, 0) / 2 ** 20,
            "array_mb": arrays / 2 ** 20,
            "first_call_s": first_call, "warm_call_s": second_call, "peak_exact": exact,
            "implementations": sorted({f"{name}:{impl}" for name, impl in ran})}


CACHE_SETTINGS = {      # name -> (cache_implementation, cache_config without prefill_chunk)
    "dense": (None, {}),
    "int8": (None, {"dtype": "int8"}),
    "kivi4": ("quantized", {"bits": 4}),
    "kivi2": ("quantized", {"bits": 2}),
    "h2o": ("h2o", {}),               # budget: a quarter of the context, half of it recent
    "sinks": ("sinks", {"n_sink": 4}),
}


def _decode_model(spec):
    config = GPTConfig.preset("llama", n_layer=spec["n_layer"], n_embd=spec["n_embd"],
                              n_head=spec["decode_heads"], n_kv_head=spec["decode_heads"],
                              vocab_size=256, block_size=spec["block_size"])
    tl.manual_seed(spec["seed"])
    return GPT(config).eval()


def decode_point(spec):
    """Per-token decode time and cache size of one cache at each context length."""
    model = _decode_model(spec)
    implementation, config = CACHE_SETTINGS[spec["cache"]]
    rng = np.random.default_rng(spec["seed"])
    rows = []
    for context in spec["contexts"]:
        settings = dict(config, prefill_chunk=spec["prefill_chunk"])
        if spec["cache"] == "h2o":
            settings.update(budget=context // 4, recent=context // 8,
                            prefill_chunk=min(spec["prefill_chunk"], context // 4))
        if spec["cache"] == "sinks":
            settings["window"] = spec["sink_window"] - 4
        steps = spec["decode_steps"]
        session = DecodeSession(model, max_len=context + steps + 2, temperature=0,
                                cache_implementation=implementation, cache_config=settings)
        start = time.perf_counter()
        session.feed(rng.integers(0, 256, context))
        prefill = time.perf_counter() - start
        session.feed([1])
        session.feed([2])                           # warm: the step's first call compiles
        times = []
        for token in rng.integers(0, 256, steps):
            start = time.perf_counter()
            session.feed([int(token)])
            times.append(time.perf_counter() - start)
        nbytes = cache_nbytes(session.caches)
        ms = float(np.median(times)) * 1e3
        rows.append({"cache": spec["cache"], "context": context, "ms_per_token": ms,
                     "tokens_per_s": 1e3 / ms, "prefill_s": prefill, "cache_mb": nbytes / 2 ** 20,
                     "bytes_per_token": nbytes / session.length})
    return rows


def _in_fresh_process(function, spec, threads):
    """function(spec) run by a new Python on this file, with `threads` BLAS and Numba threads;
    its JSON result."""
    code = ("import json, runpy, sys; ns = runpy.run_path(sys.argv[1]); "
            "print(json.dumps(ns[sys.argv[2]](json.loads(sys.argv[3]))))")
    env = dict(os.environ, **{k: str(threads) for k in (
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    done = subprocess.run([sys.executable, "-c", code, os.path.abspath(__file__),
                           function.__name__, json.dumps(spec)], env=env, text=True,
                          stdout=subprocess.PIPE)
    if done.returncode:
        raise ScriptError(f"{function.__name__}({spec}) failed with exit status "
                          f"{done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the study ---------------------------------------------------------------------------------
def measure_attention(args):
    """Rows {method, mode, T, time_ms, peak_mb, ...}, full attention skipped past max_full_gb."""
    rows = []
    for mode in MODES:
        for method in METHODS:
            done = []
            for T in args.sizes:
                if method == "full" and done:
                    last = done[-1]
                    predicted_gb = last["peak_mb"] * (T / last["T"]) ** 2 / 1024
                    if predicted_gb > args.max_full_gb:
                        print(f"{method:>6} {mode:>16} T={T:>6}: skipped (predicted peak "
                              f"{predicted_gb:.1f} GB > max_full_gb={args.max_full_gb})")
                        continue
                spec = {"method": method, "mode": mode, "T": T, "n_head": args.n_head,
                        "head_dim": args.head_dim, "window": args.window, "seed": args.seed,
                        "repeats": args.repeats, "point_seconds": args.point_seconds}
                point = _in_fresh_process(attention_point, spec, args.threads)
                row = {"method": method, "mode": mode, "T": T, "time_ms": point["time_s"] * 1e3,
                       "peak_mb": point["peak_mb"], "array_mb": point["array_mb"],
                       "runs": point["runs"],
                       "first_call_ms": point["first_call_s"] * 1e3,
                       "warm_call_ms": point["warm_call_s"] * 1e3,
                       "peak_exact": point["peak_exact"],
                       "implementations": point["implementations"]}
                print(f"{method:>6} {mode:>16} T={T:>6}: {row['time_ms']:10.2f} ms "
                      f"{row['peak_mb']:9.2f} MB resident {row['array_mb']:9.2f} MB arrays",
                      flush=True)
                done.append(row)
            rows += done
    return rows


def _curve(rows, method, mode, key):
    points = [(r["T"], r[key]) for r in rows if r["method"] == method and r["mode"] == mode]
    return [p[0] for p in points], [p[1] for p in points]


def fit_and_cross(rows):
    """Exponents over T >= FIT_FROM (resident memory only where it passes RSS_RESOLUTION_MB)
    and the crossovers of every pair of curves, per metric."""
    exponents, crossings = [], []
    for mode in MODES:
        for key in METRICS:
            floor = RSS_RESOLUTION_MB if key == "peak_mb" else 0.0
            curves = {m: _curve(rows, m, mode, key) for m in METHODS}
            for method, (ts, ys) in curves.items():
                upper = [(t, y) for t, y in zip(ts, ys) if t >= FIT_FROM and y > floor]
                if len(upper) >= 2:
                    b, a = power_law_fit(*zip(*upper))
                    exponents.append({"method": method, "mode": mode, "metric": key,
                                      "exponent": b, "coefficient": a,
                                      "from_T": upper[0][0], "to_T": upper[-1][0]})
            for i, first in enumerate(METHODS):
                for second in METHODS[i + 1:]:
                    a, b = dict(zip(*curves[first])), dict(zip(*curves[second]))
                    common = sorted(t for t in set(a) & set(b) if a[t] > floor and b[t] > floor)
                    if len(common) < 2:
                        continue
                    y1, y2 = [a[t] for t in common], [b[t] for t in common]
                    if np.max(np.abs(np.log(np.divide(y2, y1)))) < SAME_CURVE:
                        continue            # one curve twice (the window's memory = tiled's)
                    for t in crossovers(common, y1, y2):
                        crossings.append({"mode": mode, "metric": key, "a": first,
                                          "b": second, "T": t,
                                          "value": _log_interp(t, common, y1)})
    return exponents, crossings


def _log_interp(t, ts, ys):
    """y at t on the log-log line through the measured points."""
    return float(np.exp(np.interp(np.log(t), np.log(ts), np.log(ys))))


def measure_decode(args):
    rows = []
    spec = {"contexts": args.contexts, "decode_steps": args.decode_steps, "seed": args.seed,
            "n_layer": args.n_layer, "n_embd": args.n_embd, "decode_heads": args.decode_heads,
            # sinks: the cache's slots plus a prefill chunk of new queries must fit the positions
            "block_size": max(max(args.contexts), args.sink_window + args.prefill_chunk)
            + args.decode_steps + 16,
            "prefill_chunk": args.prefill_chunk, "sink_window": args.sink_window}
    for cache in CACHES:
        got = _in_fresh_process(decode_point, dict(spec, cache=cache), args.threads)
        for row in got:
            print(f"{cache:>6} context={row['context']:>6}: {row['ms_per_token']:8.2f} ms/token "
                  f"{row['bytes_per_token']:9.1f} B/token", flush=True)
        rows += got
    for cache in CACHES:
        ts, ys = zip(*[(r["context"], r["ms_per_token"]) for r in rows if r["cache"] == cache])
        exponent = power_law_fit(ts, ys)[0] if len(ts) >= 2 else None
        for r in rows:
            if r["cache"] == cache:
                r["time_exponent"] = exponent
    return rows


def draw(plt, attention, crossings, decode):
    """Time and memory against T per mode (crossovers marked; memory resident, solid, and in
    traced arrays, dashed), then decode time and cache bytes per token against the context."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for col, mode in enumerate(MODES):
        for row, key in enumerate(("time_ms", "peak_mb")):
            ax = axes[row][col]
            for i, (method, marker) in enumerate(zip(METHODS, "osvD")):
                ts, ys = _curve(attention, method, mode, key)
                keep = [(t, y) for t, y in zip(ts, ys) if y > 0]      # log axes: 0 is off them
                if keep:
                    ax.plot(*zip(*keep), marker=marker, color=f"C{i}", label=method, alpha=0.85)
                if key == "peak_mb":
                    ax.plot(*_curve(attention, method, mode, "array_mb"), linestyle="--",
                            color=f"C{i}", alpha=0.6, label=f"{method} (arrays)")
            for c in crossings:
                if c["mode"] == mode and c["metric"] == key:
                    ax.plot(c["T"], c["value"], marker="x", color="black", markersize=9)
                    ax.annotate(f"{c['a']}/{c['b']}\nT={c['T']:.0f}", (c["T"], c["value"]),
                                fontsize=7, xytext=(4, -14), textcoords="offset points")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T (tokens)")
            ax.set_ylabel("time (ms)" if key == "time_ms" else "peak memory (MB)")
            ax.set_title(f"attention {mode}: {'time' if key == 'time_ms' else 'memory'}")
            ax.legend(fontsize=8)
    for row, key in enumerate(("ms_per_token", "bytes_per_token")):
        ax = axes[row][2]
        for cache in CACHES:
            pts = [(r["context"], r[key]) for r in decode if r["cache"] == cache]
            ax.plot(*zip(*pts), marker="o", label=cache)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("ms per token" if row == 0 else "cache bytes per context token")
        ax.set_title("decode: time per token" if row == 0 else "decode: cache size")
        ax.legend(fontsize=8)
    fig.tight_layout()


def main(argv):
    (args,) = parse_args(argv, Args)
    args = resolve(args)
    t0 = time.perf_counter()
    attention = measure_attention(args)
    exponents, crossings = fit_and_cross(attention)
    decode = measure_decode(args)

    print_table([{k: r[k] for k in ("method", "mode", "T", "time_ms", "peak_mb", "array_mb",
                                    "runs")}
                 for r in attention], title="\nattention: best time, peak resident memory "
                                            "and peak traced arrays")
    first = [r for r in attention if r["T"] == args.sizes[0]]
    print_table([{k: r[k] for k in ("method", "mode", "first_call_ms", "warm_call_ms")}
                 for r in first], title=f"\nfirst call (compile or cache load) vs warm, "
                                        f"T={min(args.sizes[0], 256)}")
    print_table(exponents, ["method", "mode", "metric", "exponent", "from_T", "to_T"],
                title=f"\nexponents: slope of log y on log T over T >= {FIT_FROM}")
    print_table(crossings, ["mode", "metric", "a", "b", "T"],
                title="\ncrossovers: T where curve b passes curve a")
    print_table(decode, ["cache", "context", "ms_per_token", "tokens_per_s", "cache_mb",
                         "bytes_per_token", "prefill_s", "time_exponent"],
                title="\ndecode: median time per token after a prefill")

    os.makedirs(args.out_dir, exist_ok=True)
    json_path = write_json(os.path.join(args.out_dir, "long_context_costs.json"), {
        "args": dataclasses.asdict(args), "attention": attention, "exponents": exponents,
        "crossovers": crossings, "decode": decode, "wall_s": time.perf_counter() - t0})
    png = save_figure(os.path.join(args.out_dir, "long_context_costs.png"),
                      lambda plt: draw(plt, attention, crossings, decode))

    def exponent(method, mode, metric):
        found = [e["exponent"] for e in exponents
                 if (e["method"], e["mode"], e["metric"]) == (method, mode, metric)]
        return round(found[0], 3) if found else None

    top = max(args.contexts)
    result = {
        "time_exponent_fwd": {m: exponent(m, "forward", "time_ms") for m in METHODS},
        "memory_exponent_fwd": {m: exponent(m, "forward", "peak_mb") for m in METHODS},
        "array_exponent_fwd": {m: exponent(m, "forward", "array_mb") for m in METHODS},
        "time_exponent_fwd_bwd": {m: exponent(m, "forward+backward", "time_ms")
                                  for m in METHODS},
        "crossovers_time_fwd": [[c["a"], c["b"], round(c["T"])] for c in crossings
                                if c["mode"] == "forward" and c["metric"] == "time_ms"],
        f"decode_tokens_per_s_at_{top}": {r["cache"]: round(r["tokens_per_s"], 1)
                                          for r in decode if r["context"] == top},
        "json": json_path, "png": png, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
