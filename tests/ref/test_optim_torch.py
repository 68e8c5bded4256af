"""The optimizers, clipping and LambdaLR against PyTorch's: 10 steps on the same problem, from the
same start, with each side's gradient computed from its own parameters (so any difference in an
update would grow), in float64 (to 1e-10) and float32 (to 1e-6), on both implementations.

torch has no Lion; it is checked against the paper's Algorithm 2 (Chen et al., 2023) written in
torch ops, which at least exercises torch's float32 arithmetic against ours.

Skipped where torch is absent (CI); run with the scratch venv that has it.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tinygrad_llm as tl  # noqa: E402
import tinygrad_llm.kernels.cpu.optim  # noqa: E402,F401  registers the fused updates
from tinygrad_llm.nn.module import Parameter  # noqa: E402
from tinygrad_llm.optim import SGD, Adam, AdamW, LambdaLR, Lion, clip_grad_norm_  # noqa: E402
from tinygrad_llm.optim import warmup_cosine  # noqa: E402

SHAPES = [(17, 65), (65,), (100_003,)]         # the last crosses the kernels' parallel threshold
TOL = {np.float64: 1e-10, np.float32: 1e-6}


class TorchLion(torch.optim.Optimizer):
    """Chen et al. (2023), Algorithm 2, in torch ops."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                c = m * beta1 + p.grad * (1 - beta1)
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(c.sign(), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


def _groups(params, second):
    """Two groups: the matrix and vectors with the defaults, the big vector with overrides."""
    return [{"params": params[:2]}, {"params": params[2:], **second}]


CONFIGS = [  # (id, ours, torch's), each a function of the parameter list
    ("adamw", lambda ps: AdamW(_groups(ps, {"lr": 3e-3}), lr=1e-2, weight_decay=0.1),
     lambda ps: torch.optim.AdamW(_groups(ps, {"lr": 3e-3}), lr=1e-2, weight_decay=0.1)),
    ("adamw_betas_eps", lambda ps: AdamW(ps, lr=1e-2, betas=(0.8, 0.95), eps=1e-6,
                                         weight_decay=0.5),
     lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.5)),
    ("adam", lambda ps: Adam(ps, lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
    ("adam_l2", lambda ps: Adam(_groups(ps, {"weight_decay": 0.0}), lr=1e-2, weight_decay=0.1),
     lambda ps: torch.optim.Adam(_groups(ps, {"weight_decay": 0.0}), lr=1e-2,
                                 weight_decay=0.1)),
    ("sgd", lambda ps: SGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    ("sgd_momentum", lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd_dampening", lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.2),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.2)),
    ("sgd_nesterov", lambda ps: SGD(_groups(ps, {"lr": 0.01}), lr=0.05, momentum=0.9,
                                    nesterov=True, weight_decay=0.1),
     lambda ps: torch.optim.SGD(_groups(ps, {"lr": 0.01}), lr=0.05, momentum=0.9,
                                nesterov=True, weight_decay=0.1)),
    ("lion", lambda ps: Lion(_groups(ps, {"weight_decay": 0.0}), lr=1e-3, weight_decay=0.3),
     lambda ps: TorchLion(_groups(ps, {"weight_decay": 0.0}), lr=1e-3, weight_decay=0.3)),
]


def _problem(dtype):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    scale = [rng.uniform(0.5, 2.0, s).astype(dtype) for s in SHAPES]
    target = [rng.standard_normal(s).astype(dtype) for s in SHAPES]

    def grad(k, p):
        """d/dp of sum(scale/2 (p - target)^2 + 0.1 cos p): depends on p, so errors compound."""
        return (scale[k] * (p - target[k]) - dtype(0.1) * np.sin(p)).astype(dtype)
    return start, grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, ours, theirs", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_matches_torch_over_10_steps(name, ours, theirs, dtype, impl):
    start, grad = _problem(dtype)
    mine = [Parameter(a.copy()) for a in start]
    ref = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    opt, ref_opt = ours(mine), theirs(ref)
    for _ in range(10):
        for k, (p, q) in enumerate(zip(mine, ref)):
            p.grad = tl.Tensor(grad(k, p.numpy()))
            q.grad = torch.from_numpy(grad(k, q.detach().numpy()))
        opt.step()
        ref_opt.step()
    for p, q in zip(mine, ref):
        assert p.dtype == dtype
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=TOL[dtype],
                                   atol=TOL[dtype], err_msg=name)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    mine = [Parameter(np.zeros(s, np.float32)) for s in SHAPES]
    ref = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    for p, q, g in zip(mine, ref, grads):
        p.grad, q.grad = tl.Tensor(g.copy()), torch.from_numpy(g.copy())
    norm = clip_grad_norm_(mine, max_norm)
    ref_norm = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
    assert norm == pytest.approx(ref_norm, rel=1e-6)
    for p, q in zip(mine, ref):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_lambda_lr_matches_torch():
    schedule = lambda s: warmup_cosine(s, 1.0, 0.1, 3, 12)      # noqa: E731
    p, q = Parameter(np.zeros(2)), torch.zeros(2, requires_grad=True)
    opt = SGD([{"params": [p], "lr": 0.5}], lr=0.1)
    ref_opt = torch.optim.SGD([{"params": [q], "lr": 0.5}], lr=0.1)
    mine = LambdaLR(opt, schedule)
    ref = torch.optim.lr_scheduler.LambdaLR(ref_opt, schedule)
    for _ in range(15):
        assert mine.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-15)
        ref_opt.step()
        mine.step()
        ref.step()
