"""The CPU kernels compile lazily and per dtype: importing the package and loading the kernel
registry compiles nothing (no eager signatures, which Numba compiles at decoration for every
listed dtype), and a training step compiles only the specialisations of its own dtype.

A cold first step of the main job is mostly Numba compiling (bench/bench_compile.py measures it),
so every extra specialisation is paid by every fresh install. Each check runs in a fresh process:
this one has compiled whatever the other tests called. The child lists every jitted function of
kernels/cpu/ with the leading float array dtype of each signature it holds (compiled or loaded
from the cache: both are specialisations the process paid for).
"""
import json
import subprocess
import sys

import pytest

PRELUDE = r"""
import json, sys
from numba import types
from numba.core import event
from numba.core.dispatcher import Dispatcher

compiled = []                                   # functions Numba compiled (not cache hits)


class Compiles(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)


event.register("numba:compile", Compiles())


def leading_float(signature):
    floats = [str(t.dtype) for t in signature
              if isinstance(t, types.Array) and isinstance(t.dtype, types.Float)]
    return floats[0] if floats else None


def specialisations():
    out = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("tinygrad_llm.kernels.cpu"):
            for attr, fn in vars(module).items():
                if isinstance(fn, Dispatcher) and fn.py_func.__module__ == name:
                    out[f"{name.rsplit('.', 1)[-1]}.{attr}"] = [leading_float(s)
                                                                for s in fn.signatures]
    return out
"""

IMPORT_ONLY = PRELUDE + r"""
import tinygrad_llm
from tinygrad_llm import kernels
kernels.registered("cpu")                       # imports every kernels/cpu/ module
# PLANT
print(json.dumps({"specialisations": specialisations(), "compiled": compiled}))
"""

TRAIN_STEP = PRELUDE + r"""
import numpy as np
import tinygrad_llm as tl
from tinygrad_llm import kernels
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import AdamW

dtype, mlp = np.dtype(sys.argv[1]), sys.argv[2]
tl.manual_seed(0)
model = GPT(GPTConfig.preset("gpt2", vocab_size=11, n_layer=1, n_head=2, n_embd=16,
                             block_size=8, dropout=0.0, bias=False, mlp=mlp)).to(dtype=dtype)
optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
ids = np.random.default_rng(0).integers(0, 11, (2, 9))
with kernels.trace() as ran:
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    optimizer.step()
# PLANT
print(json.dumps({"specialisations": specialisations(), "compiled": compiled,
                  "fast": sorted({name for name, impl in ran if impl == "cpu"})}))
"""


def _child(code, *args, plant=""):
    """Run `code` in a fresh Python, with `plant` (a defect, for the tests that check a check) in
    place of its "# PLANT" line; its last stdout line, as JSON."""
    code = code.replace("# PLANT", plant)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _specialised_at_import(plant=""):
    out = _child(IMPORT_ONLY, plant=plant)
    assert len(out["specialisations"]) > 20, out       # the walk found the jitted loops
    return {name: sigs for name, sigs in out["specialisations"].items() if sigs}, out["compiled"]


def test_loading_the_kernels_compiles_nothing():
    held, compiled = _specialised_at_import()
    assert held == {}, f"specialised at import (eager signatures?): {held}"
    assert compiled == []


# an eager signature in a kernels/cpu module: compiled when the module loads
EAGER = """
import types as _t
from numba import njit
planted = _t.ModuleType("tinygrad_llm.kernels.cpu.planted")
planted.loop = njit("float64(float64[::1])", cache=False)(lambda x: x.sum())
planted.loop.py_func.__module__ = planted.__name__
sys.modules[planted.__name__] = planted
"""


def test_the_import_check_catches_an_eager_signature():
    held, compiled = _specialised_at_import(EAGER)
    assert held == {"planted.loop": ["float64"]}
    assert "<lambda>" in compiled


# the kernels of the main job's training step (a GPT-2 block, packed qkv attention, AdamW), with
# the baseline's GELU or the speedrun recipe's squared ReLU
MAIN_JOB_KERNELS = {"packed_attention_forward", "packed_attention_backward", "layer_norm_forward",
                    "layer_norm_backward", "cross_entropy_forward", "cross_entropy_backward",
                    "embedding_backward", "adam_update"}
ACTIVATION_KERNELS = {"gelu_tanh": {"gelu_forward", "gelu_backward"},
                      "relu2": {"relu2_forward", "relu2_backward"}}


@pytest.mark.slow
@pytest.mark.parametrize("mlp", sorted(ACTIVATION_KERNELS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_training_step_specialises_only_its_own_dtype(dtype, mlp):
    out = _child(TRAIN_STEP, dtype, mlp)
    # the step took the fast paths, so its loops were specialised in this process
    assert MAIN_JOB_KERNELS | ACTIVATION_KERNELS[mlp] <= set(out["fast"]), out["fast"]
    used = {name: sigs for name, sigs in out["specialisations"].items() if sigs}
    assert {name.split(".")[0] for name in used} >= {"attention", "norm", "softmax",
                                                     "activation", "embedding", "optim"}, used
    wrong = {name: sigs for name, sigs in used.items() if set(sigs) != {dtype}}
    assert wrong == {}, f"a {dtype} step specialised other dtypes: {wrong}"


def test_the_dtype_check_catches_a_stray_specialisation():
    # a float32 step that also runs GELU on float64 activations specialises GELU's float64 loop
    stray = "tl.nn.functional.gelu(tl.Tensor(np.ones(5)), approximate='tanh')"
    out = _child(TRAIN_STEP, "float32", "gelu_tanh", plant=stray)
    wrong = {name: sigs for name, sigs in out["specialisations"].items()
             if sigs and set(sigs) != {"float32"}}
    assert set(wrong) == {"activation._gelu_forward_f64"}, wrong
