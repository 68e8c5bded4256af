"""Muon, "MomentUm Orthogonalized by Newton-Schulz" (Jordan et al., 2024): SGD momentum on 2-D
weight matrices whose update is replaced by the nearest semi-orthogonal matrix, found by a few
Newton-Schulz iterations; AdamW for every other parameter, in the same optimizer.

Reading order: newton_schulz (the orthogonalisation) and newton_schulz_flops (its cost), the
update scales, muon_update (one matrix's step), the Muon class (param groups of both kinds under
one schedule), muon_param_groups (which GPT parameters go where).

Why orthogonalise. The momentum of a matrix's gradient is dominated by a few directions (it is
close to low rank); replacing it by U V^T, where U S V^T is its SVD, gives every direction the
same step, which raises the scale of the rare directions that matter for learning (Jordan et al.,
2024; Bernstein & Newhouse, 2024, "Old Optimizer, New Norm": steepest descent under the spectral
norm). An SVD per step is too slow, and U V^T is also the limit of an odd matrix polynomial
iterated from G / |G|_F, which needs only matrix products.

One schedule drives both kinds of group. set_lr() and the Trainer write one lr into every group;
each group multiplies it by its own "lr_scale" (the ratio of its learning rate to the schedule's),
so Muon's matrices, AdamW's embeddings and the head keep their own learning rates while one
warmup and decay move them together.

    from tinygrad_llm.optim import Muon, muon_param_groups, set_lr
    opt = Muon(muon_param_groups(model, muon_lr=2e-3, adam_lr=2e-3, weight_decay=0.1))
    set_lr(opt, lr)      # lr from the AdamW schedule: the groups' lr_scale sets their ratios
"""
import math
import numbers

from ..backend import array_module
from ..nn.layers import Embedding
from .adam import adam_update
from .optimizer import Optimizer, check_betas, check_number

__all__ = ["Muon", "muon_param_groups", "newton_schulz", "newton_schulz_flops", "muon_update",
           "UPDATE_SCALES"]

# Jordan's quintic: a = 3.4445 maximises the slope at 0 (small singular values grow 3.4x per
# step) at the price of not converging to 1; after 5 steps every singular value of G / |G|_F
# above ~3e-3 lands in [0.68, 1.21] instead, which trains as well as U V^T (Jordan et al., 2024).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7                                  # |G|_F + eps: a zero gradient stays zero
UPDATE_SCALES = ("rms", "spectral")


# ---- Newton-Schulz orthogonalisation -------------------------------------------------------------
#   X0 = G / (|G|_F + eps)                      every singular value now in [0, 1]
#   A = X X^T,  X <- a X + (b A + c A^2) X      each singular value s -> a s + b s^3 + c s^5
# The singular vectors never change, so the result is U f^k(S) V^T. G is transposed when tall so
# that A is the small (min, min) Gram matrix. Per step this costs X X^T and B X, 2 m^2 n each,
# and A^2, 2 m^3, for X (m, n), m <= n.
#
# The Gram form. Each step multiplies X by Q = a I + b A + c A^2, a polynomial in A, so every
# X_k = P_k X0 with P_k = Q_{k-1} ... Q_0, and the Gram matrix follows without X:
#   A_{k+1} = Q A_k Q        (Q is symmetric; P_k and A_k are polynomials in A0, so they commute)
# Iterating (A, P) in the (m, m) space and forming P X0 once costs X0 X0^T and P X0 (2 m^2 n each)
# plus 4 k - 3 products of (m, m) matrices (A^2 each step; Q P, Q A and (Q A) Q between steps),
# against k (4 m^2 n + 2 m^3) directly: less whenever n > 1.5 m (k > 1). For the MLP's (C, 4C)
# matrices that is 50 C^3 against 90 C^3 at k = 5. The same products in another order: in float64
# the two agree to ~1e-14; in float32 the Gram form's error is a few 1e-5 of the result's scale on
# near-low-rank inputs (the direct form's, ~3e-6), far below what the update's step needs.
def _direct_form_flops(m, n, steps):
    return steps * (4 * m * m * n + 2 * m ** 3)


def _gram_form_flops(m, n, steps):
    return 4 * m * m * n + (4 * steps - 3) * 2 * m ** 3


def _newton_schulz_direct(x, steps):
    """x (m, n), |x|_F <= 1 -> f^steps applied to its singular values."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.T                            # (m, m)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x


def _newton_schulz_gram(x, steps):
    """The same as _newton_schulz_direct, iterated on the (m, m) Gram matrix."""
    xp = array_module(x)
    a, b, c = NS_COEFFICIENTS
    gram = x @ x.T                                # A0 (m, m)
    eye = xp.eye(gram.shape[0], dtype=gram.dtype)
    poly = None                                   # P_k
    for k in range(steps):
        q = c * (gram @ gram) + b * gram + a * eye
        poly = q if poly is None else q @ poly
        if k < steps - 1:
            gram = (q @ gram) @ q
    return poly @ x


def _cheaper_form(m, n, steps):
    """(the form newton_schulz runs on an (m, n) matrix, m <= n, its FLOPs): the Gram form when
    it takes fewer, else the direct one."""
    direct, gram = _direct_form_flops(m, n, steps), _gram_form_flops(m, n, steps)
    return (_newton_schulz_gram, gram) if gram < direct else (_newton_schulz_direct, direct)


def newton_schulz(g, steps=5):
    """The quintic Newton-Schulz iteration on g (rows, cols), in g's dtype: approximately U V^T
    for g = U S V^T, with singular values in [0.68, 1.21] (zero ones stay zero). Runs the Gram
    form where it takes fewer FLOPs (cols > 1.5 rows after the transpose), else the direct one."""
    xp = array_module(g)
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g                        # (m, n), m <= n
    x = x / (xp.sqrt((x * x).sum()) + NS_EPS)
    form, _ = _cheaper_form(*x.shape, steps)
    x = form(x, steps)
    return x.T if tall else x


def newton_schulz_flops(shape, steps):
    """FLOPs of newton_schulz on a (rows, cols) matrix, counting the matrix products as
    bench_train counts them (2 per multiply-add), for the form it runs: with m = min(shape),
    n = max(shape), steps (4 m^2 n + 2 m^3) directly, or 4 m^2 n + (4 steps - 3) 2 m^3 in the
    Gram form, whichever is less. The elementwise work (O(m n)) is left out, as it is for the
    model."""
    if len(shape) != 2:
        raise ValueError(f"shape: expected a matrix shape (rows, cols), got {tuple(shape)!r}")
    steps = _check_steps(steps)
    return _cheaper_form(min(shape), max(shape), steps)[1]


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"ns_steps: expected an int, got {type(steps).__name__} {steps!r}")
    if steps < 1:
        raise ValueError(f"ns_steps: expected at least 1 Newton-Schulz step, got {steps}")
    return int(steps)


# ---- the update's scale --------------------------------------------------------------------------
# An orthogonalised (rows, cols) matrix has min(rows, cols) singular values near 1, so its RMS is
# 1 / sqrt(max(rows, cols)): larger matrices would take smaller steps.
#   "rms"       0.2 sqrt(max(rows, cols)): update RMS 0.2 whatever the shape, about AdamW's, so
#               AdamW's learning rate and weight decay carry over (Liu et al., 2025, "Muon is
#               Scalable for LLM Training"). The default: the groups then share one schedule
#               with lr ratios near 1, and it does not depend on which axis is fan-in.
#   "spectral"  sqrt(max(1, rows / cols)) (Jordan et al., 2024): with PyTorch's (out, in) layout
#               the update's spectral norm is ~sqrt(fan_out / fan_in) when tall, 1 when wide;
#               Muon's learning rates are then ~0.02, ten times AdamW's.
def update_scale(shape, kind):
    """The factor on a (rows, cols) matrix's orthogonalised update, for kind in UPDATE_SCALES."""
    rows, cols = shape
    if kind == "rms":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


# ---- one matrix's step ---------------------------------------------------------------------------
#   b = momentum * b + (1 - momentum) * g                momentum as a running mean
#   u = (1 - momentum) * g + momentum * b  (nesterov)   or   u = b
#   p = p * (1 - lr * weight_decay) - lr * scale * NS(u)
# The running mean differs from SGD's b = momentum * b + g only by the factor (1 - momentum), which
# the normalisation inside NS removes; it keeps b on the gradient's scale (Jordan's Muon code).
def muon_update(p, g, buf, lr, momentum, nesterov, ns_steps, weight_decay, scale):
    """One Muon step in place on p and the momentum buffer buf; returns (p, buf). p, g, buf:
    (rows, cols), one dtype; the scalars are Python floats, which keep the arrays' dtype."""
    buf *= momentum
    buf += (1.0 - momentum) * g
    u = (1.0 - momentum) * g + momentum * buf if nesterov else buf
    o = newton_schulz(u, ns_steps)
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    p -= (lr * scale) * o
    return p, buf


class Muon(Optimizer):
    """Muon(params, lr=2e-3, momentum=0.95, nesterov=True, ns_steps=5, update_scale="rms",
    betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, lr_scale=1.0, muon=True).

    A group with "muon": True (the default) holds 2-D weight matrices, updated by muon_update
    with momentum, nesterov, ns_steps and update_scale; "muon": False groups are AdamW with
    betas and eps (the embeddings, the head, norms and biases). Both decay weights decoupled,
    p *= 1 - lr * weight_decay. Each group steps with lr * lr_scale: set_lr writes lr, and
    lr_scale keeps the group's ratio to it. State per parameter: "momentum_buffer" (Muon) or
    "exp_avg", "exp_avg_sq" (AdamW). muon_param_groups builds the groups for a GPT."""

    def __init__(self, params, lr=2e-3, momentum=0.95, nesterov=True, ns_steps=5,
                 update_scale="rms", betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                 lr_scale=1.0, muon=True):
        super().__init__(params, dict(lr=lr, lr_scale=lr_scale, muon=muon, momentum=momentum,
                                      nesterov=nesterov, ns_steps=ns_steps,
                                      update_scale=update_scale, betas=betas, eps=eps,
                                      weight_decay=weight_decay))

    def _check_group(self, group):
        group["lr"] = check_number("lr", group["lr"])
        group["lr_scale"] = check_number("lr_scale", group["lr_scale"])
        for name in ("muon", "nesterov"):
            if not isinstance(group[name], bool):
                raise TypeError(f"{name}: expected a bool, got {group[name]!r}")
        group["momentum"] = check_number("momentum", group["momentum"], 0.0, 1.0,
                                         high_open=True)
        group["ns_steps"] = _check_steps(group["ns_steps"])
        if group["update_scale"] not in UPDATE_SCALES:
            raise ValueError(f"update_scale: expected one of {UPDATE_SCALES}, got "
                             f"{group['update_scale']!r}")
        group["betas"] = check_betas(group["betas"])
        group["eps"] = check_number("eps", group["eps"])
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        return group

    def add_param_group(self, group):
        """As Optimizer.add_param_group; a Muon group must hold 2-D matrices only."""
        super().add_param_group(group)
        k, group = len(self.param_groups) - 1, self.param_groups[-1]
        if group["muon"]:
            for p in group["params"]:
                if p.ndim != 2:
                    self.param_groups.pop()
                    raise ValueError(f"param group {k}: Muon updates 2-D weight matrices, got "
                                     f"a parameter of shape {tuple(p.shape)}; put it in a group "
                                     "with 'muon': False (muon_param_groups does)")

    def load_state_dict(self, state_dict):
        """As Optimizer.load_state_dict; each group must keep its kind (Muon or AdamW)."""
        for k, saved in enumerate(state_dict["param_groups"][:len(self.param_groups)]):
            if saved.get("muon", self.defaults["muon"]) != self.param_groups[k]["muon"]:
                raise ValueError(f"load_state_dict: param group {k} has muon="
                                 f"{saved.get('muon')} in the state, "
                                 f"{self.param_groups[k]['muon']} here")
        super().load_state_dict(state_dict)

    def _state_names(self, group):
        return ("momentum_buffer",) if group["muon"] else ("exp_avg", "exp_avg_sq")

    def _step_flat(self, k, group, first):
        # a matrix is orthogonalised on its own: only AdamW groups pack into one flat launch
        return False if group["muon"] else super()._step_flat(k, group, first)

    def _update(self, p, g, state, group):
        lr = float(group["lr"]) * group["lr_scale"]
        if group["muon"]:
            muon_update(p.data, g, state["momentum_buffer"], lr, group["momentum"],
                        group["nesterov"], group["ns_steps"], group["weight_decay"],
                        update_scale(p.shape, group["update_scale"]))
            return
        beta1, beta2 = group["betas"]
        t = state["step"]
        adam_update(p.data, g, state["exp_avg"], state["exp_avg_sq"], lr, beta1, beta2,
                    group["eps"], group["weight_decay"], True, 1.0 - beta1 ** t,
                    1.0 - beta2 ** t)

    def flops_per_step(self):
        """The Newton-Schulz FLOPs of one step over every Muon matrix (bench_train adds them)."""
        return sum(newton_schulz_flops(p.shape, group["ns_steps"])
                   for group in self.param_groups if group["muon"] for p in group["params"])


# ---- which parameters get Muon -------------------------------------------------------------------
def muon_param_groups(model, muon_lr, adam_lr, weight_decay=0.0, embed_lr=None, head_lr=None,
                      base_lr=None, decay_embeddings=True):
    """Param groups for Muon over a GPT (any model whose layers live under `blocks`):

    - "muon": the 2-D weights inside the blocks (attention and MLP projections), at muon_lr;
    - the embedding tables (parameters of an nn.Embedding, or whose name contains "emb"; a tied
      head is the token table) with AdamW at embed_lr (default adam_lr);
    - an untied head (parameters named "head.*" with 2+ axes) with AdamW at head_lr (default
      adam_lr): embeddings take large steps well, the head does not (modded-nanogpt);
    - everything else with AdamW at adam_lr, decayed when 2+ axes, not for norm gains and biases.

    weight_decay applies to the Muon matrices, the other 2+ axis weights, and the embeddings and
    head unless decay_embeddings=False. Each group's "lr" is base_lr (default adam_lr) and its
    "lr_scale" its own lr / base_lr, so a schedule whose peak is base_lr drives every group.
    Empty groups and frozen parameters are left out."""
    lrs = {"muon_lr": muon_lr, "adam_lr": adam_lr,
           "embed_lr": adam_lr if embed_lr is None else embed_lr,
           "head_lr": adam_lr if head_lr is None else head_lr}
    lrs = {name: check_number(name, value) for name, value in lrs.items()}
    base_lr = lrs["adam_lr"] if base_lr is None else check_number("base_lr", base_lr)
    if base_lr <= 0:
        raise ValueError(f"base_lr: expected a positive learning rate (the schedule's peak), "
                         f"got {base_lr!r}")
    embed_decay = weight_decay if decay_embeddings else 0.0
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, Embedding)}
    kinds = {"muon": [], "embed": [], "head": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embeddings or "emb" in name.lower():
            kinds["embed"].append(p)
        elif name.startswith("head.") and p.ndim >= 2:
            kinds["head"].append(p)
        elif name.startswith("blocks.") and p.ndim == 2:
            kinds["muon"].append(p)
        else:
            kinds["decay" if p.ndim >= 2 else "no_decay"].append(p)
    if not kinds["muon"]:
        raise ValueError(f"model: no 2-D weights under 'blocks' for Muon in "
                         f"{type(model).__name__}; expected a GPT-like model")
    settings = {"muon": (True, lrs["muon_lr"], weight_decay),
                "embed": (False, lrs["embed_lr"], embed_decay),
                "head": (False, lrs["head_lr"], embed_decay),
                "decay": (False, lrs["adam_lr"], weight_decay),
                "no_decay": (False, lrs["adam_lr"], 0.0)}
    return [{"params": kinds[kind], "muon": muon, "lr": base_lr, "lr_scale": lr / base_lr,
             "weight_decay": decay}
            for kind, (muon, lr, decay) in settings.items() if kinds[kind]]
