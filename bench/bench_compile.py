"""First-call cost of the Numba kernels, each figure from a fresh process: compile time on a cold
cache (an empty NUMBA_CACHE_DIR, so your own cache is untouched) and load time on the warm cache
that run leaves.

    python bench/bench_compile.py                          # both parts
    python bench/bench_compile.py --part=main_job --repeats=3

main_job: the first training step of examples/train_shakespeare.py's default run (its model and
training config under its default recipe: a 4-layer, 192-dim char GPT over a 65-symbol
vocabulary, float32, with the optimizer the recipe names; random tokens stand in for the text,
which compilation never reads). Reports the compile seconds per
kernel family (each outermost jitted loop's compile, the helpers it compiles included, under the
kernels/cpu file it lives in), the first step (cold: mostly compilation), a steady step, the warm
start (import to the end of the first step, from the cache) and the compile events of the warm
run (0: everything came from the cache). With --sample=true (the default) it then times what the
job does once trained, a 20-token sample as the script writes it (its decode kernel compiles
then), with its own compile seconds per family. `float64_compiles` counts specialisations whose
leading float array is float64: a float32 run should compile none. Each figure is the min over
--repeats cold/warm pairs; `load_avg` is read before them, since other processes on a 2-core
machine inflate every figure.
The Trainer's first step compiles its backward kernels in a helper process (train/warmup.py)
while it compiles the forward's: the compile seconds per family are this process's, the first
step is the wall time the user waits. TINYGRAD_LLM_COMPILE_AHEAD=0 in the environment measures
the step without the helper.
--parallel=false compiles every loop without parallel=True (numba.njit wrapped before the
kernels load; prange then runs as range): what Numba's parallel lowering costs the first step.
An experiment, not a mode of the library: the loops' results are the same except where LLVM
contracts differently (GELU's float32 backward moved by an ulp, seen with numba 0.68).
kernels: every kernel family's first call at tiny shapes, float32 and float64, cold and warm, and
`import tinygrad_llm`.

Prints one JSON object: {"load_avg", "main_job": {...}, "import_s", "cold_s": {family_dtype: s},
"warm_s", "cold_total_s", "warm_total_s"}.
"""
import json
import os
import runpy
import subprocess
import sys
import tempfile

from bench_model import parse

DEFAULTS = {"part": "all", "repeats": 2, "parallel": True, "sample": True}
PARTS = ("all", "main_job", "kernels")
EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                       "train_shakespeare.py")

# The main job's first step, timed in a child process. Compile time comes from Numba's
# "numba:compile" events, which fire only on a real compile (a cache hit raises none); events
# nest (a loop compiles its jitted helpers inside its own compile), so only the outermost ones
# are summed, under the file of the loop that started them.
MAIN_JOB_CHILD = r"""
import json, sys, tempfile, time
start = time.perf_counter()
from numba.core import event

compile_s = {"first_step": {}, "sample": {}}    # phase -> family -> seconds
compiles = {"first_step": 0, "sample": 0}       # phase -> outermost compile events
phase, float64_compiles, open_events = ["first_step"], [0], []


class Compiles(event.Listener):
    def on_start(self, ev):
        open_events.append(time.perf_counter())

    def on_end(self, ev):
        seconds = time.perf_counter() - open_events.pop()
        if open_events:
            return
        fn = ev.data["dispatcher"].py_func
        family = fn.__module__.rsplit(".", 1)[-1]
        compile_s[phase[0]][family] = compile_s[phase[0]].get(family, 0.0) + seconds
        compiles[phase[0]] += 1
        floats = [a.dtype.name for a in ev.data["args"]
                  if hasattr(a, "dtype") and a.dtype.name.startswith("float")]
        float64_compiles[0] += bool(floats) and floats[0] == "float64"


event.register("numba:compile", Compiles())
if sys.argv[2] == "serial":
    import numba
    parallel_njit = numba.njit

    def serial_njit(*args, **options):
        options.pop("parallel", None)
        return parallel_njit(*args, **options)
    numba.njit = serial_njit
import numpy as np
import tinygrad_llm as tl
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.train import TrainConfig, Trainer
import_s = time.perf_counter() - start

model_defaults, train_defaults = json.loads(sys.argv[1])
sample = sys.argv[3] == "sample"
vocab_size = 65                                 # tiny Shakespeare's characters
ids = np.random.default_rng(0).integers(0, vocab_size, 50_000)
with tempfile.TemporaryDirectory() as out_dir:
    config = TrainConfig(**{**train_defaults, "out_dir": out_dir})
    model = GPT(GPTConfig.preset("gpt2", vocab_size=vocab_size, block_size=config.block_size,
                                 **model_defaults))
    optimizer, lr_scales = config.optimizer_for(model)
    trainer = Trainer(model, optimizer, ids[:45_000], ids[45_000:], config, log=None,
                      lr_scales=lr_scales)
    t = time.perf_counter()
    trainer.train_step()
    first_step_s = time.perf_counter() - t
    start_s = time.perf_counter() - start
    t = time.perf_counter()
    trainer.train_step()
    step_s = time.perf_counter() - t
    sample_s = None
    if sample:                                  # as train_shakespeare.py samples once trained
        from tinygrad_llm.generate import generate
        phase[0] = "sample"
        t = time.perf_counter()
        generate(model, np.zeros((1, 1), np.int64), 20, temperature=0.8, top_k=40, seed=0,
                 context_shift=True)
        sample_s = time.perf_counter() - t
print(json.dumps({"import_s": import_s, "first_step_s": first_step_s, "start_s": start_s,
                  "step_s": step_s, "sample_s": sample_s, "compile_s": compile_s,
                  "compiles": compiles, "float64_compiles": float64_compiles[0]}))
"""

CHILD = r"""
import json, time
t = time.perf_counter()
import tinygrad_llm as tl
import_s = time.perf_counter() - t
import numpy as np
import tinygrad_llm.nn.functional as F
from tinygrad_llm import kernels
from tinygrad_llm.ops.rope import PackedQKNormRopeOp

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
        "relu2": lambda: F.relu2(leaf(4, 5, dtype=dtype)),
        "qk_norm_rope": lambda: PackedQKNormRopeOp.apply(
            leaf(1, 3, 3, 4, dtype=dtype), leaf(4, dtype=dtype), leaf(4, dtype=dtype),
            cos=np.ones((3, 4), dtype), sin=np.zeros((3, 4), dtype), n_head=1, n_kv_head=1),
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


def run(env, code=CHILD, args=()):
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"bench_compile: the child process failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main_job_defaults():
    """(model fields, train fields) of examples/train_shakespeare.py's default run: its
    MODEL_DEFAULTS and TRAIN_DEFAULTS under its default recipe's, read from the script itself
    (its main() does not run) so that this bench follows the main job's config."""
    example = runpy.run_path(EXAMPLE, run_name="bench_compile")
    train, model = example["RECIPES"][example["RunArgs"].recipe]
    return {**example["MODEL_DEFAULTS"], **model}, {**example["TRAIN_DEFAULTS"], **train}


def _min_by_family(runs, phase):
    """{family: min over runs of its compile seconds in `phase`}."""
    families = sorted({f for r in runs for f in r["compile_s"][phase]})
    return {f: round(min(r["compile_s"][phase].get(f, 0.0) for r in runs), 2) for f in families}


def main_job(repeats, parallel=True, sample=True):
    """The main job's first step (and sample), cold then warm, `repeats` times; the min of each
    figure."""
    args = (json.dumps(main_job_defaults()), "parallel" if parallel else "serial",
            "sample" if sample else "no_sample")
    colds, warms = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            colds.append(run(env, MAIN_JOB_CHILD, args))
            warms.append(run(env, MAIN_JOB_CHILD, args))
    out = {"parallel": parallel,
           "cold_first_step_s": round(min(c["first_step_s"] for c in colds), 2),
           "cold_first_step_all_s": [round(c["first_step_s"], 2) for c in colds],
           "cold_compile_s": _min_by_family(colds, "first_step"),
           "cold_compile_total_s": round(min(sum(c["compile_s"]["first_step"].values())
                                             for c in colds), 2),
           "compiles": colds[0]["compiles"],
           "float64_compiles": max(c["float64_compiles"] for c in colds),
           "warm_start_s": round(min(w["start_s"] for w in warms), 2),
           "warm_first_step_s": round(min(w["first_step_s"] for w in warms), 2),
           "warm_compiles": {phase: max(w["compiles"][phase] for w in warms)
                             for phase in warms[0]["compiles"]},
           "import_s": round(min(w["import_s"] for w in warms), 2),
           "step_s": round(min(r["step_s"] for r in colds + warms), 2)}
    if sample:
        out.update(cold_sample_s=round(min(c["sample_s"] for c in colds), 2),
                   cold_sample_compile_s=_min_by_family(colds, "sample"),
                   warm_sample_s=round(min(w["sample_s"] for w in warms), 2))
    return out


def kernels():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = run(env)
        warm = run(env)
    rounded = {k: round(v, 3) for k, v in cold["first_call_s"].items()}
    warm_rounded = {k: round(v, 3) for k, v in warm["first_call_s"].items()}
    return {"import_s": round(warm["import_s"], 3),
            "cold_total_s": round(sum(rounded.values()), 2),
            "warm_total_s": round(sum(warm_rounded.values()), 2),
            "cold_s": rounded, "warm_s": warm_rounded}


def main(argv):
    opts = parse(argv, DEFAULTS)
    if opts["part"] not in PARTS:
        raise SystemExit(f"--part must be one of {PARTS}, got {opts['part']!r}")
    if opts["repeats"] < 1:
        raise SystemExit(f"--repeats must be >= 1, got {opts['repeats']}")
    out = {"load_avg": [round(x, 2) for x in os.getloadavg()]}
    if opts["part"] in ("all", "main_job"):
        out["main_job"] = main_job(opts["repeats"], opts["parallel"], opts["sample"])
    if opts["part"] in ("all", "kernels"):
        out.update(kernels())
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
