"""Batch-1 decoding on "cuda", held to per-token budgets, through both paths generate() can take:
the decode step (generate/decode_step.py: a batch-1 cache carries a DecodePlan) and the model's
forward with a KV cache (models the plan cannot run, or any model when the plan is refused).

On the CuPy stand-in (tests/standin: it refuses host conversions and counts syncs, transfers,
launches and float64 upcasts; a leak-and-transfer guard, not a GPU check) greedy decoding of
float32 and quantized models must give the CPU's tokens, and each generated token must move no
weights, read one value (the sampled id), make no float64 array, and launch no more array
operations than LAUNCHES records. The references run here (`use_kernels(False)`), as in
tests/test_on_device.py; one tiny model also runs with the CUDA kernels under Numba's simulator,
where its launches are the array ones plus kernels.cuda.launch_count().

LAUNCHES are the counts measured when these budgets were set (issue 23), per generated token of
the 2-layer models below: lower them when a change saves launches, never raise them silently.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import kernels
from tinygrad_llm.generate import generate
from tinygrad_llm.generate.decode_step import DecodePlan
from tinygrad_llm.kernels import cuda as cuda_kernels
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.quant import quantize

PROMPT = np.array([[1, 2, 3]])
SHORT, LONG = 2, 6                 # per-token figures: (LONG run - SHORT run) / (LONG - SHORT)

# (path, preset, scheme) -> array launches per generated token (kernels off)
LAUNCHES = {
    ("step", "gpt2", None): 112, ("step", "gpt2", "q4_0"): 168, ("step", "gpt2", "q8_0"): 144,
    ("step", "llama", None): 104, ("step", "llama", "q4_0"): 174, ("step", "llama", "q8_0"): 144,
    ("forward", "gpt2", None): 136, ("forward", "gpt2", "q4_0"): 192,
    ("forward", "gpt2", "q8_0"): 168, ("forward", "llama", None): 138,
    ("forward", "llama", "q4_0"): 208, ("forward", "llama", "q8_0"): 178,
}
# the tiny llama with the CUDA kernels on: (array launches, CUDA kernels) per token. Of the 37,
# 16 are the kernels' output allocations (cupy.empty: no launch on a GPU, which the stand-in
# counts anyway); then 11 GEMMs, 4 residual adds, 4 cache writes, the gather, the argmax
KERNEL_LAUNCHES = (37, 11)


def _model(device, preset, scheme=None, n_embd=32, n_head=4):
    tl.manual_seed(0)
    extra = dict(n_kv_head=n_head // 2) if preset == "llama" else {}    # GQA: two heads a group
    model = GPT(GPTConfig.preset(preset, n_layer=2, n_head=n_head, n_embd=n_embd, block_size=32,
                                 vocab_size=11, **extra))
    if scheme is not None:
        quantize(model, scheme)
    return model.to(device)


@pytest.fixture
def gpu(standin_cuda):
    with tl.use_kernels(False):
        yield standin_cuda


@pytest.fixture(params=["step", "forward"])
def path(request, monkeypatch):
    """"step": the decode step; "forward": the model's forward with a KV cache (the plan
    refused, as for a model it cannot run)."""
    if request.param == "forward":
        monkeypatch.setattr(DecodePlan, "reason", staticmethod(lambda model: "refused"))
    return request.param


def _per_token(gpu, model):
    """Greedy tokens of LONG steps and what one generated token costs."""
    generate(model, PROMPT, SHORT, temperature=0)                 # compile, allocate, warm up
    with gpu.measure() as short:
        generate(model, PROMPT, SHORT, temperature=0)
    with kernels.trace() as ran, gpu.measure() as long:
        out = generate(model, PROMPT, LONG, temperature=0)
    n = LONG - SHORT
    cost = {f: (getattr(long, f) - getattr(short, f)) / n
            for f in ("syncs", "launches", "h2d_bytes", "d2h_bytes")}
    return out, cost, long, ran


@pytest.mark.parametrize("scheme", [None, "q4_0", "q8_0"], ids=["float32", "q4_0", "q8_0"])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_greedy_decoding_matches_the_cpu_within_budget(gpu, path, preset, scheme):
    model = _model("cuda", preset, scheme)
    out, cost, counts, ran = _per_token(gpu, model)
    np.testing.assert_array_equal(out, generate(_model("cpu", preset, scheme), PROMPT, LONG,
                                                temperature=0))
    took_step = ("decode_step", "reference") in ran
    assert took_step == (path == "step")
    weight_bytes = sum(p.data.nbytes for p in model.parameters())
    assert cost["h2d_bytes"] <= 16 and cost["d2h_bytes"] <= 16     # an id each way, no weights
    assert cost["h2d_bytes"] + cost["d2h_bytes"] < weight_bytes / 100
    assert cost["syncs"] <= 1, counts.sync_sites
    assert counts.upcasts == 0, counts.upcast_sites
    budget = LAUNCHES[path, preset, scheme]
    assert cost["launches"] <= budget, f"{cost['launches']} array launches per token > {budget}"


def test_the_step_stays_in_the_model_dtype(gpu):
    # a step's logits come back float32 on the device, with no float64 made on the way
    from tinygrad_llm.generate.decode_step import forward_logits
    from tinygrad_llm.generate.kv_cache import make_caches
    model = _model("cuda", "llama", "q4_0").eval()
    caches = make_caches(model, 1, 16)
    with tl.no_grad(), gpu.measure() as c:
        logits = forward_logits(model, np.array([1, 2, 3]), caches, 0)
        logits = forward_logits(model, np.array([4]), caches, 3)
    assert logits.dtype == np.float32 and logits.shape == (1, 11)
    assert type(logits).__module__ != "numpy"                     # still on the device
    assert c.upcasts == 0 and c.syncs == 0, (c.upcast_sites, c.sync_sites)


def test_with_the_cuda_kernels(standin_cuda):
    """One tiny model through the CUDA kernels under Numba's simulator: the CPU's tokens, the
    decode attention kernel taken, and launches within KERNEL_LAUNCHES."""
    # (the simulator runs each block's threads in Python: 2 layers, 2 query heads, 1 K/V head)
    model, prompt = _model("cuda", "llama", n_embd=16, n_head=2), PROMPT[:, :2]
    with tl.use_kernels(True):
        before = cuda_kernels.launch_count()
        with standin_cuda.measure() as short:
            generate(model, prompt, 1, temperature=0)
        between = cuda_kernels.launch_count()
        with kernels.trace() as ran, standin_cuda.measure() as long:
            out = generate(model, prompt, 3, temperature=0)
        after = cuda_kernels.launch_count()
    np.testing.assert_array_equal(out, generate(_model("cpu", "llama", n_embd=16, n_head=2),
                                                prompt, 3, temperature=0))
    assert ("decode_attention", "cuda") in ran and ("rms_norm_forward", "cuda") in ran
    array_launches = (long.launches - short.launches) / 2
    cuda_launches = ((after - between) - (between - before)) / 2
    assert (long.syncs - short.syncs) / 2 <= 1 and long.upcasts == 0
    assert array_launches <= KERNEL_LAUNCHES[0] and cuda_launches <= KERNEL_LAUNCHES[1], \
        (array_launches, cuda_launches)
