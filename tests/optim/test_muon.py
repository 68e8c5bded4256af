"""Muon (Jordan et al., 2024) against oracles written here.

Newton-Schulz is a matrix polynomial, so its result is U f^k(S) V^T for G = U S V^T with f the
scalar quintic: the SVD gives an oracle independent of the iteration. The whole update rule is
written again below in float64 NumPy on that oracle, and Muon must reproduce it over several
steps under a changing schedule, on every device. Then: the AdamW groups equal AdamW bit for bit,
a tiny GPT's loss falls, checkpoints continue bit-identically, which GPT parameters
muon_param_groups puts where, the FLOP count, no host syncs on the device, and bad input.
"""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import backend
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.nn.module import Parameter
from tinygrad_llm.optim import (AdamW, Muon, flatten_state_dict, muon_param_groups,
                                newton_schulz_flops, set_lr, unflatten_state_dict)
from tinygrad_llm.optim import muon
from tinygrad_llm.optim.muon import newton_schulz
from tinygrad_llm.train import TrainConfig, Trainer

A, B, C = 3.4445, -4.7750, 2.0315          # Jordan's published quintic
EPS = 1e-7


# ---- the oracle: the quintic on the singular values --------------------------------------------
def quintic(s, steps):
    for _ in range(steps):
        s = A * s + B * s ** 3 + C * s ** 5
    return s


def orthogonalise_by_svd(g, steps):
    """U f^steps(S / (|G|_F + eps)) V^T in float64."""
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    return (u * quintic(s / (np.linalg.norm(g) + EPS), steps)) @ vt


def muon_rule(p, grads, lrs, momentum, nesterov, steps, weight_decay, scale):
    """Jordan et al. (2024), as their Muon code computes it, one matrix; lrs: one per step."""
    b = np.zeros_like(p)
    for g, lr in zip(grads, lrs):
        b = momentum * b + (1 - momentum) * g
        u = (1 - momentum) * g + momentum * b if nesterov else b
        p = p * (1 - lr * weight_decay) - lr * scale * orthogonalise_by_svd(u, steps)
    return p


def adamw_rule(p, grads, lrs, betas, eps, weight_decay):
    """Loshchilov & Hutter (2019), Algorithm 2, lr as the schedule multiplier."""
    m = v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        p = p - lr * weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g ** 2
        p = p - lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return p


# ---- Newton-Schulz -------------------------------------------------------------------------------
def _low_rank(rng, rows, cols, rank):
    return rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))


NS_CASES = [  # (id, matrix maker)
    ("wide", lambda rng: rng.standard_normal((6, 10))),
    ("tall", lambda rng: rng.standard_normal((12, 5))),
    ("square", lambda rng: rng.standard_normal((8, 8))),
    ("rank_deficient", lambda rng: _low_rank(rng, 10, 8, 3)),
    ("rank_one_tall", lambda rng: _low_rank(rng, 9, 4, 1)),
    ("size_1", lambda rng: np.array([[-0.3]])),
    ("row", lambda rng: rng.standard_normal((1, 7))),
    ("column", lambda rng: rng.standard_normal((7, 1))),
    ("large_values", lambda rng: 1e4 * rng.standard_normal((5, 9))),
]


@pytest.mark.parametrize("make", [c[1] for c in NS_CASES], ids=[c[0] for c in NS_CASES])
def test_newton_schulz_is_the_quintic_on_the_singular_values(make, device):
    rng = np.random.default_rng(0)
    g = make(rng)
    out = backend.to_numpy(newton_schulz(tl.Tensor(g, device=device).data, 5))
    assert out.shape == g.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, orthogonalise_by_svd(g, 5), rtol=0, atol=1e-10)
    # the quintic's band: singular values of G / |G|_F above 3e-3 land in [0.68, 1.21] after 5
    # steps (a = 3.4445 grows small ones 3.4x a step); zero ones stay zero
    s_in = np.linalg.svd(g, compute_uv=False) / np.linalg.norm(g)
    s_out = np.linalg.svd(out, compute_uv=False)
    assert np.all((s_out[s_in > 3e-3] > 0.68) & (s_out[s_in > 3e-3] < 1.21)), s_out
    assert np.all(s_out[s_in < 1e-12] < 1e-9), s_out
    assert np.sum(s_in > 3e-3) >= 1


def test_newton_schulz_keeps_float32_and_zero():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((16, 40)).astype(np.float32)
    out = newton_schulz(g, 5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, orthogonalise_by_svd(g.astype(np.float64), 5), atol=2e-5)
    assert not np.any(newton_schulz(np.zeros((3, 4), np.float32), 5))


@pytest.mark.parametrize("shape", [(5, 12), (12, 5), (3, 5), (1, 9), (16, 100)])
@pytest.mark.parametrize("steps", [1, 2, 5, 7])
def test_newton_schulz_gram_form_is_the_direct_one(shape, steps):
    """The (m, m) Gram iteration (A <- Q A Q, P <- Q P, then P X0) is the direct one's products in
    another order: float64 agrees to rounding, float32 to well under the update's scale."""
    rng = np.random.default_rng(steps)
    x = rng.standard_normal(shape)
    x = (x.T if shape[0] > shape[1] else x) / np.linalg.norm(x)
    want = muon._newton_schulz_direct(x, steps)
    np.testing.assert_allclose(muon._newton_schulz_gram(x, steps), want, rtol=0, atol=1e-12)
    low = x.astype(np.float32)
    np.testing.assert_allclose(muon._newton_schulz_gram(low, steps), want, rtol=0, atol=2e-5)


def test_newton_schulz_runs_the_cheaper_form(monkeypatch):
    ran = []
    for name in ("_newton_schulz_direct", "_newton_schulz_gram"):
        form = getattr(muon, name)
        monkeypatch.setattr(muon, name, lambda x, k, f=form, n=name: ran.append(n) or f(x, k))
    for shape in [(8, 12), (8, 13), (24, 8), (8, 8)]:     # n > 1.5 m: Gram
        newton_schulz(np.ones(shape), 5)
    newton_schulz(np.ones((4, 16)), 1)                       # one step: the same cost, direct
    assert ran == ["_newton_schulz_direct", "_newton_schulz_gram", "_newton_schulz_gram",
                   "_newton_schulz_direct", "_newton_schulz_direct"]


def test_newton_schulz_flops_counts_the_products_of_the_form_it_runs():
    # (12, 5) is transposed to (5, 12): directly X X^T 2*5*5*12, A^2 2*5^3, B X 2*5*5*12 per
    # step (7250 for 5); the Gram form X0 X0^T and P X0 once (1200) and 17 (5, 5) products (4250)
    assert newton_schulz_flops((12, 5), 5) == 1200 + 17 * 250 < 5 * (600 + 250 + 600)
    assert newton_schulz_flops((5, 12), 5) == newton_schulz_flops((12, 5), 5)
    assert newton_schulz_flops((8, 8), 5) == 5 * (4 * 512 + 2 * 512)       # square: direct
    assert newton_schulz_flops((128, 384), 1) == 4 * 128 ** 2 * 384 + 2 * 128 ** 3
    model = GPT(GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=8, block_size=4,
                                 vocab_size=5))
    opt = Muon(muon_param_groups(model, 1e-3, 1e-3), ns_steps=3)
    want = sum(newton_schulz_flops(p.shape, 3) for p in opt.param_groups[0]["params"])
    assert opt.flops_per_step() == want > 0


# ---- the update rule -----------------------------------------------------------------------------
STEPS = 5
SCHEDULE = [0.02, 0.05, 0.04, 0.01, 0.03]      # set_lr before each step


@pytest.mark.parametrize("nesterov, weight_decay, scale_kind", [
    (True, 0.0, "rms"), (False, 0.1, "rms"), (True, 0.3, "spectral")])
def test_update_follows_the_rule_under_a_schedule(nesterov, weight_decay, scale_kind, device):
    rng = np.random.default_rng(2)
    shapes = [(6, 4), (3, 8)]                  # Muon: a tall and a wide matrix
    start = [rng.standard_normal(s) for s in shapes] + [rng.standard_normal(4)]
    params = [Parameter(a.copy(), device=device) for a in start]
    opt = Muon([{"params": params[:2], "lr_scale": 2.0},
                {"params": params[2:], "muon": False, "lr_scale": 0.5, "weight_decay": 0.2}],
               lr=1.0, momentum=0.9, nesterov=nesterov, ns_steps=4, weight_decay=weight_decay,
               update_scale=scale_kind, betas=(0.8, 0.9), eps=1e-6)
    grads = [[rng.standard_normal(a.shape) for a in start] for _ in range(STEPS)]
    for lr, gs in zip(SCHEDULE, grads):
        for p, g in zip(params, gs):
            p.grad = tl.Tensor(g, device=device)
        set_lr(opt, lr)
        opt.step()
    for k, (rows, cols) in enumerate(shapes):
        scale = (0.2 * np.sqrt(max(rows, cols)) if scale_kind == "rms"
                 else np.sqrt(max(1, rows / cols)))
        want = muon_rule(start[k], [gs[k] for gs in grads], [2 * lr for lr in SCHEDULE], 0.9,
                         nesterov, 4, weight_decay, scale)
        np.testing.assert_allclose(params[k].numpy(), want, rtol=0, atol=1e-11)
    want = adamw_rule(start[2], [gs[2] for gs in grads], [0.5 * lr for lr in SCHEDULE],
                      (0.8, 0.9), 1e-6, 0.2)
    np.testing.assert_allclose(params[2].numpy(), want, rtol=0, atol=1e-12)
    assert [opt.state[i]["step"] for i in range(3)] == [STEPS] * 3
    assert set(opt.state[0]) == {"step", "momentum_buffer"}
    assert set(opt.state[2]) == {"step", "exp_avg", "exp_avg_sq"}


def test_adamw_groups_equal_adamw_bit_for_bit(impl, device):
    """With every group "muon": False and lr_scale 1, Muon is AdamW exactly."""
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,)]]
    runs = []
    for make in (lambda ps: AdamW(ps, lr=0.01, betas=(0.9, 0.95), weight_decay=0.1),
                 lambda ps: Muon(ps, lr=0.01, muon=False, weight_decay=0.1)):
        params = [Parameter(a.copy(), device=device) for a in start]
        opt = make(params)
        for step in range(3):
            for p, a in zip(params, start):
                p.grad = tl.Tensor(np.cos(a * (step + 1)), device=device)
            opt.step()
        runs.append([p.numpy() for p in params])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_muon_state_stays_on_the_device_without_syncs_or_upcasts(standin_cuda):
    rng = np.random.default_rng(4)
    params = [Parameter(rng.standard_normal(s).astype(np.float32), device="cuda")
              for s in [(8, 4), (4,), (3,)]]
    opt = Muon([{"params": params[:1]}, {"params": params[1:], "muon": False}])
    for p in params:
        p.grad = tl.Tensor(np.ones(p.shape, np.float32), device="cuda")
    with standin_cuda.measure() as counted:
        opt.step()
        opt.step()
    assert counted.syncs == 0 and counted.upcasts == 0, counted
    assert all(p.data.dtype == np.float32 for p in params)
    assert all(v.dtype == np.float32 for s in opt.state.values()
               for n, v in s.items() if n != "step")


# ---- a tiny GPT ----------------------------------------------------------------------------------
def _tiny_gpt(**kw):
    return GPT(GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=16, block_size=8,
                                vocab_size=11, **kw))


def test_muon_param_groups_sort_a_gpt():
    model = _tiny_gpt(tie_embeddings=False)
    groups = muon_param_groups(model, muon_lr=0.02, adam_lr=0.004, weight_decay=0.1,
                               embed_lr=0.1, head_lr=0.002)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = dict(model.named_parameters())
    kinds = [sorted(names[id(p)] for p in g["params"]) for g in groups]
    assert all(n.startswith("blocks.") and n.endswith("weight") for n in kinds[0])
    assert {tuple(by_name[n].shape)
            for n in kinds[0]} == {(48, 16), (16, 16), (64, 16), (16, 64)}
    assert kinds[1] == ["pos_emb.weight", "tok_emb.weight"] and kinds[2] == ["head.weight"]
    assert all(by_name[n].ndim == 1 for n in kinds[3])
    assert sum(len(k) for k in kinds) == len(list(model.parameters()))
    assert [g["muon"] for g in groups] == [True, False, False, False]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1, 0.1, 0.0]
    effective = [g["lr"] * g["lr_scale"] for g in groups]
    assert effective == pytest.approx([0.02, 0.1, 0.002, 0.004], rel=1e-15)
    assert all(g["lr"] == 0.004 for g in groups)          # the schedule's peak: adam_lr
    tied = muon_param_groups(_tiny_gpt(), 0.02, 0.004, decay_embeddings=False, base_lr=0.02)
    assert len(tied) == 3 and id(_tiny_gpt().head.weight) not in {id(p) for p in tied[1]}
    assert tied[1]["weight_decay"] == 0.0 and tied[0]["lr_scale"] == 1.0


def _batch(rng):
    x = rng.integers(0, 11, (4, 8))
    return x, (x + 1) % 11                        # next token: a learnable map


def test_tiny_gpt_loss_falls_with_muon():
    model = _tiny_gpt()
    opt = Muon(muon_param_groups(model, muon_lr=0.02, adam_lr=0.01), betas=(0.9, 0.99))
    rng = np.random.default_rng(5)
    losses = []
    for _ in range(40):
        x, y = _batch(rng)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_state_dict_round_trip_continues_bit_identically(dtype, device):
    """5 steps, checkpoint (arrays + JSON), load into a fresh optimizer over copies of the
    parameters, 5 more steps == the original's 10, bit for bit; gradients depend on p."""
    rng = np.random.default_rng(6)
    shapes = [(5, 3), (4, 6), (6,)]
    targets = [rng.standard_normal(s).astype(dtype) for s in shapes]

    def make(params):
        return Muon([{"params": params[:2], "lr_scale": 3.0},
                     {"params": params[2:], "muon": False}], lr=0.01, weight_decay=0.1)

    def run(opt, params, n):
        for step in range(n):
            set_lr(opt, 0.01 * (1 + step % 3))
            for p, t in zip(params, targets):
                p.grad = tl.Tensor(p.numpy() - t, device=device)
            opt.step()

    params = [Parameter(rng.standard_normal(s).astype(dtype), device=device) for s in shapes]
    opt = make(params)
    run(opt, params, 5)
    arrays, meta = flatten_state_dict(opt.state_dict())
    meta = json.loads(json.dumps(meta))
    saved = [p.numpy().copy() for p in params]
    run(opt, params, 5)
    resumed = [Parameter(a, device=device) for a in saved]
    fresh = make(resumed)
    fresh.load_state_dict(unflatten_state_dict(arrays, meta))
    run(fresh, resumed, 5)
    for a, b in zip(params, resumed):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert fresh.param_groups[0]["lr_scale"] == 3.0 and fresh.param_groups[1]["muon"] is False
    with pytest.raises(ValueError, match="param group 0 has muon=True in the state, False here"):
        Muon([{"params": resumed[:1], "muon": False},
              {"params": resumed[1:], "muon": False}]).load_state_dict(opt.state_dict())


def _muon_trainer(out_dir, seed):
    tl.manual_seed(seed)
    model = _tiny_gpt(dropout=0.1)
    opt = Muon(muon_param_groups(model, muon_lr=0.02, adam_lr=0.01, weight_decay=0.1))
    data = (np.arange(3000) * 7 % 11).astype(np.int64)
    config = TrainConfig(batch_size=4, block_size=8, max_iters=6, eval_interval=100,
                         eval_iters=2, warmup_iters=2, learning_rate=0.01, seed=5,
                         out_dir=str(out_dir), progress=False)
    return Trainer(model, opt, data[:2500], data[2500:], config, log=None)


def test_trainer_drives_every_group_and_resumes_bit_identically(tmp_path):
    """The Trainer's schedule writes one lr; each group steps at lr * lr_scale; a checkpoint
    taken mid-run resumes to the same losses and weights, bit for bit."""
    straight = _muon_trainer(tmp_path / "a", 0)
    losses_straight = [straight.train_step() for _ in range(6)]
    lrs = {g["lr"] for g in straight.optimizer.param_groups}
    assert lrs == {straight.lr_at(5)}
    assert straight.optimizer.param_groups[0]["lr_scale"] == pytest.approx(2.0)

    first = _muon_trainer(tmp_path / "b", 0)
    losses = [first.train_step() for _ in range(3)]
    path = str(tmp_path / "b" / "mid.safetensors")
    first.save(path)
    resumed = _muon_trainer(tmp_path / "c", 99)         # other weights, restored by load
    resumed.load(path)
    losses += [resumed.train_step() for _ in range(3)]
    assert losses == losses_straight
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


# ---- bad input -----------------------------------------------------------------------------------
def _w():
    return [Parameter(np.ones((3, 2)))]


BAD = [
    (lambda: Muon(_w(), lr=-0.1), ValueError, r"lr: expected a value in \[0.0, inf\], got -0.1"),
    (lambda: Muon(_w(), momentum=1.0), ValueError, r"momentum: .*\[0.0, 1.0\), got 1.0"),
    (lambda: Muon(_w(), momentum=-0.5), ValueError, "momentum: .*got -0.5"),
    (lambda: Muon(_w(), ns_steps=0), ValueError, "ns_steps: expected at least 1.*got 0"),
    (lambda: Muon(_w(), ns_steps=2.5), TypeError, "ns_steps: expected an int, got float"),
    (lambda: Muon(_w(), update_scale="adam"), ValueError, "update_scale: expected one of"),
    (lambda: Muon(_w(), lr_scale=-1.0), ValueError, "lr_scale"),
    (lambda: Muon(_w(), muon=1), TypeError, "muon: expected a bool, got 1"),
    (lambda: Muon(_w(), nesterov="yes"), TypeError, "nesterov: expected a bool"),
    (lambda: Muon(_w(), betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (lambda: Muon([Parameter(np.ones(3))]), ValueError,
     r"param group 0: Muon updates 2-D weight matrices, got a parameter of shape \(3,\)"),
    (lambda: Muon([{"params": _w()}, {"params": [Parameter(np.ones((2, 2, 2)))]}]),
     ValueError, r"param group 1: .*shape \(2, 2, 2\)"),
    (lambda: muon_param_groups(_tiny_gpt(), muon_lr=-1.0, adam_lr=0.1), ValueError, "muon_lr"),
    (lambda: muon_param_groups(_tiny_gpt(), 0.1, 0.0), ValueError, "base_lr: expected a positive"),
    (lambda: muon_param_groups(tl.nn.Linear(2, 2), 0.1, 0.1),
     ValueError, "no 2-D weights under 'blocks'"),
    (lambda: newton_schulz_flops((3,), 5), ValueError, r"shape: expected a matrix shape"),
    (lambda: newton_schulz_flops((3, 4), 0), ValueError, "ns_steps"),
]


@pytest.mark.parametrize("call, error, message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_raises_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
