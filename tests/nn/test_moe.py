"""MoE: the batched expert dispatch against a slow per-token oracle, float64 gradchecks through
the input, the router and every expert, the router losses against their formulas and known
values, empty experts, and bad arguments.

The oracle (`moe_oracle`) loops over tokens in NumPy: softmax of the router logits, the K largest
probabilities (Python's stable sort: ties to the lower expert), renormalised gates, and the gated
sum of the chosen experts' outputs, each expert evaluated from its weights. Gradchecks use router
weights scaled so that the K-th and (K+1)-th logits of every token are far apart compared with
the finite-difference step (asserted), so the top-k choice cannot flip under perturbation.
"""
import math

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.nn.moe import MoE


# ---- the oracle: one token at a time, from the weights ---------------------------------------
def _affine(linear, v):
    out = linear.weight.numpy() @ v
    return out + linear.bias.numpy() if linear.bias is not None else out


def _silu(a):
    return a / (1.0 + np.exp(-a))


def _gelu(a):
    return np.array([0.5 * t * (1.0 + math.erf(t / math.sqrt(2.0))) for t in a])


def _expert_ref(expert, kind, v):
    """One expert on one token v: (C,) -> (C,)."""
    if kind == "swiglu":
        return _affine(expert.down, _silu(_affine(expert.gate, v)) * _affine(expert.up, v))
    return _affine(expert.down, _gelu(_affine(expert.up, v)))


def moe_oracle(moe, x):
    """The MoE output for x (NumPy, (..., C)), token by token."""
    x2d = x.reshape(-1, moe.dim)
    w_router = moe.router.weight.numpy()
    y = np.zeros_like(x2d)
    for n in range(x2d.shape[0]):
        logits = w_router @ x2d[n]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        chosen = sorted(range(moe.n_expert), key=lambda e: -p[e])[:moe.n_expert_per_token]
        gates = p[chosen] / (p[chosen].sum() if moe.normalize_topk else 1.0)
        for g, e in zip(gates, chosen):
            y[n] += g * _expert_ref(moe.experts[e], moe.expert_kind, x2d[n])
    return y.reshape(x.shape)


def topk_margin(moe, x):
    """Smallest gap, over tokens, between the K-th and (K+1)-th router logit (inf when K = E)."""
    K, E = moe.n_expert_per_token, moe.n_expert
    if K == E:
        return np.inf
    logits = x.reshape(-1, moe.dim) @ moe.router.weight.numpy().T
    ranked = -np.sort(-logits, axis=-1)
    return float((ranked[:, K - 1] - ranked[:, K]).min())


def _counts(moe):
    """The last forward's per-expert assignment counts on the host (on a GPU they stay there)."""
    return tl.backend.to_numpy(moe.last_counts)


def make_moe(device, kind="swiglu", K=2, E=4, dim=4, hidden=6, bias=False, router_scale=3.0,
             **kw):
    moe = MoE(dim, hidden, E, n_expert_per_token=K, expert=kind, bias=bias, device=device,
              dtype=np.float64, **kw)
    with tl.no_grad():
        moe.router.weight.mul_(router_scale)    # spread the logits: no near-ties in the top-k
    return moe


def set_router(moe, weight):
    with tl.no_grad():
        moe.router.weight.copy_(tl.Tensor(np.asarray(weight, dtype=np.float64),
                                          device=moe.router.weight.device))


# ---- output against the oracle ---------------------------------------------------------------
@pytest.mark.parametrize("kind,bias", [("swiglu", False), ("mlp", True), ("mlp", False)])
@pytest.mark.parametrize("K,normalize", [(1, True), (1, False), (2, True), (2, False), (4, True)])
def test_output_matches_per_token_oracle(device, kind, bias, K, normalize):
    moe = make_moe(device, kind, K, bias=bias, normalize_topk=normalize)
    x = np.random.default_rng(1).standard_normal((3, 5, 4))             # N = 15, odd
    y = moe(tl.Tensor(x, device=device))
    assert y.shape == x.shape and y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), moe_oracle(moe, x), rtol=0, atol=1e-10)
    assert _counts(moe).sum() == 15 * K and tl.backend.device_of(moe.last_counts) == device


def test_2d_input_and_counts(device):
    moe = make_moe(device, K=2)
    x = np.random.default_rng(2).standard_normal((9, 4))
    y = moe(tl.Tensor(x, device=device))
    assert y.shape == (9, 4)
    np.testing.assert_allclose(y.numpy(), moe_oracle(moe, x), rtol=0, atol=1e-10)
    # counts from the oracle's own choice of experts
    logits = x @ moe.router.weight.numpy().T
    expected = np.bincount(np.argsort(-logits, axis=-1, kind="stable")[:, :2].ravel(),
                           minlength=4)
    np.testing.assert_array_equal(_counts(moe), expected)
    assert moe.last_counts.dtype.kind == "i"


def test_each_expert_runs_once_on_its_batch(device):
    """Dispatch is batched: one call per expert. Where reads are free (the CPU), only experts that
    received tokens run, each on exactly its rows; on a GPU every expert runs on a fixed N rows
    (its tokens, then padding), so that no routing size is read back."""
    moe = make_moe(device, K=2, E=4)
    calls = []
    for e, expert in enumerate(moe.experts):
        original = expert.forward

        def counted(h, e=e, original=original):
            calls.append((e, h.shape[0]))
            return original(h)
        object.__setattr__(expert, "forward", counted)
    moe(tl.Tensor(np.random.default_rng(3).standard_normal((2, 7, 4)), device=device))
    counts = _counts(moe)
    if tl.backend.reads_are_free(device):
        ran = [e for e in range(4) if counts[e] > 0]
        assert calls == [(e, int(counts[e])) for e in ran]
    else:
        assert calls == [(e, 14) for e in range(4)]


# ---- gradients -------------------------------------------------------------------------------
def _with_losses(moe):
    """fn(x, *params): the output, the aux loss and the z-loss in one vector."""
    return lambda x, *params: tl.cat([moe(x).reshape(-1), moe.aux_loss.reshape(1),
                                      moe.z_loss.reshape(1)])


@pytest.mark.parametrize("kind,bias", [("swiglu", False), ("mlp", True)])
@pytest.mark.parametrize("K,normalize", [(1, True), (1, False), (2, True), (2, False)])
def test_gradcheck_every_parameter(device, kind, bias, K, normalize):
    moe = make_moe(device, kind, K, bias=bias, normalize_topk=normalize, aux_loss_coef=0.3,
                   z_loss_coef=0.05)
    x_np = np.random.default_rng(4).standard_normal((7, 4))             # N = 7, odd
    assert topk_margin(moe, x_np) > 1e-2        # eps = 1e-6 cannot flip a choice
    x = tl.Tensor(x_np, requires_grad=True, device=device)
    params = list(moe.parameters())
    moe(x)
    assert (moe.last_counts > 0).all()          # every expert's weights are really checked
    assert tl.gradcheck(_with_losses(moe), x, *params)


def test_gradcheck_directions_larger(device):
    moe = make_moe(device, "swiglu", K=2, E=6, dim=8, hidden=16, aux_loss_coef=0.1,
                   z_loss_coef=0.01)
    x_np = np.random.default_rng(5).standard_normal((3, 11, 8))
    assert topk_margin(moe, x_np) > 1e-3
    x = tl.Tensor(x_np, requires_grad=True, device=device)
    assert tl.gradcheck(_with_losses(moe), x, *moe.parameters(), directions=4, eps=1e-6)


def test_gradcheck_catches_a_wrong_gate(device, monkeypatch):
    """The checks above can fail: detach the gates and the router's gradient goes wrong."""
    moe = make_moe(device, K=2, aux_loss_coef=0.0)
    x = tl.Tensor(np.random.default_rng(6).standard_normal((7, 4)), device=device)
    real_softmax = tl.nn.functional.softmax
    monkeypatch.setattr("tinygrad_llm.nn.moe.F.softmax",
                        lambda t, axis=-1: real_softmax(t, axis).detach())
    assert not tl.gradcheck(lambda w: moe(x), moe.router.weight, raise_exception=False)


def test_aux_loss_gradient_reaches_router_only(device):
    moe = make_moe(device, K=2, aux_loss_coef=0.5)
    x = tl.Tensor(np.random.default_rng(7).standard_normal((2, 5, 4)), device=device)
    moe(x)
    moe.aux_loss.backward()
    g = moe.router.weight.grad
    assert g is not None and np.abs(g.numpy()).max() > 1e-4
    assert all(p.grad is None for p in moe.experts.parameters())

    def aux_loss_of(router_weight):         # the weight is the module's own, perturbed in place
        moe(x)
        return moe.aux_loss
    assert tl.gradcheck(aux_loss_of, moe.router.weight)


def test_float32_stays_float32():
    moe = MoE(8, 16, 4, n_expert_per_token=2, z_loss_coef=0.01)
    x = tl.Tensor(np.random.default_rng(8).standard_normal((2, 3, 8)).astype(np.float32),
                  requires_grad=True)
    y = moe(x)
    assert y.dtype == np.float32
    assert moe.aux_loss.dtype == np.float32 and moe.z_loss.dtype == np.float32
    ((y * y).sum() + moe.aux_loss + moe.z_loss).backward()
    assert x.grad.dtype == np.float32
    assert all(p.grad is None or p.grad.dtype == np.float32 for p in moe.parameters())


# ---- router losses ---------------------------------------------------------------------------
def cyclic_router(E):
    """Router weights for x = one-hot rows: token i's logits are c rotated by i, c = E-1..0, so
    token i picks experts i, i+1, ... and each expert's mean probability is exactly 1/E."""
    c = np.arange(E - 1, -1, -1, dtype=np.float64)
    return np.array([[c[(e - i) % E] for i in range(E)] for e in range(E)])


@pytest.mark.parametrize("K", [1, 2])
def test_aux_loss_balanced_routing_is_coef(device, K):
    E, coef = 4, 0.25
    moe = make_moe(device, K=K, E=E, dim=E, aux_loss_coef=coef)
    set_router(moe, cyclic_router(E))
    moe(tl.Tensor(np.eye(E), device=device))
    np.testing.assert_array_equal(_counts(moe), [K] * E)
    assert moe.aux_loss.shape == ()
    assert abs(moe.aux_loss.item() - coef * 1.0) < 1e-12


def test_aux_loss_uniform_probabilities_is_coef(device):
    moe = make_moe(device, K=2, aux_loss_coef=0.1)
    set_router(moe, np.zeros((4, 4)))          # every probability 1/E: P_e = 1/E
    moe(tl.Tensor(np.random.default_rng(9).standard_normal((5, 4)), device=device))
    assert abs(moe.aux_loss.item() - 0.1) < 1e-12


def test_aux_loss_grows_when_routing_collapses(device):
    E, coef, N = 4, 0.1, 9
    moe = make_moe(device, K=1, E=E, aux_loss_coef=coef)
    x = tl.Tensor(np.random.default_rng(10).uniform(0.5, 1.5, (N, 4)), device=device)
    set_router(moe, np.array([[4.0] * 4, [0.0] * 4, [0.0] * 4, [0.0] * 4]))
    moe(x)
    np.testing.assert_array_equal(_counts(moe), [N, 0, 0, 0])
    collapsed = moe.aux_loss.item()
    assert collapsed > 0.95 * E * coef          # E * f_0 * P_0 with f_0 = 1, P_0 near 1
    set_router(moe, np.zeros((4, 4)))
    moe(x)
    assert collapsed > 3.5 * moe.aux_loss.item()


def test_aux_loss_matches_formula(device):
    E, K, coef = 5, 2, 0.07
    moe = make_moe(device, K=K, E=E, aux_loss_coef=coef)
    x = np.random.default_rng(11).standard_normal((13, 4))
    moe(tl.Tensor(x, device=device))
    logits = x @ moe.router.weight.numpy().T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    counts = np.bincount(np.argsort(-p, axis=-1, kind="stable")[:, :K].ravel(), minlength=E)
    expected = coef * E * np.sum(counts / (13 * K) * p.mean(0))
    assert abs(moe.aux_loss.item() - expected) < 1e-12


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_z_loss_matches_formula(device, scale):
    coef = 0.02
    moe = make_moe(device, K=2, z_loss_coef=coef, router_scale=scale)
    x = np.random.default_rng(12).standard_normal((2, 7, 4))
    moe(tl.Tensor(x, device=device))
    logits = x.reshape(-1, 4) @ moe.router.weight.numpy().T
    m = logits.max(-1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(-1))
    expected = coef * np.mean(lse ** 2)
    assert np.isfinite(expected) and abs(moe.z_loss.item() - expected) <= 1e-12 * expected


def test_z_loss_off_is_zero_tensor(device):
    moe = make_moe(device, K=2, z_loss_coef=0.0)
    x = tl.Tensor(np.random.default_rng(13).standard_normal((3, 4)), requires_grad=True,
                  device=device)
    y = moe(x)
    assert isinstance(moe.z_loss, tl.Tensor) and moe.z_loss.shape == ()
    assert moe.z_loss.item() == 0.0 and not moe.z_loss.requires_grad
    ((y * y).sum() + moe.aux_loss + moe.z_loss).backward()        # adding it is harmless
    assert x.grad is not None


# ---- experts that receive no tokens ----------------------------------------------------------
@pytest.mark.parametrize("K", [1, 2])
def test_experts_without_tokens(device, K):
    moe = make_moe(device, K=K, E=4, aux_loss_coef=0.1)
    # x > 0, rows 0..2 positive and row 3 negative: expert 3's logit is always the smallest
    rng = np.random.default_rng(14)
    w = rng.uniform(0.1, 1.0, (4, 4))
    w[3] = -1.0
    set_router(moe, w)
    x_np = rng.uniform(0.5, 1.5, (5, 4))
    x = tl.Tensor(x_np, requires_grad=True, device=device)
    y = moe(x)
    assert _counts(moe)[3] == 0 and _counts(moe).sum() == 5 * K
    np.testing.assert_allclose(y.numpy(), moe_oracle(moe, x_np), rtol=0, atol=1e-10)
    cot = np.random.default_rng(15).standard_normal(y.shape)
    ((y * tl.Tensor(cot, device=device)).sum() + moe.aux_loss).backward()
    grads = [p.grad for p in moe.experts[3].parameters()]
    if tl.backend.reads_are_free(device):
        assert all(g is None for g in grads)          # an expert without tokens never ran
    else:                                             # on a GPU it ran on padding only
        assert all(not g.numpy().any() for g in grads)
    assert np.abs(moe.router.weight.grad.numpy()[3]).max() > 0     # the aux loss still sees it
    assert np.isfinite(x.grad.numpy()).all()


def test_parameter_names():
    moe = MoE(4, 6, 2, n_expert_per_token=1)
    assert list(moe.state_dict()) == [
        "router.weight",
        "experts.0.gate.weight", "experts.0.up.weight", "experts.0.down.weight",
        "experts.1.gate.weight", "experts.1.up.weight", "experts.1.down.weight"]


# ---- bad arguments ---------------------------------------------------------------------------
BAD = [
    # name, call, error type, substrings the message must contain
    ("k_above_e", lambda: MoE(4, 8, 4, n_expert_per_token=5), ValueError,
     ["n_expert_per_token", "5", "n_expert=4"]),
    ("k_zero", lambda: MoE(4, 8, 4, n_expert_per_token=0), ValueError,
     ["n_expert_per_token", "0"]),
    ("e_zero", lambda: MoE(4, 8, 0), ValueError, ["n_expert", "0"]),
    ("expert_kind", lambda: MoE(4, 8, 4, expert="moe"), ValueError,
     ["expert", "'moe'", "swiglu", "mlp"]),
    ("activation", lambda: MoE(4, 8, 4, expert="mlp", activation="swish"), ValueError,
     ["activation", "'swish'"]),
    ("aux_coef", lambda: MoE(4, 8, 4, aux_loss_coef=-1.0), ValueError, ["aux_loss_coef", "-1.0"]),
    ("z_coef", lambda: MoE(4, 8, 4, z_loss_coef="big"), ValueError, ["z_loss_coef", "'big'"]),
    ("x_last_dim", lambda: MoE(4, 8, 4)(tl.Tensor(np.ones((2, 3, 5), np.float32))), ValueError,
     ["x", "(2, 3, 5)", "dim=4"]),
    ("x_ndim", lambda: MoE(4, 8, 4)(tl.Tensor(np.ones((4,), np.float32))), ValueError,
     ["x", "(4,)"]),
    ("x_not_tensor", lambda: MoE(4, 8, 4)(np.ones((2, 4), np.float32)), TypeError,
     ["x", "ndarray"]),
]


@pytest.mark.parametrize("call,error,words", [pytest.param(c, e, w, id=n) for n, c, e, w in BAD])
def test_bad_arguments(call, error, words):
    with pytest.raises(error) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))
