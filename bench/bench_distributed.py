"""Data-parallel training on one machine: step time at 1 and 2 ranks (strong and weak scaling),
the optimizer state each rank keeps with and without ZeRO-1, the allreduce's latency and
bandwidth fitted as t = alpha + n beta, and a projection of the efficiency at 8, 64 and 512 ranks.

    python bench/bench_distributed.py                      # ranks 1,2, config a
    python bench/bench_distributed.py --quick              # a smoke run: seconds
    python bench/bench_distributed.py --config=b --steps=10 --out=dist.json

The script is its own launcher: for each rank count k it runs `mpiexec -n k` on itself with
--worker=step (Trainer.train_step with ddp=True) and, for k >= 2, --worker=allreduce; each worker
has one thread (NUMBA, OpenMP, OpenBLAS, MKL), so 1 and 2 ranks on 2 cores are comparable.
Config a: 4 layers, 4 heads, 128 dims, block 64, batch 12, vocabulary 65 (bench_train's a);
b: 6 layers, 6 heads, 384 dims, block 256, batch 64 (slow here). Random tokens, plain AdamW.

step: `steps` timed steps after `warmup` (Numba compiles), each after a barrier; rank 0's
median and min. strong: the global batch stays `batch` (each rank gets batch / k rows);
weak: it is batch * k (each rank keeps `batch` rows). Efficiency 1 -> 2 ranks: strong t1 / (2 t2),
weak t1 / t2. Bytes per rank of parameters, gradients and AdamW's state (plain DDP and ZeRO-1).
allreduce: float32 buffers from 1 KiB to `sizes` bytes (x4), each an allreduce started and
waited for after a barrier, the median of many repetitions (fewer for large buffers); the fit
minimises the relative residuals (weights 1/t), so the small sizes pin alpha.
projection (project_step): compute from the FLOP/s one rank achieved here, gradient buckets of
25 MiB reduced one after another while backward runs; once with the measured alpha and beta and
once with an assumed 100 Gb/s InfiniBand link (alpha 5 us, 12.5 GB/s); then all of it again
at an assumed GPU-class 4e14 FLOP/s per rank (projection_gpu), since at this CPU's rate the
compute hides any link.

What the figures show: this library's overhead for data parallelism (bucketing, copies, the
collectives MPI runs through shared memory) and how much of it backward hides at 2 ranks.
What they do not show: a network (one machine's shared memory is not one; the measured alpha and
beta describe memory copies, hence the assumed link beside them); clean scaling (2 ranks on 2
cores share the memory bandwidth and the other processes' load); at scale, stragglers, the
optimizer's own time, the network's topology and contention, and a GPU's FLOP/s (the projection
uses this CPU's, measured on the small config, for the larger ones too).
"""
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from tinygrad_llm.distributed import DistributedError
from tinygrad_llm.train import OptionError, ScriptError, parse_args, run_main

CONFIGS = {"a": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12),
           "b": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=64)}
VOCAB = 65
PROJECTED = {"6L/384d": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256,
                              vocab_size=65), 64),          # (model, sequences per rank)
             "GPT-2 small": (dict(n_layer=12, n_head=12, n_embd=768, block_size=1024,
                                  vocab_size=50257), 8)}
PROJECTED_RANKS = (8, 64, 512)
BUCKET_BYTES = 25 * 2 ** 20
ASSUMED_LINK = {"alpha_l_s": 5e-6, "beta_l_s_per_byte": 1 / 12.5e9}   # 100 Gb/s InfiniBand
# a GPU-class rank for the second projection: an H100 at ~40% of its ~990 TFLOP/s bf16 peak
ASSUMED_GPU_FLOPS = 4e14
ONE_THREAD = {k: "1" for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "MKL_NUM_THREADS")}


@dataclasses.dataclass
class Options:
    ranks: str = "1,2"                # rank counts to launch, comma-separated
    config: str = "a"                 # "a" (4L/128d, block 64, batch 12) or "b" (6L/384d, 256, 64)
    steps: int = 20                   # timed training steps per mode
    warmup: int = 3                   # untimed steps first (Numba compiles)
    sizes: int = 64 * 2 ** 20         # the largest allreduce, bytes (from 1 KiB, x4 each)
    quick: bool = False               # smoke run: 3 steps, 1 warmup, allreduces up to 64 KiB
    out: str = ""                     # also write the JSON object to this file
    worker: str = ""                  # internal: "step" or "allreduce", one rank of an mpiexec


def resolve(opts):
    if opts.config not in CONFIGS:
        raise OptionError(f"--config: expected one of {sorted(CONFIGS)}, got {opts.config!r}")
    if opts.worker not in ("", "step", "allreduce"):
        raise OptionError(f"--worker: expected step or allreduce, got {opts.worker!r}")
    try:
        opts.ranks = sorted({int(k) for k in str(opts.ranks).split(",")})
    except ValueError:
        raise OptionError(f"--ranks: expected comma-separated integers, got {opts.ranks!r}")
    if opts.ranks[0] < 1 or opts.steps < 1 or opts.warmup < 0 or opts.sizes < 1024:
        raise OptionError("--ranks, --steps >= 1, --warmup >= 0 and --sizes >= 1024, got "
                          f"{opts.ranks}, {opts.steps}, {opts.warmup}, {opts.sizes}")
    if opts.quick:
        opts.steps, opts.warmup, opts.sizes = min(opts.steps, 3), 1, min(opts.sizes, 2 ** 16)
    return opts


# ---- the workers (one rank each) ------------------------------------------------------------
def _nbytes(arrays):
    return int(sum(a.nbytes for a in arrays if hasattr(a, "nbytes")))


def _state_bytes(optimizer):
    """Bytes of this rank's optimizer state arrays (the moments; "step" is a count)."""
    return _nbytes([a for s in optimizer.state.values() for a in s.values()])


def _per_rank(group, value):
    """[value on rank 0, value on rank 1, ...]: a vector with one slot per rank, summed."""
    slots = np.zeros(group.size)
    slots[group.rank] = value
    return [int(v) for v in group.allreduce_scalars(slots, "the bench's gather")]


def step_worker(opts):
    """Rank 0's figures (None on the others): the strong and weak modes' step times, and each
    rank's parameter, gradient and optimizer-state bytes, plain DDP and ZeRO-1."""
    import tinygrad_llm as tl
    from tinygrad_llm.distributed import init_process_group
    from tinygrad_llm.models import GPT, GPTConfig
    from tinygrad_llm.train import TrainConfig, Trainer
    from tinygrad_llm.train.scaling import train_flops_per_token
    spec = dict(CONFIGS[opts.config])
    batch, block = spec.pop("batch"), spec["block_size"]
    data = np.random.default_rng(0).integers(0, VOCAB, 200_000)
    group = init_process_group()
    k = group.size

    def trainer(global_batch, zero):
        tl.manual_seed(0)
        model = GPT(GPTConfig.preset("gpt2", vocab_size=VOCAB, **spec))
        config = TrainConfig(batch_size=global_batch, block_size=block, max_iters=10 ** 6,
                             eval_interval=10 ** 6, warmup_iters=2, ddp=True, zero=zero,
                             checkpoint=False, progress=False, out_dir=None)
        optimizer, scales = config.optimizer_for(model)
        return Trainer(model, optimizer, data, data[:10_000], config, log=None,
                       lr_scales=scales)

    flops_per_token = None
    out = {"ranks": k, "modes": {}, "bytes": {}}
    for mode, global_batch in (("strong", batch), ("weak", batch * k)):
        if mode == "weak" and k == 1:         # the same run as strong
            out["modes"]["weak"] = out["modes"]["strong"]
            break
        t = trainer(global_batch, zero=False)
        flops_per_token = train_flops_per_token(t.model.config, block, context="full")
        for _ in range(opts.warmup):
            t.train_step()
        times = []
        for _ in range(opts.steps):
            group.barrier()
            t0 = time.perf_counter()
            t.train_step()
            times.append(time.perf_counter() - t0)
        median, tokens = float(np.median(times)), global_batch * block
        out["modes"][mode] = {
            "global_batch": global_batch, "rows_per_rank": global_batch // k,
            "median_ms": round(median * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
            "tokens_per_s": round(tokens / median),
            "flops_per_s_per_rank": flops_per_token * tokens / k / median}
        if mode == "strong":
            params = [p.data for p in t.model.parameters()]
            out["bytes"]["params"] = _per_rank(group, _nbytes(params))
            out["bytes"]["grads"] = out["bytes"]["params"]        # one .grad per parameter
            out["bytes"]["ddp_buckets"] = _per_rank(group, _nbytes(
                [b.flat for b in t.ddp.buckets]))
            out["bytes"]["optimizer_state"] = _per_rank(group, _state_bytes(t.optimizer))
    t = trainer(batch, zero=True)             # ZeRO-1: state appears at the first step
    for _ in range(2):
        t.train_step()
    out["bytes"]["optimizer_state_zero1"] = _per_rank(group, _state_bytes(t.optimizer))
    out["flops_per_token"] = flops_per_token
    return out if group.rank == 0 else None


def allreduce_sizes(max_bytes):
    """1 KiB, 4 KiB, ... up to max_bytes."""
    return [1024 * 4 ** i for i in range(20) if 1024 * 4 ** i <= max_bytes]


def allreduce_worker(opts):
    """[{"bytes", "median_s", "min_s", "repetitions"}] of allreduce + wait after a barrier
    (rank 0's times)."""
    from tinygrad_llm.distributed import init_process_group
    group = init_process_group()
    for _ in range(10):                               # MPI sets up its channels lazily
        group.wait([group.allreduce(np.zeros(256, dtype=np.float32))], "bench")
    rows = []
    for n in allreduce_sizes(opts.sizes):
        buf = np.zeros(n // 4, dtype=np.float32)      # zeros: the sums stay finite
        reps = max(5, min(20 if opts.quick else 200, 2 ** 24 // n))
        times = []
        for _ in range(reps + 1):                     # the first warms the buffers
            group.barrier()
            t0 = time.perf_counter()
            group.wait([group.allreduce(buf)], "bench")
            times.append(time.perf_counter() - t0)
        rows.append({"bytes": n, "median_s": float(np.median(times[1:])),
                     "min_s": min(times[1:]), "repetitions": reps})
    return rows if group.rank == 0 else None


# ---- the models of the figures ---------------------------------------------------------------
def fit_alpha_beta(nbytes, seconds):
    """t = alpha + n beta by least squares on the relative residuals (t - fit) / t; returns
    (alpha s, beta s/byte, the relative residuals)."""
    n, t = np.asarray(nbytes, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    a = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return float(alpha), float(beta), ((alpha + n * beta - t) / t).tolist()


def allreduce_time(ranks, nbytes, alpha_l, beta_l):
    """A ring allreduce of nbytes over `ranks`: 2 (P - 1) messages of latency alpha_l and
    2 (P - 1) / P n bytes through each link at beta_l s/byte."""
    return 2 * (ranks - 1) * alpha_l + 2 * (ranks - 1) / ranks * nbytes * beta_l


def project_step(compute_s, grad_bytes, ranks, alpha_l, beta_l, bucket_bytes=BUCKET_BYTES):
    """One data-parallel step at `ranks` ranks: forward and backward take compute_s (backward
    the last 2/3 of it); the gradients, cut into buckets of bucket_bytes in backward order,
    become ready bucket by bucket (bucket k of n at k / n of backward) and are allreduced one
    after another (a bucket starts at max(its ready time, the previous bucket's end)). The
    communication left after backward ends is exposed. Returns a dict: compute_s, comm_s (all
    the buckets' allreduces), exposed_s, step_s = compute_s + exposed_s, efficiency =
    compute_s / step_s. Ignores stragglers, the optimizer step and the network's topology."""
    n = max(1, -(-int(grad_bytes) // bucket_bytes))
    sizes = [bucket_bytes] * (n - 1) + [grad_bytes - bucket_bytes * (n - 1)]
    backward_s = 2 / 3 * compute_s
    backward_start = compute_s - backward_s
    done, comm = backward_start, 0.0
    for k, size in enumerate(sizes, 1):
        took = allreduce_time(ranks, size, alpha_l, beta_l)
        done = max(backward_start + k / n * backward_s, done) + took
        comm += took
    exposed = max(0.0, done - compute_s)
    step = compute_s + exposed
    return {"compute_s": compute_s, "comm_s": comm, "exposed_s": exposed, "step_s": step,
            "efficiency": compute_s / step if step > 0 else 1.0}


def projection(flops_per_s, links):
    """{config: {ranks: {link: project_step(...)}}} for PROJECTED at PROJECTED_RANKS."""
    from tinygrad_llm.models import GPTConfig
    from tinygrad_llm.train.scaling import non_embedding_params, train_flops_per_token
    table = {}
    for name, (spec, seqs) in PROJECTED.items():
        c = GPTConfig.preset("gpt2", **spec)
        params = non_embedding_params(c) + c.vocab_size * c.n_embd + \
            (c.block_size * c.n_embd if c.pos == "learned" else 0)
        tokens = seqs * c.block_size
        compute = train_flops_per_token(c, c.block_size, context="full") * tokens / flops_per_s
        table[name] = {"params": params, "tokens_per_rank": tokens, "by_ranks": {
            p: {link: project_step(compute, 4 * params, p, *ab) for link, ab in links.items()}
            for p in PROJECTED_RANKS}}
    return table


# ---- the launcher ----------------------------------------------------------------------------
def mpiexec_path():
    """mpiexec beside this Python (the MPICH wheel's), else on PATH; one line and exit 2 when
    it or mpi4py is missing."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if found is None or importlib.util.find_spec("mpi4py") is None:
        raise DistributedError("needs the mpi extra: pip install -e '.[mpi]'")
    return found


def launch(mpiexec, ranks, worker, opts):
    """Rank 0's JSON result of `mpiexec -n ranks` running this file as `worker`."""
    args = [f"--worker={worker}", f"--config={opts.config}", f"--steps={opts.steps}",
            f"--warmup={opts.warmup}", f"--sizes={opts.sizes}", f"--quick={opts.quick}"]
    done = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, __file__, *args],
                          env=dict(os.environ, **ONE_THREAD), stdout=subprocess.PIPE, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise ScriptError(f"the {worker} worker at {ranks} ranks failed with exit status "
                          f"{done.returncode}")
    return json.loads(lines[-1])


def summarise(steps, allreduce):
    """Efficiency 1 -> 2 ranks, the alpha-beta fit of the smallest rank count >= 2 that ran,
    and the projections (measured and assumed link)."""
    out = {}
    if 1 in steps and 2 in steps:
        t1, t2 = (steps[k]["modes"] for k in (1, 2))
        out["efficiency_1_to_2"] = {
            "strong": t1["strong"]["median_ms"] / (2 * t2["strong"]["median_ms"]),
            "weak": t1["weak"]["median_ms"] / t2["weak"]["median_ms"]}
    links = {}
    if allreduce:
        p = min(allreduce)
        alpha, beta, residuals = fit_alpha_beta([r["bytes"] for r in allreduce[p]],
                                                [r["median_s"] for r in allreduce[p]])
        # a ring over p ranks: 2 (p - 1) latencies, 2 (p - 1) / p n bytes per link
        alpha_l, beta_l = alpha / (2 * (p - 1)), beta * p / (2 * (p - 1))
        out["fit"] = {"ranks": p, "alpha_us": alpha * 1e6, "beta_s_per_byte": beta,
                      "gb_per_s": 1e-9 / beta if beta > 0 else None,
                      "relative_residuals": residuals,
                      "link_alpha_us": alpha_l * 1e6, "link_beta_s_per_byte": beta_l}
        links["measured (shared memory)"] = (alpha_l, beta_l)
    links["assumed 100 Gb/s InfiniBand"] = (ASSUMED_LINK["alpha_l_s"],
                                            ASSUMED_LINK["beta_l_s_per_byte"])
    one = steps[min(steps)]["modes"]["weak"]       # one rank's rows, at the fewest ranks
    out["projection_flops_per_s"] = one["flops_per_s_per_rank"]
    out["projection"] = projection(one["flops_per_s_per_rank"], links)
    # at this CPU's rate compute dwarfs any link; a GPU's rate is where communication shows
    out["projection_gpu_flops_per_s"] = ASSUMED_GPU_FLOPS
    out["projection_gpu"] = projection(ASSUMED_GPU_FLOPS, links)
    return out


def main(argv):
    (opts,) = parse_args(argv, Options)
    opts = resolve(opts)
    if opts.worker:
        result = (step_worker if opts.worker == "step" else allreduce_worker)(opts)
        if result is not None:
            print(json.dumps(result), flush=True)
        return result
    mpiexec = mpiexec_path()
    steps, allreduce = {}, {}
    for k in opts.ranks:
        print(f"{k} rank(s): training steps", file=sys.stderr, flush=True)
        steps[k] = launch(mpiexec, k, "step", opts)
        if k >= 2:
            print(f"{k} ranks: allreduce sizes", file=sys.stderr, flush=True)
            allreduce[k] = launch(mpiexec, k, "allreduce", opts)
    out = {"machine": {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg()[0],
                       "threads_per_rank": 1},
           "config": dict(CONFIGS[opts.config], name=opts.config, vocab_size=VOCAB),
           "steps": opts.steps, "warmup": opts.warmup, "step": steps, "allreduce": allreduce,
           **summarise(steps, allreduce), "assumed_link": ASSUMED_LINK}
    text = json.dumps(out)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    run_main(main)
