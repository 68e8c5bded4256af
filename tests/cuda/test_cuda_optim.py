"""CUDA optimizer updates and clipping against their references (tests/cuda/cuda_parity.py), then
the GPU step of a whole parameter group (optim/flat.py): its launches do not grow with the number
of parameters, and it reproduces the CPU step, across skipped parameters, replaced arrays and a
state_dict round trip. Last, clip_grad_norm_ on the device: one host sync, no gradient upcast.

Launch counts: the stand-in counts array operations (`standin.measure()`), and
`tinygrad_llm.kernels.cuda.launch_count()` counts the library's own kernels; on a real GPU only
the latter is checked.
"""
import math

import numpy as np
import pytest

import standin
import tinygrad_llm as tl
from cuda_parity import SIZES, assert_close, check, down, up, x
from tinygrad_llm import backend, kernels, nn
from tinygrad_llm.kernels.cuda import launch_count
from tinygrad_llm.nn.module import Module, Parameter
from tinygrad_llm.optim import SGD, Adam, AdamW, Lion, clip_grad_norm_
from tinygrad_llm.optim.clip import grad_squared_norms
from tinygrad_llm.train.checkpoint import model_arrays


# ---- the update kernels against their references -------------------------------------------------
def _arrays(rng, n, dtype, scale):
    """p, g, m, v of n elements (v > 0); every fourth g and m zero (unused rows; Lion's sign 0)."""
    p, g, m = (x(rng, n, dtype, scale) for _ in range(3))
    v = (np.abs(x(rng, n, dtype, scale)) + 0.01).astype(dtype)
    g[::4] = m[::4] = 0
    return p, g, m, v


def _cases(rng, dtype):
    for n in SIZES:
        for scale in (1.0, 1e4):
            yield _arrays(rng, n, dtype, scale)


def _adam_update(rng, dtype):
    for p, g, m, v in _cases(rng, dtype):
        for decoupled, wd in [(True, 0.1), (False, 0.1), (True, 0.0)]:
            yield p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, wd, decoupled, 1 - 0.9 ** 3, 1 - 0.999 ** 3


def _sgd_update(rng, dtype):
    for p, g, m, _ in _cases(rng, dtype):
        for momentum, dampening, wd, nesterov in [(0.0, 0.0, 0.0, False), (0.9, 0.0, 0.01, True),
                                                  (0.9, 0.1, 0.0, False)]:
            yield p, g, m if momentum else None, 0.1, momentum, dampening, wd, nesterov


def _lion_update(rng, dtype):
    for p, g, m, _ in _cases(rng, dtype):
        for wd in (0.0, 0.3):
            yield p, g, m, 1e-3, 0.9, 0.99, wd


def _grad_squared_norms(rng, dtype):
    """The sums in the gradients' dtype (clip_grad_norm_ on a GPU), and in float64."""
    shapes = [(1,), (3, 1), (SIZES[2],), (2, SIZES[3])]
    for scale in (1.0, 1e4):
        for sums in (dtype, np.float64):
            yield np.zeros((len(shapes), 2), sums), [x(rng, s, dtype, scale) for s in shapes]


CASES = {
    "adam_update": _adam_update,
    "sgd_update": _sgd_update,
    "lion_update": _lion_update,
    "grad_squared_norms": _grad_squared_norms,
}


def _check_squared_norms(maker, dtype):
    """As cuda_parity.check, for a kernel that takes a list of arrays. The sums are compared as
    hi + lo in float64 against float64 sums: the kernel's pairs carry ~48 bits whatever their
    dtype (the reference's float32 sums only ~24, so they get the float32 tolerance)."""
    reference = kernels.reference("grad_squared_norms")
    n = 0
    for out, grads in maker(np.random.default_rng(0), dtype):
        exact = np.array([(g.astype(np.float64) ** 2).sum() for g in grads])
        want = reference(out.copy(), grads)
        assert_close("reference", want.astype(np.float64).sum(axis=1), exact, out.dtype.type)
        with tl.use_kernels(True):
            got = grad_squared_norms(up(out), [up(g) for g in grads])
        assert kernels.ran("grad_squared_norms") == "cuda"
        got = down(got)
        assert got.dtype == out.dtype and got.shape == out.shape
        assert_close("grad_squared_norms", got.astype(np.float64).sum(axis=1), exact,
                     np.float64, tolerance=1e-13)
        n += 1
    assert n >= 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    if name == "grad_squared_norms":
        _check_squared_norms(CASES[name], dtype)
    else:
        check(name, CASES[name], dtype)


def test_nan_propagates_as_in_the_reference():
    def with_nan(rng, dtype, extra):
        p, g, m, v = _arrays(rng, 5, dtype, 1.0)
        g[1] = np.nan
        m[2] = np.nan
        yield (p, g, m, v)[:extra]
    check("adam_update", lambda r, d: ((*a, 1e-3, 0.9, 0.999, 1e-8, 0.1, True, 0.5, 0.5)
                                       for a in with_nan(r, d, 4)), np.float32, min_cases=1)
    check("lion_update", lambda r, d: ((*a, 1e-3, 0.9, 0.99, 0.1) for a in with_nan(r, d, 3)),
          np.float32, min_cases=1)
    check("sgd_update", lambda r, d: ((*a, 0.1, 0.9, 0.0, 0.1, True) for a in with_nan(r, d, 3)),
          np.float32, min_cases=1)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")   # the simulator
def test_squared_norms_keep_inf_and_nan():
    grads = [np.array([1.0, np.inf], np.float32), np.array([np.nan], np.float32),
             np.array([3e38, 3e38], np.float32)]
    got = down(grad_squared_norms(up(np.zeros((3, 2))), [up(g) for g in grads]))
    assert got[0, 0] == np.inf and np.isnan(got[1, 0])
    assert got[2, 0] == pytest.approx(2 * float(np.float32(3e38)) ** 2, rel=1e-15)  # no overflow
    got = down(grad_squared_norms(up(np.zeros((3, 2), np.float32)), [up(g) for g in grads]))
    assert got[0, 0] == np.inf and np.isnan(got[1, 0]) and got[2, 0] == np.inf   # float32 sums


# ---- a parameter group's step on the GPU ---------------------------------------------------------
OPTIMIZERS = {
    "adamw": lambda groups: AdamW(groups, lr=0.01, weight_decay=0.1),
    "adam": lambda groups: Adam(groups, lr=0.01, weight_decay=0.1),
    "sgd": lambda groups: SGD(groups, lr=0.1),
    "sgd_nesterov": lambda groups: SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.01,
                                       nesterov=True),
    "lion": lambda groups: Lion(groups, lr=0.01, weight_decay=0.1),
}
SHAPES = [(3, 4), (5,), (1,), (2, 3, 2)]


def _params(arrays, device):
    return [Parameter(a.copy(), device=device) for a in arrays]


def _groups(params):
    """Two groups, as param_groups_for_weight_decay makes: matrices decayed, vectors not."""
    return [{"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = tl.Tensor(g, device=p.device)


def _counted_step(opt):
    """(array launches (None on a GPU), kernel launches, syncs) of one opt.step()."""
    kernels_before = launch_count()
    if standin.HAS_GPU:
        opt.step()
        return None, launch_count() - kernels_before, None
    with standin.measure() as c:
        opt.step()
    assert c.h2d_bytes == 0 and c.upcasts == 0, c
    return c.launches, launch_count() - kernels_before, c.syncs


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_launches_do_not_grow_with_the_number_of_parameters(name):
    rng = np.random.default_rng(1)
    counts = []
    for repeat in (1, 8):                          # 4 and 32 parameters, in two groups
        arrays = [rng.standard_normal(s) for s in SHAPES * repeat]
        params = _params(arrays, "cuda")
        opt = OPTIMIZERS[name](_groups(params))
        for step in range(2):                      # the first step packs the groups
            _set_grads(params, [rng.standard_normal(a.shape) for a in arrays])
            counted = _counted_step(opt)
        counts.append(counted)
    assert counts[0] == counts[1], f"{name}: {counts[0]} launches with 4 parameters, " \
                                   f"{counts[1]} with 32"
    array_launches, kernel_launches, syncs = counts[0]
    assert kernel_launches == 2                    # one update per group
    if array_launches is not None:
        # per group, the gradients' concatenate (+ SGD's 1-element dummy buffer without momentum)
        assert array_launches <= 4 and syncs == 0


def _run(name, arrays, grads_per_step, device, dtype, between=None):
    params = _params([a.astype(dtype) for a in arrays], device)
    opt = OPTIMIZERS[name](_groups(params))
    for step, grads in enumerate(grads_per_step):
        for p, g in zip(params, grads):
            p.grad = None if g is None else tl.Tensor(g.astype(dtype), device=device)
        if between is not None:
            between(step, params, opt)
        opt.step()
    return params, opt


def _assert_same(cpu, gpu, dtype):
    tol = {np.float32: 1e-6, np.float64: 1e-13}[dtype]
    (cpu_params, cpu_opt), (gpu_params, gpu_opt) = cpu, gpu
    for a, b in zip(cpu_params, gpu_params):
        assert b.device == "cuda" and b.dtype == a.dtype
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=tol, atol=tol)
    cpu_state, gpu_state = cpu_opt.state_dict(), gpu_opt.state_dict()
    assert cpu_state["param_groups"] == gpu_state["param_groups"]
    assert sorted(cpu_state["state"]) == sorted(gpu_state["state"])
    for i, entry in cpu_state["state"].items():
        other = gpu_state["state"][i]
        assert sorted(other) == sorted(entry) and other["step"] == entry["step"]
        for key, value in entry.items():
            if key != "step":
                assert isinstance(other[key], np.ndarray) and other[key].shape == value.shape
                np.testing.assert_allclose(other[key], value, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_group_step_matches_the_cpu_step(name, dtype):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(3)]
    with tl.use_kernels(True), kernels.trace() as log:
        gpu = _run(name, arrays, grads, "cuda", dtype)
    kernel = {"a": "adam_update", "s": "sgd_update", "l": "lion_update"}[name[0]]
    assert set(log) == {(kernel, "cuda")} and len(log) == 2 * len(grads)   # 2 groups a step
    _assert_same(_run(name, arrays, grads, "cpu", dtype), gpu, dtype)


def test_skipped_parameters_and_replaced_arrays_still_match_the_cpu():
    """Step 2 skips a parameter (the per-parameter loop runs), so from step 3 the group's step
    counts differ (two runs of equal count); before step 4 a parameter's array is replaced, as
    Module.to does (the group is packed again)."""
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(5)]
    grads[1][0] = None

    def replace(step, params, opt):
        if step == 3:
            params[0].data = params[0].data.copy()

    gpu = _run("adamw", arrays, grads, "cuda", np.float64, between=replace)
    _assert_same(_run("adamw", arrays, grads, "cpu", np.float64), gpu, np.float64)
    assert gpu[1].state[0]["step"] == 4 and gpu[1].state[1]["step"] == 5
    assert gpu[0][0].data.base is not None          # a view of the packed buffer again


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    params = _params(arrays, "cuda")
    opt = OPTIMIZERS["adamw"](_groups(params))
    for _ in range(2):
        _set_grads(params, [rng.standard_normal(s).astype(np.float32) for s in SHAPES])
        opt.step()
    saved = opt.state_dict()
    copies = _params([p.numpy() for p in params], "cuda")
    resumed = OPTIMIZERS["adamw"](_groups(copies))
    resumed.load_state_dict(saved)
    for _ in range(2):
        grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        _set_grads(params, grads)
        _set_grads(copies, grads)
        opt.step()
        resumed.step()
    for a, b in zip(params, copies):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    ordered = [p for group in opt.param_groups for p in group["params"]]   # state's indices
    assert all(isinstance(v, np.ndarray) and v.shape == ordered[i].shape
               for i, entry in saved["state"].items() for k, v in entry.items() if k != "step")


class _Tied(Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight


def test_checkpoint_keeps_packed_parameters_apart():
    """After a GPU step every parameter is a view of one buffer: a checkpoint must still write
    each once, and alias only the tied one."""
    model = _Tied().to("cuda")
    opt = AdamW(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = tl.Tensor(backend.xp_for("cuda").ones(p.shape, dtype=p.dtype))
    opt.step()
    arrays, aliases = model_arrays(model)
    assert aliases == {"head.weight": "emb.weight"}
    assert sorted(arrays) == ["emb.weight", "fc.bias", "fc.weight"]
    for name, p in model.state_dict().items():
        np.testing.assert_array_equal(arrays[aliases.get(name, name)], p.numpy())


# ---- clipping on the device ----------------------------------------------------------------------
@pytest.mark.parametrize("n_params", [2, 12])
def test_clip_grad_norm_syncs_once_and_upcasts_nothing(n_params):
    """One sync whatever the number of gradients (the (K, 2) float32 array of their sums of
    squares, added on the host), and no float64 array on the device: the stand-in counts any
    float64 array made from float32 data, so upcasts == 0 rules out a gradient's float64 copy
    and a float64 partial sum alike."""
    if standin.HAS_GPU:
        pytest.skip("counted by the stand-in")
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal((k % 3 + 1, 7)).astype(np.float32) * 3 for k in range(n_params)]
    params = _params([np.zeros_like(g) for g in grads], "cuda")
    _set_grads(params, grads)
    with standin.measure() as c:
        norm = clip_grad_norm_(params, 1.0)
    assert c.syncs == 1 and c.d2h_bytes == 2 * 4 * n_params, c
    assert c.upcasts == 0, c.upcast_sites
    assert kernels.ran("grad_squared_norms") == "cuda"
    want = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    assert norm == pytest.approx(want, rel=1e-13)      # float32 pairs carry float64 sums
    for p, g in zip(params, grads):
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad.numpy(), g / (want + 1e-6), rtol=1e-6)


def test_clip_grad_norm_nonfinite_on_the_device():
    p, q = _params([np.zeros(2, np.float32), np.zeros(3, np.float32)], "cuda")
    _set_grads([p, q], [np.array([np.inf, 1.0], np.float32), np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="total gradient norm is inf"):
        clip_grad_norm_([p, q], 1.0, error_if_nonfinite=True)
    assert clip_grad_norm_([p, q], 1.0) == math.inf
    np.testing.assert_array_equal(p.grad.numpy(), [np.inf, 1.0])         # left for the caller
    np.testing.assert_array_equal(q.grad.numpy(), np.ones(3))
    q.grad = tl.Tensor(np.array([np.nan, 0.0, 0.0], np.float32), device="cuda")
    assert math.isnan(clip_grad_norm_([p, q], 1.0))
