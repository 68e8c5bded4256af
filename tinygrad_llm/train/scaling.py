"""Scaling laws: what a model costs, counted exactly from its config, the IsoFLOP sweep that
spends fixed budgets on many sizes, and the two Chinchilla fits of the losses it measures.

Reading order:
  1. counting: non_embedding_params, train_flops_per_token (every matmul of one token's forward
     and backward, attention included, from a GPTConfig; nothing estimated).
  2. isoflop_plan: for each budget C and size, the tokens D = C / flops_per_token and the steps;
     the runs that cannot fit are dropped with the reason.
  3. Approach 2 (Hoffmann et al., 2022): fit_isoflop_parabolas, a parabola in log N per budget,
     whose minima give N_opt = k C^a and D_opt = k' C^b.
  4. Approach 3 (Hoffmann et al., 2022; Besiroglu et al., 2024): fit_loss_surface,
     L(N, D) = E + A / N^alpha + B / D^beta by a summed Huber loss on log-loss, with the
     library's autograd and Adam from a grid of starts; predict_loss, compute_optimal;
     bootstrap_loss_surface, the same fit on resampled runs for intervals.

A run, as the plan writes it and the fits read it, is a dict with "budget" (FLOPs), "params"
(non-embedding parameters N), "tokens" (D) and, once trained, "loss".
"""
import math

import numpy as np

from ..models.gpt import GPTConfig
from ..optim import Adam, set_lr, warmup_cosine
from ..tensor import Tensor
from .. import stack
from .report import power_law_fit

__all__ = ["non_embedding_params", "train_flops_per_token", "forward_flops_per_token",
           "isoflop_plan", "fit_isoflop_parabolas", "fit_loss_surface", "predict_loss",
           "compute_optimal", "bootstrap_loss_surface", "CHINCHILLA_GRID"]


# ---- 1. counting --------------------------------------------------------------------------
def _check_config(config, owner):
    if not isinstance(config, GPTConfig):
        raise TypeError(f"{owner}: config must be a GPTConfig, got {type(config).__name__}")
    if config.attention != "softmax":
        raise ValueError(f"{owner}: config.attention={config.attention!r} is not counted; "
                         "expected 'softmax'")


def _ffn_params(config):
    c, f, bias = config.n_embd, config.ffn_hidden, config.bias
    if config.mlp == "none":                         # attention-only blocks
        return 0
    if config.mlp == "swiglu":                       # gate, up (C -> F) and down (F -> C)
        return 3 * c * f + (2 * f + c if bias else 0)
    return 2 * c * f + (f + c if bias else 0)        # up and down


def non_embedding_params(config):
    """Parameters of GPT(config) leaving out the token and learned position tables, counted
    from the config alone: equal to GPT(config).num_parameters(non_embedding=True). An untied
    head is counted (it is a matmul every token pays for); a tied one is the token table.
    A mixture of experts counts all its experts."""
    _check_config(config, "non_embedding_params")
    c, h, hkv, d = config.n_embd, config.n_head, config.n_kv_head, config.head_dim
    norm = c * (2 if config.norm == "layernorm" and config.bias else 1)
    ffn = _ffn_params(config)
    if config.n_expert:
        ffn = c * config.n_expert + config.n_expert * ffn          # router (no bias) + experts
    total = 0
    for layer in range(config.n_layer):
        heads = h if layer % config.kv_share else h + 2 * hkv      # a sharing layer projects q
        total += c * heads * d + (heads * d if config.bias else 0)
        total += h * d * c + (c if config.bias else 0)             # output projection
        total += (2 if config.mlp != "none" else 1) * norm + ffn      # attention only: one norm
    total += norm if config.prenorm else 0                         # the final norm
    if config.pos == "t5":
        total += config.t5_num_buckets * h                         # one table for all layers
    if not config.tie_embeddings:
        total += config.vocab_size * c
    return total


def _mean_context(seq_len, window, context):
    """Keys each query multiplies against, averaged over the T positions of a sequence.
    causal: position t sees min(t + 1, W) keys (what a kernel that skips the masked half does);
    full: every query is multiplied against T (or W) keys, as a dense masked product does."""
    w = window or seq_len
    if context == "full":
        return float(min(w, seq_len))
    if context == "causal":
        return float(np.minimum(np.arange(1, seq_len + 1), w).mean())
    raise ValueError(f"context: expected 'causal' or 'full', got {context!r}")


def forward_flops_per_token(config, seq_len, context="causal"):
    """The forward FLOPs of one token as a dict of terms, every matmul counted as 2 m n k:
    "qkv", "attention" (scores q k^T and the weighted sum of v over the mean context),
    "proj", "ffn" (the active experts and the router for a mixture), "head" (always counted,
    tied or not). Left out, as small against these: biases, norms, softmax, activations,
    residual adds, RoPE rotations, the embedding lookup, the loss and the optimizer update."""
    _check_config(config, "forward_flops_per_token")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
    c, h, hkv, d = config.n_embd, config.n_head, config.n_kv_head, config.head_dim
    ctx = _mean_context(seq_len, config.window, context)
    ffn_matrices = 3 if config.mlp == "swiglu" else 2
    ffn = ffn_matrices * 2 * c * config.ffn_hidden
    if config.n_expert:
        ffn = 2 * c * config.n_expert + config.n_expert_per_token * ffn
    providers = sum(1 for layer in range(config.n_layer) if layer % config.kv_share == 0)
    return {
        "qkv": 2 * c * d * (config.n_layer * h + providers * 2 * hkv),
        "attention": config.n_layer * 2 * (2 * h * d * ctx),
        "proj": config.n_layer * 2 * h * d * c,
        "ffn": config.n_layer * ffn,
        "head": 2 * c * config.vocab_size,
    }


def train_flops_per_token(config, seq_len, context="causal"):
    """Training FLOPs per token: 3 x the forward (the backward computes two products per
    forward matmul, the input's and the weight's gradient; Kaplan et al., 2020). With N the
    non-embedding parameters this is close to 6 N (+ the head's 6 C V when tied) while the
    context is short against 6 C, and well above it when attention dominates."""
    return 3 * sum(forward_flops_per_token(config, seq_len, context).values())


# ---- 2. the IsoFLOP plan ------------------------------------------------------------------
def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return value


def isoflop_plan(budgets, sizes, seq_len, batch_size, min_steps=1, max_tokens=None,
                 min_sizes=3, context="causal"):
    """The runs of an IsoFLOP sweep (Hoffmann et al., 2022, Approach 2): every size trained on
    each compute budget C, for D = C / train_flops_per_token tokens.

    budgets: FLOPs. sizes: {name: GPTConfig} (or a list, named by index). A run trains whole
    steps of batch_size x seq_len tokens, so its "tokens" and "flops" are rounded down from the
    budget. Dropped, with a "reason": a run under min_steps (the budget is too small for the
    model), a run over max_tokens (more than the data holds), and every run of a budget that
    keeps fewer than min_sizes sizes (a parabola needs 3 points).
    Returns {"runs": [dict(budget, size, params, flops_per_token, tokens, steps, flops,
    tokens_per_param)], "dropped": [dict(budget, size, reason)]}, runs by budget then params."""
    budgets = sorted(_positive("budgets", float(b)) for b in budgets)
    if not budgets:
        raise ValueError("budgets: expected at least one compute budget, got none")
    named = dict(sizes) if isinstance(sizes, dict) else {str(i): c for i, c in enumerate(sizes)}
    if not named:
        raise ValueError("sizes: expected at least one GPTConfig, got none")
    _positive("batch_size", batch_size)
    _positive("min_steps", min_steps)
    per_step = batch_size * seq_len
    runs, dropped = [], []
    for budget in budgets:
        kept = []
        for name, config in named.items():
            fpt = train_flops_per_token(config, seq_len, context)
            steps = int(budget // (fpt * per_step))
            tokens = steps * per_step
            if steps < min_steps:
                dropped.append(dict(budget=budget, size=name, reason=(
                    f"{steps} steps < min_steps={min_steps}: the budget buys "
                    f"{budget / fpt:.3g} tokens, a step is {per_step}")))
            elif max_tokens is not None and tokens > max_tokens:
                dropped.append(dict(budget=budget, size=name, reason=(
                    f"needs {tokens} tokens > max_tokens={max_tokens}")))
            else:
                n = non_embedding_params(config)
                kept.append(dict(budget=budget, size=name, params=n, flops_per_token=fpt,
                                 tokens=tokens, steps=steps, flops=tokens * fpt,
                                 tokens_per_param=tokens / n))
        if len(kept) < min_sizes:
            dropped += [dict(budget=budget, size=r["size"], reason=(
                f"only {len(kept)} sizes fit budget {budget:.3g}; a parabola needs "
                f"min_sizes={min_sizes}")) for r in kept]
            kept = []
        runs += sorted(kept, key=lambda r: r["params"])
    if not runs:
        smallest = min(named, key=lambda k: train_flops_per_token(named[k], seq_len, context))
        need = train_flops_per_token(named[smallest], seq_len, context) * per_step * min_steps
        raise ValueError(f"isoflop_plan: no budget fits {min_sizes} sizes; the largest budget "
                         f"is {budgets[-1]:.3g} FLOPs, the smallest model ({smallest!r}) needs "
                         f"{need:.3g} for min_steps={min_steps}")
    return {"runs": runs, "dropped": dropped}


# ---- 3. Approach 2: a parabola per budget -------------------------------------------------
def _runs_array(runs, keys, owner):
    try:
        return {k: np.array([float(r[k]) for r in runs]) for k in keys}
    except KeyError as err:
        raise ValueError(f"{owner}: every run needs keys {list(keys)}; one lacks {err}") from None


def fit_isoflop_parabolas(runs):
    """Approach 2 of Hoffmann et al. (2022). Per budget C, the loss against log N is fitted by a
    parabola whose minimum is N_opt(C), and against log D (the same runs) for D_opt(C): with
    exact FLOP counts D is not C / 6N, so it gets its own parabola. Then N_opt = k C^a and
    D_opt = k' C^b by least squares on log-log axes.

    runs: dicts with "budget", "params", "tokens", "loss"; at least 3 sizes per budget and 2
    budgets. Returns {"budgets": [dict(budget, N_opt, D_opt, loss_opt, n_runs, inside)],
    "a", "k", "b", "k_tokens"}; inside: whether N_opt lies within the sizes measured (an
    extrapolated minimum is less trustworthy)."""
    cols = _runs_array(runs, ("budget", "params", "tokens", "loss"), "fit_isoflop_parabolas")
    if (cols["params"] <= 0).any() or (cols["tokens"] <= 0).any() or (cols["loss"] <= 0).any():
        raise ValueError("fit_isoflop_parabolas: params, tokens and loss must be positive")
    per_budget = []
    for budget in np.unique(cols["budget"]):
        at = cols["budget"] == budget
        log_n, log_d = np.log(cols["params"][at]), np.log(cols["tokens"][at])
        loss = cols["loss"][at]
        if len(np.unique(log_n)) < 3:
            raise ValueError(f"fit_isoflop_parabolas: budget {budget:.3g} has "
                             f"{len(np.unique(log_n))} distinct sizes; a parabola needs 3")
        opt = {}
        for name, x in (("N_opt", log_n), ("D_opt", log_d)):
            curve, slope, _ = np.polyfit(x, loss, 2)
            if curve <= 0:
                raise ValueError(f"fit_isoflop_parabolas: the losses of budget {budget:.3g} "
                                 f"curve downward in log {name[0]} (no minimum); expected a "
                                 "valley: add sizes on both sides of the best one")
            opt[name] = -slope / (2 * curve)
        loss_opt = np.polyval(np.polyfit(log_n, loss, 2), opt["N_opt"])
        per_budget.append(dict(budget=float(budget), N_opt=math.exp(opt["N_opt"]),
                               D_opt=math.exp(opt["D_opt"]), loss_opt=float(loss_opt),
                               n_runs=int(at.sum()),
                               inside=bool(log_n.min() <= opt["N_opt"] <= log_n.max())))
    if len(per_budget) < 2:
        raise ValueError(f"fit_isoflop_parabolas: need at least 2 budgets for a power law in "
                         f"C, got {len(per_budget)}")
    c = [r["budget"] for r in per_budget]
    a, k = power_law_fit(c, [r["N_opt"] for r in per_budget])
    b, k_tokens = power_law_fit(c, [r["D_opt"] for r in per_budget])
    return {"budgets": per_budget, "a": a, "k": k, "b": b, "k_tokens": k_tokens}


# ---- 4. Approach 3: the parametric loss L(N, D) -------------------------------------------
#   L(N, D) = E + A / N^alpha + B / D^beta,    E = e^e, A = e^a, B = e^b
#   log L   = logsumexp(e, a - alpha log N, b - beta log D)
#   objective = sum over runs of Huber_delta(log L_predicted - log L_observed),  delta = 1e-3
# Hoffmann et al. (2022, Appendix D.2) minimise this with L-BFGS from a grid of starts;
# Besiroglu et al. (2024) show that their reported fit is only reproduced with the Huber
# losses summed, not averaged (the mean stops the optimiser early), and give a = 0.513.
# We use Adam (this library has no L-BFGS) with a cosine-decayed step, from the best starts of
# the grid. Two choices make it converge:
# - a and alpha are nearly collinear (log N spans a narrow band far from 0), so the
#   optimiser works on a' = a - alpha mean(log N) (b' likewise), which decorrelates them;
# - the starts are batched: the parameters are a (S, 5) array, one row per start (or per
#   bootstrap sample), and Adam updates each element on its own, so the S fits stay independent.
CHINCHILLA_GRID = dict(e=(-1.0, -0.5, 0.0, 0.5, 1.0), a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
                       b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0), alpha=(0.0, 0.5, 1.0, 1.5, 2.0),
                       beta=(0.0, 0.5, 1.0, 1.5, 2.0))     # Hoffmann et al. (2022), App. D.2


def _huber(r, delta):
    small = np.abs(r) <= delta
    return np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def _log_predicted(theta, x_n, x_d):
    """theta: (S, 5) as (e, a', b', alpha, beta); x_n, x_d: (S or 1, R) centred log N, log D
    -> (S, R) predicted log-loss, by a stable logsumexp."""
    terms = np.stack(np.broadcast_arrays(theta[:, 0:1], theta[:, 1:2] - theta[:, 3:4] * x_n,
                                         theta[:, 2:3] - theta[:, 4:5] * x_d))
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def _objective(theta, x_n, x_d, log_loss, delta):
    return _huber(_log_predicted(theta, x_n, x_d) - log_loss, delta).sum(axis=1)   # (S,)


def _adam_fit(theta0, x_n, x_d, log_loss, delta, steps, lr):
    """Refine every row of theta0 (S, 5) on its own data row (x_n, x_d, log_loss: (S or 1, R))
    by Adam on the summed Huber loss; returns (theta (S, 5), objective (S,))."""
    theta = Tensor(np.array(theta0, dtype=np.float64), requires_grad=True)
    opt = Adam([theta], lr=lr)
    shape = np.broadcast_shapes(theta0[:, :1].shape, x_n.shape)
    zeros = Tensor(np.zeros(shape))
    x_n, x_d, log_loss = Tensor(x_n), Tensor(x_d), Tensor(log_loss)
    for step in range(steps):
        set_lr(opt, warmup_cosine(step, lr, lr * 1e-3, 0, steps))
        terms = stack([theta[:, 0:1] + zeros, theta[:, 1:2] - theta[:, 3:4] * x_n,
                       theta[:, 2:3] - theta[:, 4:5] * x_d])                   # (3, S, R)
        top = Tensor(terms.numpy().max(axis=0))          # a constant shift: exact gradient
        r = top + (terms - top).exp().sum(axis=0).log() - log_loss            # (S, R)
        small = Tensor((np.abs(r.numpy()) <= delta).astype(np.float64))
        huber = small * (0.5 * r * r) + (1.0 - small) * (delta * (r.abs() - 0.5 * delta))
        opt.zero_grad()
        huber.sum().backward()
        opt.step()
    final = theta.numpy().copy()
    return final, _objective(final, x_n.numpy(), x_d.numpy(), log_loss.numpy(), delta)


def _surface_data(n, d, loss, owner):
    n, d, loss = (np.asarray(v, dtype=np.float64).ravel() for v in (n, d, loss))
    if not n.shape == d.shape == loss.shape:
        raise ValueError(f"{owner}: N, D and loss must have one length, got {len(n)}, "
                         f"{len(d)} and {len(loss)}")
    if len(n) < 6:
        raise ValueError(f"{owner}: need at least 6 runs (N, D, loss) to fit the 5 constants "
                         f"E, A, B, alpha, beta; got {len(n)}")
    for name, v in (("N", n), ("D", d), ("loss", loss)):
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{owner}: {name} must be finite and positive, got min {v.min()}")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError(f"{owner}: N and D must each take at least 2 values to separate "
                         f"alpha from beta; got {len(np.unique(n))} and {len(np.unique(d))}")
    return np.log(n), np.log(d), np.log(loss)


def _constants(theta, centre_n, centre_d):
    """A row (e, a', b', alpha, beta) -> the named constants of L(N, D)."""
    e, a_c, b_c, alpha, beta = (float(v) for v in theta)
    log_a, log_b = a_c + alpha * float(centre_n), b_c + beta * float(centre_d)
    total = alpha + beta
    return dict(E=math.exp(e), A=math.exp(log_a), B=math.exp(log_b), alpha=alpha, beta=beta,
                log_E=e, log_A=log_a, log_B=log_b,
                a=beta / total if total else float("nan"),
                b=alpha / total if total else float("nan"))


def fit_loss_surface(n, d, loss, delta=1e-3, grid=None, starts=8, steps=1500, lr=0.05):
    """Approach 3: L(N, D) = E + A / N^alpha + B / D^beta fitted to measured final losses by
    minimising the summed Huber loss (delta) between predicted and observed log-loss.

    n, d, loss: (R,) non-embedding parameters, training tokens and final losses of R >= 6 runs.
    grid: {"e", "a", "b", "alpha", "beta": values} of starting points (default CHINCHILLA_GRID);
    all of it is evaluated, and the `starts` best are refined by `steps` of Adam.
    Returns dict(E, A, B, alpha, beta, log_E, log_A, log_B, a = beta / (alpha + beta),
    b = alpha / (alpha + beta), objective, n_runs)."""
    log_n, log_d, log_loss = _surface_data(n, d, loss, "fit_loss_surface")
    centre_n, centre_d = log_n.mean(), log_d.mean()
    grid = CHINCHILLA_GRID if grid is None else grid
    missing = {"e", "a", "b", "alpha", "beta"} - set(grid)
    if missing:
        raise ValueError(f"grid: missing {sorted(missing)}; expected values for e, a, b, "
                         "alpha and beta")
    e, a, b, alpha, beta = (g.ravel() for g in np.meshgrid(
        *(np.asarray(grid[k], dtype=np.float64) for k in ("e", "a", "b", "alpha", "beta")),
        indexing="ij"))
    theta = np.stack([e, a - alpha * centre_n, b - beta * centre_d, alpha, beta], axis=1)
    x_n, x_d = (log_n - centre_n)[None], (log_d - centre_d)[None]
    scores = _objective(theta, x_n, x_d, log_loss[None], delta)
    best = theta[np.argsort(scores, kind="stable")[:max(1, int(starts))]]
    refined, objective = _adam_fit(best, x_n, x_d, log_loss[None], delta, steps, lr)
    i = int(np.argmin(objective))
    return {**_constants(refined[i], centre_n, centre_d), "objective": float(objective[i]),
            "n_runs": len(log_n)}


def predict_loss(fit, n, d):
    """L(N, D) of a fitted surface (fit_loss_surface's dict), elementwise over arrays."""
    n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


def compute_optimal(fit, budget):
    """The allocation that minimises L(N, D) under C = 6 N D (Hoffmann et al., 2022, eq. 4):
    N_opt = G (C/6)^a, D_opt = (C/6)^b / G, G = (alpha A / (beta B))^(1 / (alpha + beta)).
    Returns dict(N_opt, D_opt, tokens_per_param, loss)."""
    c = _positive("budget", float(budget)) / 6.0
    alpha, beta = fit["alpha"], fit["beta"]
    if not (alpha > 0 and beta > 0):       # a loss that does not fall with N or D has no optimum
        raise ValueError(f"compute_optimal: the fit has alpha={alpha:.4g}, beta={beta:.4g}; both "
                         f"must be positive for a compute-optimal allocation to exist")
    g = (alpha * fit["A"] / (beta * fit["B"])) ** (1.0 / (alpha + beta))
    n_opt, d_opt = g * c ** fit["a"], c ** fit["b"] / g
    return dict(N_opt=n_opt, D_opt=d_opt, tokens_per_param=d_opt / n_opt,
                loss=float(predict_loss(fit, n_opt, d_opt)))


def bootstrap_loss_surface(n, d, loss, fit=None, n_boot=100, budget=None, confidence=0.95,
                           seed=0, delta=1e-3, steps=1000, lr=0.02):
    """Percentile intervals of the Approach 3 constants: the runs are resampled with replacement
    n_boot times and each sample is refitted, all samples in one batched Adam run started from
    the full data's fit (`fit`, computed when None).

    Returns {"fit": the full-data fit, "intervals": {name: (low, high)} for E, A, B, alpha,
    beta, a, b (and tokens_per_param at `budget` when given, over the resamples whose alpha and
    beta are positive), "samples": {name: (n_boot,)}, "degenerate": how many were not}."""
    log_n, log_d, log_loss = _surface_data(n, d, loss, "bootstrap_loss_surface")
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot: expected an int >= 2, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    fit = fit_loss_surface(n, d, loss, delta=delta) if fit is None else fit
    centre_n, centre_d = log_n.mean(), log_d.mean()
    start = np.array([fit["log_E"], fit["log_A"] - fit["alpha"] * centre_n,
                      fit["log_B"] - fit["beta"] * centre_d, fit["alpha"], fit["beta"]])
    rows = np.random.default_rng(seed).integers(0, len(log_n), size=(n_boot, len(log_n)))
    refits, _ = _adam_fit(np.tile(start, (n_boot, 1)), log_n[rows] - centre_n,
                          log_d[rows] - centre_d, log_loss[rows], delta, steps, lr)
    fits = [_constants(row, centre_n, centre_d) for row in refits]
    names = ["E", "A", "B", "alpha", "beta", "a", "b"]
    samples = {k: np.array([f[k] for f in fits]) for k in names}
    if budget is not None:              # nan where a resample's alpha or beta is not positive
        samples["tokens_per_param"] = np.array(
            [compute_optimal(f, budget)["tokens_per_param"] if f["alpha"] > 0 and f["beta"] > 0
             else np.nan for f in fits])
    tail = 50 * (1 - confidence)
    intervals = {k: (float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail)))
                 for k, v in samples.items()}
    degenerate = int(np.isnan(samples["tokens_per_param"]).sum()) if budget is not None else 0
    return {"fit": fit, "intervals": intervals, "samples": samples, "degenerate": degenerate}
