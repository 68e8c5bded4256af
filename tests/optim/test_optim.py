"""Optimizers, schedules and clipping against their published rules.

Each update rule is written out below in float64 NumPy straight from its paper (or torch's docs
for SGD's momentum forms), and each optimizer must reproduce it to 1e-12 over several steps, on
both implementations (`impl`: reference arrays, fused Numba kernels) and every device. Then: the
fused kernels against the references (float32 and float64, sizes across the parallel threshold),
convergence on a quadratic, param groups, checkpoint round trips that continue bit-identically,
schedule values at their landmarks, clipping, dtype preservation, and bad input.
"""
import json
import math

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.kernels.cpu.optim  # noqa: F401  registers the fused updates
from tinygrad_llm import kernels, nn
from tinygrad_llm.nn.module import Module, Parameter
from tinygrad_llm.optim import (SGD, Adam, AdamW, LambdaLR, Lion, clip_grad_norm_, constant,
                                flatten_state_dict, linear_decay, param_groups_for_weight_decay,
                                set_lr, unflatten_state_dict, warmup_cosine)
from tinygrad_llm.optim.adam import adam_update
from tinygrad_llm.optim.lion import lion_update
from tinygrad_llm.optim.sgd import sgd_update

STEPS = 6
SHAPES = [(3, 4), (5,)]


# ---- the published rules, float64, one parameter ----------------------------------------------
def sgd_rule(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD's documented algorithm (Sutskever et al., 2013 for Nesterov)."""
    b = None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            b = g.copy() if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g
    return p


def adam_rule(p, grads, lr, betas, eps, weight_decay, decoupled):
    """Kingma & Ba (2015), Algorithm 1, with L2 (Adam) or decoupled (Loshchilov & Hutter, 2019,
    Algorithm 2 with schedule multiplier eta = lr) weight decay."""
    beta1, beta2 = betas
    m = v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def lion_rule(p, grads, lr, betas, weight_decay):
    """Chen et al. (2023), Algorithm 2."""
    beta1, beta2 = betas
    m = np.zeros_like(p)
    for g in grads:
        c = beta1 * m + (1 - beta1) * g
        p = p - lr * (np.sign(c) + weight_decay * p)
        m = beta2 * m + (1 - beta2) * g
    return p


RULES = [  # (id, optimizer factory, rule)
    ("sgd", lambda ps: SGD(ps, lr=0.1), lambda p, gs: sgd_rule(p, gs, 0.1)),
    ("sgd_momentum", lambda ps: SGD(ps, lr=0.1, momentum=0.9),
     lambda p, gs: sgd_rule(p, gs, 0.1, momentum=0.9)),
    ("sgd_dampening", lambda ps: SGD(ps, lr=0.1, momentum=0.8, dampening=0.3),
     lambda p, gs: sgd_rule(p, gs, 0.1, momentum=0.8, dampening=0.3)),
    ("sgd_nesterov", lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
     lambda p, gs: sgd_rule(p, gs, 0.05, momentum=0.9, nesterov=True)),
    ("sgd_weight_decay", lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.3,
                                        nesterov=True),
     lambda p, gs: sgd_rule(p, gs, 0.1, momentum=0.9, weight_decay=0.3, nesterov=True)),
    ("sgd_plain_weight_decay", lambda ps: SGD(ps, lr=0.1, weight_decay=0.3),
     lambda p, gs: sgd_rule(p, gs, 0.1, weight_decay=0.3)),
    ("adam", lambda ps: Adam(ps, lr=0.01), lambda p, gs: adam_rule(p, gs, 0.01, (0.9, 0.999),
                                                                   1e-8, 0.0, False)),
    ("adam_l2", lambda ps: Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2),
     lambda p, gs: adam_rule(p, gs, 0.01, (0.8, 0.99), 1e-6, 0.2, False)),
    ("adamw", lambda ps: AdamW(ps, lr=0.01, weight_decay=0.2),
     lambda p, gs: adam_rule(p, gs, 0.01, (0.9, 0.999), 1e-8, 0.2, True)),
    ("adamw_default_decay", lambda ps: AdamW(ps, lr=0.05),
     lambda p, gs: adam_rule(p, gs, 0.05, (0.9, 0.999), 1e-8, 0.01, True)),
    ("lion", lambda ps: Lion(ps, lr=0.01), lambda p, gs: lion_rule(p, gs, 0.01, (0.9, 0.99), 0)),
    ("lion_weight_decay", lambda ps: Lion(ps, lr=0.01, betas=(0.95, 0.98), weight_decay=0.5),
     lambda p, gs: lion_rule(p, gs, 0.01, (0.95, 0.98), 0.5)),
]
UPDATE_KERNEL = {"sgd": "sgd_update", "adam": "adam_update", "adamw": "adam_update",
                 "lion": "lion_update"}


def _params(rng, dtype=np.float64, device="cpu", shapes=SHAPES):
    return [Parameter(rng.standard_normal(s).astype(dtype), device=device) for s in shapes]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = tl.Tensor(g.astype(p.dtype), device=p.device)


@pytest.mark.parametrize("name, make, rule", RULES, ids=[r[0] for r in RULES])
def test_optimizer_follows_published_rule(name, make, rule, impl, device):
    rng = np.random.default_rng(1)
    params = _params(rng, device=device)
    start = [p.numpy().copy() for p in params]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(STEPS)]
    for g in grads[0]:
        g.reshape(-1)[::3] = 0          # zero gradients on the first step: Lion's sign(0) = 0
    opt = make(params)
    for step_grads in grads:
        _set_grads(params, step_grads)
        opt.step()
    kernel_name = UPDATE_KERNEL[name.split("_")[0]]
    want_impl = device if impl == "fast" else "reference"
    assert kernels.ran(kernel_name) == want_impl
    for k, p in enumerate(params):
        want = rule(start[k], [gs[k] for gs in grads])
        np.testing.assert_allclose(p.numpy(), want, rtol=0, atol=1e-12, err_msg=name)
        assert opt.state[k]["step"] == STEPS


def test_step_works_on_accumulated_gradients(impl):
    """Two micro-batches' backward() calls sum into .grad; step() uses the sum."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 4, 3))
    p = Parameter(rng.standard_normal((4, 3)))
    start = p.numpy().copy()
    opt = AdamW([p], lr=0.01, weight_decay=0.1)
    for x in (a, b):
        (p * tl.Tensor(x)).sum().backward()          # d/dp = x
    opt.step()
    np.testing.assert_allclose(p.numpy(), adam_rule(start, [a + b], 0.01, (0.9, 0.999), 1e-8,
                                                    0.1, True), rtol=0, atol=1e-12)


# ---- fused kernels against the references --------------------------------------------------------
KERNEL_SIZES = [1, 3, 17, 65, 100_003]      # 100_003 crosses the parallel threshold (65_536)


def _kernel_cases(rng, dtype):
    """(name, args) for each kernel and variant; state arrays start non-zero (mid-training)."""
    for n in KERNEL_SIZES:
        p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
        v = (rng.random(n) + 0.01).astype(dtype)
        g[::4] = m[::4] = 0             # unused rows: zero gradient and momentum (Lion: sign 0)
        for decoupled, wd in [(True, 0.1), (False, 0.1), (True, 0.0)]:
            yield "adam_update", (p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, wd, decoupled,
                                  1 - 0.9 ** 3, 1 - 0.999 ** 3)
        for momentum, dampening, wd, nesterov in [(0.0, 0.0, 0.0, False), (0.9, 0.0, 0.01, True),
                                                  (0.9, 0.1, 0.0, False)]:
            yield "sgd_update", (p, g, m if momentum else None, 0.1, momentum, dampening, wd,
                                 nesterov)
        for wd in (0.0, 0.3):
            yield "lion_update", (p, g, m, 1e-3, 0.9, 0.99, wd)
    p, g, m = (rng.standard_normal((17, 65)).astype(dtype) for _ in range(3))
    yield "adam_update", (p, g.T.copy().T, m, np.abs(m), 0.01, 0.8, 0.9, 1e-6, 0.0, False, 0.2,
                          0.1)         # strided g: made contiguous at the boundary
    yield "lion_update", (p, np.asfortranarray(g), m, 0.01, 0.9, 0.99, 0.0)


DISPATCH = {"adam_update": adam_update, "sgd_update": sgd_update, "lion_update": lion_update}


def _copies(args):
    return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_fused_updates_match_reference(dtype):
    rng = np.random.default_rng(3)
    tol = {np.float32: 2e-6, np.float64: 1e-14}[dtype]
    seen = set()
    for name, args in _kernel_cases(rng, dtype):
        want = kernels.reference(name)(*_copies(args))
        fresh = _copies(args)
        with tl.use_kernels(True):
            got = DISPATCH[name](*fresh)
        assert kernels.ran(name) == "cpu", f"{name} took the reference"
        assert got[0] is fresh[0], "the update is in place on p"
        for a, b in zip(got, want):
            if b is None:
                assert a is None
                continue
            assert a.dtype == dtype and a.shape == b.shape
            scale = max(1.0, float(np.abs(b).max()))
            err = float(np.abs(a.astype(np.float64) - b).max())
            assert err <= tol * scale, f"{name} n={args[0].size}: error {err:.3g}"
        seen.add(name)
    assert seen == set(DISPATCH)


def test_noncontiguous_parameter_runs_the_reference():
    p = np.zeros((8, 4), np.float32).T                 # written in place: no flat view
    g, m = np.ones((4, 8), np.float32), np.zeros((4, 8), np.float32)
    with tl.use_kernels(True):
        lion_update(p, g, m, 0.1, 0.9, 0.99, 0.0)
    assert kernels.ran("lion_update") == "reference"
    np.testing.assert_array_equal(p, -0.1 * np.ones((4, 8), np.float32))


def test_fused_path_is_taken_by_the_optimizer():
    p = Parameter(np.ones(5, np.float32))
    p.grad = tl.Tensor(np.ones(5, np.float32))
    with tl.use_kernels(True), kernels.trace() as log:
        AdamW([p]).step()
        Lion([p]).step()
        SGD([p], lr=0.1, momentum=0.9).step()
    assert log == [("adam_update", "cpu"), ("lion_update", "cpu"), ("sgd_update", "cpu")]


# ---- convergence, groups, skipping ---------------------------------------------------------------
@pytest.mark.parametrize("make, steps, tol", [
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9), 200, 1e-4),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True), 200, 1e-4),
    (lambda ps: Adam(ps, lr=0.05), 400, 1e-3),
    (lambda ps: AdamW(ps, lr=0.05, weight_decay=0.0), 400, 1e-3),
    (lambda ps: Lion(ps, lr=0.002), 1500, 5e-3),
], ids=["sgd_momentum", "sgd_nesterov", "adam", "adamw", "lion"])
def test_quadratic_converges(make, steps, tol, impl):
    """min 0.5 * sum(a * (x - c)^2), gradients through autograd, float32."""
    rng = np.random.default_rng(4)
    a = tl.Tensor(rng.uniform(0.5, 2.0, (4, 5)).astype(np.float32))
    c = rng.standard_normal((4, 5)).astype(np.float32)
    x = Parameter(np.zeros((4, 5), np.float32))
    opt = make([x])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (a * (x - tl.Tensor(c)) ** 2).sum()).backward()
        opt.step()
    assert x.dtype == np.float32
    assert float(np.abs(x.numpy() - c).max()) < tol


def test_param_groups_have_their_own_lr_and_weight_decay(impl):
    rng = np.random.default_rng(5)
    w, b = _params(rng)
    start = [w.numpy().copy(), b.numpy().copy()]
    opt = AdamW([{"params": [w], "lr": 0.1, "weight_decay": 0.5}, {"params": [b]}], lr=0.01,
                weight_decay=0.0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    grads = [[rng.standard_normal(p.shape) for p in (w, b)] for _ in range(3)]
    for gs in grads:
        _set_grads([w, b], gs)
        opt.step()
    np.testing.assert_allclose(w.numpy(), adam_rule(start[0], [gs[0] for gs in grads], 0.1,
                                                    (0.9, 0.999), 1e-8, 0.5, True), atol=1e-12)
    np.testing.assert_allclose(b.numpy(), adam_rule(start[1], [gs[1] for gs in grads], 0.01,
                                                    (0.9, 0.999), 1e-8, 0.0, True), atol=1e-12)


def test_parameters_without_grad_are_skipped():
    rng = np.random.default_rng(6)
    w, b = _params(rng)
    before = b.numpy().copy()
    version = b._version[0]
    opt = Adam([w, b])
    w.grad = tl.Tensor(np.ones(w.shape))
    opt.step()
    np.testing.assert_array_equal(b.numpy(), before)
    assert b._version[0] == version and 1 not in opt.state
    assert w._version[0] == 1 and opt.state[0]["step"] == 1


def test_zero_grad():
    rng = np.random.default_rng(7)
    params = _params(rng)
    _set_grads(params, [np.ones(p.shape) for p in params])
    opt = SGD(params, lr=0.1)
    opt.zero_grad(set_to_none=False)
    assert all(np.array_equal(p.grad.numpy(), np.zeros(p.shape)) for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


class _Tiny(Module):
    """Embedding (V=7, C=4, tied to the head), a Linear with bias, a LayerNorm, a frozen Linear."""

    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(7, 4)
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4, bias=False)
        self.frozen.weight.requires_grad_(False)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.tok_emb.weight


def test_param_groups_for_weight_decay_follows_nanogpt():
    model = _Tiny()
    groups = param_groups_for_weight_decay(model, 0.1)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert decay == {id(model.tok_emb.weight), id(model.fc.weight)}
    assert no_decay == {id(model.fc.bias), id(model.norm.weight), id(model.norm.bias)}
    groups = param_groups_for_weight_decay(model, 0.1, decay_embeddings=False)
    assert {id(p) for p in groups[0]["params"]} == {id(model.fc.weight)}
    assert id(model.head.weight) in {id(p) for p in groups[1]["params"]}
    opt = AdamW(groups, lr=1e-3)
    assert len(opt.param_groups) == 2


def test_param_groups_for_weight_decay_leaves_out_empty_groups():
    lin = nn.Linear(3, 2, bias=False)
    groups = param_groups_for_weight_decay(lin, 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


# ---- checkpoints ---------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd_momentum": lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1),
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "adam": lambda ps: Adam(ps, lr=0.01, weight_decay=0.1),
    "adamw": lambda ps: AdamW([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0}],
                              lr=0.01),
    "lion": lambda ps: Lion(ps, lr=0.01, weight_decay=0.1),
}


def _quadratic_steps(opt, params, targets, n):
    """n steps on 0.5 * |p - target|^2 (gradient p - target, a function of p, so a resumed run
    only matches if the state came back exactly)."""
    for _ in range(n):
        for p, t in zip(params, targets):
            p.grad = tl.Tensor(p.data - t)
        opt.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_bit_identically(name, dtype, impl):
    """5 steps, save (through JSON and arrays, as a checkpoint), load into a fresh optimizer on
    copies of the parameters, 5 more steps == the original run's 10 steps, bit for bit."""
    rng = np.random.default_rng(8)
    targets = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    opt = OPTIMIZERS[name](params)
    _quadratic_steps(opt, params, targets, 5)
    arrays, meta = flatten_state_dict(opt.state_dict())
    meta = json.loads(json.dumps(meta))
    snapshot = {k: v.copy() for k, v in arrays.items()}
    saved = [p.numpy().copy() for p in params]
    _quadratic_steps(opt, params, targets, 5)
    for k, v in arrays.items():                     # state_dict() handed out copies
        np.testing.assert_array_equal(v, snapshot[k])

    resumed = [Parameter(a) for a in saved]
    fresh = OPTIMIZERS[name](resumed)
    fresh.load_state_dict(unflatten_state_dict(arrays, meta))
    _quadratic_steps(fresh, resumed, targets, 5)
    for a, b in zip(params, resumed):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert sorted(fresh.state) == sorted(opt.state)
    for k, state in fresh.state.items():
        assert state["step"] == 10
        for n, v in state.items():
            if n != "step":
                assert v.dtype == dtype
                np.testing.assert_array_equal(v, opt.state[k][n])


def test_state_dict_restores_hyperparameters_and_checks_shapes():
    rng = np.random.default_rng(9)
    params = _params(rng)
    opt = AdamW(params, lr=0.01, betas=(0.8, 0.9))
    _set_grads(params, [np.ones(p.shape) for p in params])
    opt.step()
    set_lr(opt, 0.5)
    arrays, meta = flatten_state_dict(opt.state_dict())
    assert set(arrays) == {"state.0.exp_avg", "state.0.exp_avg_sq", "state.1.exp_avg",
                           "state.1.exp_avg_sq"}
    meta = json.loads(json.dumps(meta))
    other = AdamW(_params(rng), lr=0.01)
    other.load_state_dict(unflatten_state_dict(arrays, meta))
    assert other.param_groups[0]["lr"] == 0.5 and other.param_groups[0]["betas"] == (0.8, 0.9)

    wrong = AdamW(_params(rng, shapes=[(4, 3), (5,)]))
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \(4, 3\)\): state 'exp_avg' has "
                                         r"shape \(3, 4\)"):
        wrong.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="1 param groups"):
        AdamW([{"params": _params(rng)[:1]}, {"params": _params(rng)[1:]}]).load_state_dict(
            opt.state_dict())
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['eps'\] for Lion"):
        Lion(_params(rng)).load_state_dict(opt.state_dict())
    damaged = opt.state_dict()
    del damaged["state"][1]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"parameter 1 has state keys \['exp_avg', 'step'\]"):
        AdamW(_params(rng)).load_state_dict(damaged)
    with pytest.raises(ValueError, match="unexpected array 'junk.0'"):
        unflatten_state_dict({"junk.0": np.zeros(1)}, meta)


# ---- schedules -----------------------------------------------------------------------------------
def test_warmup_cosine_landmarks():
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)              # max_lr / warmup_steps
    assert warmup_cosine(4, **kw) == pytest.approx(0.5)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)              # warmup reached
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)             # decay starts at max_lr
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)            # midpoint: the mean
    assert warmup_cosine(35, **kw) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == 0.1
    lrs = [warmup_cosine(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert warmup_cosine(0, 1.0, 0.0, 0, 4) == 1.0                    # no warmup


def test_linear_decay_and_constant_landmarks():
    kw = dict(max_lr=1.0, min_lr=0.2, warmup_steps=4, total_steps=24)
    assert linear_decay(0, **kw) == pytest.approx(0.25)
    assert linear_decay(4, **kw) == pytest.approx(1.0)
    assert linear_decay(14, **kw) == pytest.approx(0.6)
    assert linear_decay(19, **kw) == pytest.approx(0.4)
    assert linear_decay(24, **kw) == pytest.approx(0.2) and linear_decay(99, **kw) == 0.2
    assert constant(0, 0.3) == 0.3 and constant(10_000, 0.3) == 0.3
    assert constant(1, 0.4, warmup_steps=4) == pytest.approx(0.2) and constant(4, 0.4, 4) == 0.4


def test_lambda_lr_scales_each_group_and_round_trips():
    rng = np.random.default_rng(10)
    w, b = _params(rng)
    opt = SGD([{"params": [w], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=0.5)
    sched = LambdaLR(opt, lambda s: warmup_cosine(s, 1.0, 0.0, 2, 6))
    assert sched.get_last_lr() == pytest.approx([0.5, 0.05])
    sched.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([1.0, 0.1])
    state = json.loads(json.dumps(sched.state_dict()))
    other = SGD([{"params": [w], "lr": 7.0}, {"params": [b], "lr": 7.0}], lr=0.5)
    again = LambdaLR(other, lambda s: warmup_cosine(s, 1.0, 0.0, 2, 6))
    again.load_state_dict(state)
    sched.step()
    again.step()
    assert again.get_last_lr() == pytest.approx(sched.get_last_lr())
    factor = 0.5 * (1 + math.cos(math.pi / 4))                 # step 3: a quarter of the decay
    assert again.get_last_lr() == pytest.approx([factor, factor * 0.1])


def test_set_lr_writes_every_group():
    rng = np.random.default_rng(11)
    w, b = _params(rng)
    opt = Lion([{"params": [w]}, {"params": [b], "lr": 0.5}])
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


# ---- clipping ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_clip_grad_norm_scales_to_max_norm(dtype, device):
    rng = np.random.default_rng(12)
    params = _params(rng, dtype, device) + [Parameter(np.ones(2, dtype), device=device)]
    grads = [rng.standard_normal(s) * 3 for s in SHAPES]
    _set_grads(params[:2], grads)                               # the third has no grad
    norm = math.sqrt(sum(float((g.astype(dtype).astype(np.float64) ** 2).sum())
                         for g in grads))
    got = clip_grad_norm_(params, 1.0)
    assert isinstance(got, float) and got == pytest.approx(norm, rel=1e-12)
    clipped = [p.grad.numpy() for p in params[:2]]
    assert all(c.dtype == dtype for c in clipped)
    after = math.sqrt(sum(float((c.astype(np.float64) ** 2).sum()) for c in clipped))
    assert after == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(clipped[0], grads[0] / (norm + 1e-6),
                               rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert params[2].grad is None


def test_clip_grad_norm_below_max_leaves_grads_alone():
    p = Parameter(np.zeros(4))
    p.grad = tl.Tensor(np.array([0.3, 0.4, 0.0, 0.0]))
    assert clip_grad_norm_(p, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(p.grad.numpy(), [0.3, 0.4, 0.0, 0.0])
    assert clip_grad_norm_([Parameter(np.zeros(2))], 1.0) == 0.0


def test_clip_grad_norm_nonfinite():
    p = Parameter(np.zeros(2, np.float32))
    p.grad = tl.Tensor(np.array([np.inf, 1.0], np.float32))
    with pytest.raises(ValueError, match="total gradient norm is inf"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert clip_grad_norm_([p], 1.0) == math.inf
    np.testing.assert_array_equal(p.grad.numpy(), [np.inf, 1.0])     # left for the caller


def test_clip_norm_is_accumulated_in_float64():
    """1e6 entries of 0.1 in float32: float32 accumulation drifts, the float64 sum does not."""
    p = Parameter(np.zeros(1_000_000, np.float32))
    p.grad = tl.Tensor(np.full(1_000_000, 0.1, np.float32))
    exact = math.sqrt(1_000_000 * float(np.float32(0.1)) ** 2)
    assert clip_grad_norm_([p], 1e9) == pytest.approx(exact, rel=1e-12)


# ---- dtypes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", list(OPTIMIZERS.values()), ids=list(OPTIMIZERS))
def test_float32_stays_float32(make, impl):
    rng = np.random.default_rng(13)
    params = _params(rng, np.float32, shapes=[(3, 4), (5,), (70_000,)])
    opt = make(params)
    for _ in range(2):
        _set_grads(params, [rng.standard_normal(p.shape) for p in params])
        opt.step()
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in params)
    for state in opt.state.values():
        assert all(v.dtype == np.float32 for n, v in state.items() if n != "step")
    for entry in opt.state_dict()["state"].values():
        assert all(v.dtype == np.float32 for n, v in entry.items() if n != "step")


def test_float64_grad_for_float32_parameter_is_cast():
    p = Parameter(np.ones(3, np.float32))
    p.grad = tl.Tensor(np.ones(3, np.float64))
    AdamW([p]).step()
    assert p.dtype == np.float32


# ---- bad input -----------------------------------------------------------------------------------
BAD = [
    (lambda ps: AdamW(ps, lr=-1e-3), ValueError,
     r"lr: expected a value in \[0.0, inf\], got -0.001"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), ValueError, r"betas\[0\].*got 1.0"),
    (lambda ps: AdamW(ps, betas=(0.9, -0.1)), ValueError, r"betas\[1\].*got -0.1"),
    (lambda ps: Lion(ps, betas=(0.9,)), ValueError, "betas: expected a pair"),
    (lambda ps: AdamW(ps, eps=-1.0), ValueError, "eps"),
    (lambda ps: AdamW(ps, weight_decay=float("nan")), ValueError, "weight_decay"),
    (lambda ps: SGD(ps, lr="0.1"), TypeError, "lr: expected a real number, got str"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (lambda ps: SGD(ps, lr=0.1, dampening=2.0), ValueError, "dampening"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), ValueError, "nesterov: needs momentum > 0"),
    (lambda ps: AdamW([{"params": ps, "momentum": 0.9}]), ValueError,
     r"unknown key\(s\) \['momentum'\] for AdamW"),
    (lambda ps: AdamW(ps[0]), TypeError, "single Tensor"),
    (lambda ps: AdamW([]), ValueError, "empty parameter list"),
    (lambda ps: AdamW([ps[0], ps[0]]), ValueError, "appears twice"),
    (lambda ps: AdamW([{"params": ps}, {"params": ps[:1]}]), ValueError, "appears twice"),
    (lambda ps: AdamW([ps[0], {"params": ps[1:]}]), TypeError, "mix"),
    (lambda ps: AdamW([np.zeros(3)]), TypeError, "expected Parameters, got ndarray"),
    (lambda ps: warmup_cosine(-1, 1.0, 0.1, 10, 100), ValueError, "step"),
    (lambda ps: warmup_cosine(0, 1.0, 0.1, 10, 5), ValueError, "total_steps"),
    (lambda ps: linear_decay(0, 1.0, 0.1, 2.5, 5), ValueError, "warmup_steps"),
    (lambda ps: clip_grad_norm_(ps, -1.0), ValueError, "max_norm"),
    (lambda ps: set_lr(AdamW(ps), -1.0), ValueError, "lr"),
    (lambda ps: LambdaLR(AdamW(ps), 0.5), TypeError, "lr_lambda"),
]


@pytest.mark.parametrize("call, error, message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_raises_naming_the_argument(call, error, message):
    params = _params(np.random.default_rng(14))
    with pytest.raises(error, match=message):
        call(params)


def test_grad_of_the_wrong_shape_raises():
    p = Parameter(np.ones((2, 3)))
    p.grad = tl.Tensor(np.ones(6))
    with pytest.raises(ValueError, match=r"parameter 0: grad has shape \(6,\)"):
        SGD([p], lr=0.1).step()
