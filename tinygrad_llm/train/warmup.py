"""Compile ahead: a helper process compiles the first training step's backward kernels while this
process compiles the forward's.

On a fresh install (or a new Numba, or a new CPU) the first training step waits for Numba to
compile every kernel it calls, one after the other: Numba compiles under one lock per process,
so a second core sits idle. For the main job that was 9-11 s, about half of it the backward
kernels. The Trainer wraps its first step in backward_compiled_ahead: at the step's first
compile (a warm cache compiles nothing and starts nothing), a helper process rebuilds the model's
architecture at a tiny size, runs its forward on the readable references (nothing to compile) and
its backward on the kernels. That compiles the backward loops this run will call, in its dtype
and layouts (Numba specialises on types, not sizes), into Numba's on-disk cache, where this
process's backward finds them when it gets there: the main job's cold first step took 7.2-7.5 s
instead of 11.4 s on a loaded 2-core machine (examples/train_shakespeare.py's model; see
bench/bench_compile.py). A loop the helper has not finished yet is compiled here as before,
so the helper can only save time; it is stopped when the first step ends.

The helper runs for a GPT (the architecture the checkpoints record) on the CPU with the kernels
on; TINYGRAD_LLM_COMPILE_AHEAD=0 turns it off. It is `python -m tinygrad_llm.train.warmup SPEC`
with one thread, its output discarded: it changes no result, only when a compile happens.
"""
import contextlib
import json
import os
import subprocess
import sys

import numpy as np

from .. import kernels

ENV = "TINYGRAD_LLM_COMPILE_AHEAD"
TOKENS = 4                  # the helper's batch: one sequence of up to this many tokens


def helper_spec(model):
    """What the helper rebuilds `model` from (JSON-able), or None where it cannot help: not a
    GPT, not on the CPU, the kernels off, or TINYGRAD_LLM_COMPILE_AHEAD=0."""
    from ..models import GPT                # models sit below train; imported when needed
    if os.environ.get(ENV, "1") == "0" or type(model) is not GPT or model.device != "cpu" \
            or not kernels.kernels_enabled():
        return None
    dtype = next(iter(model.parameters())).dtype
    return {"model_config": model.config.to_dict(), "dtype": np.dtype(dtype).name}


def _helper_env():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", **{ENV: "0"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@contextlib.contextmanager
def backward_compiled_ahead(model):
    """Within the block (a first training step), start the helper at the first Numba compile;
    stop it, if still running, when the block ends."""
    spec = helper_spec(model)
    if spec is None:
        yield
        return
    from ..kernels.cpu._common import on_first_compile
    helpers = []

    def start():
        try:
            helpers.append(subprocess.Popen(
                [sys.executable, "-m", "tinygrad_llm.train.warmup", json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=_helper_env()))
        except OSError:                     # no helper: this process compiles everything
            pass

    try:
        with on_first_compile(start):
            yield
    finally:
        for helper in helpers:
            if helper.poll() is None:       # what is left would only repeat this process's work
                helper.terminate()          # (Numba writes each cache file whole, then renames)
            helper.wait()


def compile_backward(spec):
    """The helper's work: the model of `spec` at one sequence of TOKENS tokens, forward on the
    references and backward on the kernels, which compiles the backward loops in the order this
    process's backward will call them. (Compiling the attention's largest loop first, through the
    first block alone, was slower: this process then compiled the four smaller loops its
    backward reaches before it, 8.2-8.9 s against 7.4-7.7 s.)"""
    from .. import use_kernels
    from ..models import GPT, GPTConfig
    model = GPT(GPTConfig(**spec["model_config"])).to(dtype=spec["dtype"])
    idx = np.zeros((1, min(TOKENS, model.config.block_size)), np.int64)
    with use_kernels(False):
        _, loss = model(idx, idx)
    with use_kernels(True):
        loss.backward()


if __name__ == "__main__":
    compile_backward(json.loads(sys.argv[1]))
