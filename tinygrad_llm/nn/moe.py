"""Mixture-of-Experts feed-forward: a router picks K of E expert FFNs for each token.

Reading order: the math below -> argument checks -> MoE.__init__ -> MoE.forward (route, dispatch,
combine) -> the two router losses.

    logits = x W_r^T                     x: (N, C)  W_r: (E, C)  logits: (N, E)
    p      = softmax(logits)             top-k experts e_1..e_K of each token, by p
    g_k    = p[e_k] / sum_j p[e_j]       (normalize_topk; Mixtral, Jiang et al., 2024)
    y      = sum_k g_k * expert_{e_k}(x)

The top-k choice is an argsort on the array (piecewise constant: no gradient); the gates g are
gathered from the softmax Tensor, so the router learns through them (Shazeer et al., 2017).
With K=1 and normalize_topk=True the gate is identically 1 and the router learns only from the
auxiliary loss; Switch Transformer (Fedus et al., 2021) uses K=1 with normalize_topk=False.

Dispatch loops over experts, never over tokens: the N*K (token, slot) assignments are sorted by
expert (stable), each expert gathers its rows with one integer index (backward: scatter-add), the
outputs are joined in sorted order, un-sorted with the inverse permutation, scaled by the gates
and summed over the K slots. Where the experts' row counts can be read for free (the CPU), each
expert runs on exactly its n_e rows. On a GPU, reading them would stop the device once per layer,
so each expert instead runs on a fixed N rows: its own n_e <= N tokens (a token picks an expert
at most once) and then a zero padding row; the padding's outputs are never gathered, so the
result and the gradients are the same, for E/K times the expert FLOPs and no sync.

Router losses, stored on the module after each forward (add them to the training loss):
    aux_loss = coef * E * sum_e f_e * P_e   f_e: fraction of the N*K assignments sent to e
                                            P_e: mean over tokens of p[:, e]
      (Switch Transformer, Fedus et al., 2021; GShard, Lepikhin et al., 2020). f is a constant,
      P carries the gradient; sum_e f_e = 1, so uniform routing gives exactly coef * 1.0.
      (Hugging Face's Mixtral loss counts f per slot, so it reads K times this for balance.)
    z_loss   = coef * mean_n logsumexp(logits_n)^2     (ST-MoE, Zoph et al., 2022): keeps the
      router logits small, which keeps its softmax out of float32 round-off.
"""
import numpy as np

from .. import backend
from ..ops import CatOp, StackOp
from ..tensor import Tensor
from . import functional as F
from .layers import MLP, Linear, SwiGLU
from .module import Module, ModuleList

__all__ = ["MoE", "EXPERT_KINDS"]

EXPERT_KINDS = ("swiglu", "mlp")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"MoE: {name} must be a positive int, got {value!r}")


def _check_coef(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"MoE: {name} must be a non-negative number, got {value!r}")


class MoE(Module):
    """Sparse mixture-of-experts feed-forward with top-k routing. x: (B, T, C) or (N, C), same out.

    dim: C; hidden: each expert's hidden width F; n_expert: E; n_expert_per_token: K (<= E).
    expert: "swiglu" (Llama / Mixtral experts) or "mlp" (GPT-2 experts, with `activation`).
    normalize_topk: renormalise the K chosen probabilities to sum to 1 (Mixtral).
    aux_loss_coef, z_loss_coef: weights of the load-balancing and router z-losses.
    After each forward: self.aux_loss, self.z_loss (0-d Tensors) and self.last_counts (int array
    (E,): the (token, slot) assignments each expert received; on the GPU it stays there).
    """

    def __init__(self, dim, hidden, n_expert, n_expert_per_token=2, expert="swiglu",
                 activation="gelu", bias=False, aux_loss_coef=0.01, z_loss_coef=0.0,
                 normalize_topk=True, device=None, dtype=np.float32):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("n_expert", n_expert),
                            ("n_expert_per_token", n_expert_per_token)):
            _check_positive_int(name, value)
        if n_expert_per_token > n_expert:
            raise ValueError(f"MoE: n_expert_per_token must be <= n_expert={n_expert}, got "
                             f"{n_expert_per_token}")
        if expert not in EXPERT_KINDS:
            raise ValueError(f"MoE: expert must be one of {EXPERT_KINDS}, got {expert!r}")
        _check_coef("aux_loss_coef", aux_loss_coef)
        _check_coef("z_loss_coef", z_loss_coef)
        self.dim, self.hidden, self.n_expert = dim, hidden, n_expert
        self.n_expert_per_token, self.expert_kind = n_expert_per_token, expert
        self.normalize_topk = bool(normalize_topk)
        self.aux_loss_coef, self.z_loss_coef = float(aux_loss_coef), float(z_loss_coef)
        self.router = Linear(dim, n_expert, bias=False, device=device, dtype=dtype)
        if expert == "swiglu":
            experts = [SwiGLU(dim, hidden, bias, device=device, dtype=dtype)
                       for _ in range(n_expert)]
        else:
            experts = [MLP(dim, hidden, activation, bias, device=device, dtype=dtype)
                       for _ in range(n_expert)]
        self.experts = ModuleList(experts)
        self.aux_loss = self.z_loss = None
        self.last_counts = None

    def forward(self, x):
        if not isinstance(x, Tensor):
            raise TypeError(f"MoE: x must be a Tensor, got {type(x).__name__}")
        if x.ndim not in (2, 3) or x.shape[-1] != self.dim:
            raise ValueError(f"MoE: x must have shape (B, T, {self.dim}) or (N, {self.dim}) "
                             f"(dim={self.dim}), got {x.shape}")
        E, K = self.n_expert, self.n_expert_per_token
        x2d = x.reshape(-1, self.dim)                                   # (N, C)
        N = x2d.shape[0]
        if N == 0:
            raise ValueError(f"MoE: x has no tokens (shape {x.shape})")
        xp = backend.array_module(x.data)

        # ---- route: top-k of the softmax, gates differentiable through the gather ----
        logits = self.router(x2d)                                       # (N, E)
        probs = F.softmax(logits, axis=-1)                              # (N, E)
        # stable argsort of -p: ties go to the lower expert index, deterministically
        topk = xp.argsort(-probs.data, axis=-1, kind="stable")[:, :K]   # (N, K) ints
        gates = probs[xp.arange(N)[:, None], topk]                      # (N, K)
        if self.normalize_topk:
            gates = gates / gates.sum(axis=-1, keepdims=True)

        # ---- dispatch: the N*K assignments sorted by expert, one gather per expert ----
        flat_expert = topk.reshape(-1)                                  # (N*K,) slot j -> expert
        order = xp.argsort(flat_expert, kind="stable")                  # (N*K,) sorted -> slot
        sorted_token = order // K                                       # token of each sorted slot
        counts = xp.bincount(flat_expert, minlength=E)                  # (E,) ints
        if backend.reads_are_free(x.device):
            y_sorted, counts = self._run_exact(x2d, sorted_token, counts)
        else:
            y_sorted = self._run_padded(x2d, sorted_token, flat_expert[order], counts)

        # ---- combine: un-sort, scale by the gates, sum over the K slots ----
        inverse = xp.empty_like(order)
        inverse[order] = xp.arange(N * K)
        y_slots = y_sorted[inverse]                                     # (N*K, C), slot order
        y = (y_slots.reshape(N, K, self.dim) * gates.reshape(N, K, 1)).sum(axis=1)   # (N, C)

        self.last_counts = counts
        self.aux_loss = self._load_balancing_loss(probs, counts, N * K)
        self.z_loss = self._z_loss(logits)
        return y.reshape(x.shape)

    def _run_exact(self, x2d, sorted_token, counts):
        """Each expert on exactly its rows (sizes read on the host) -> (N*K, C) in sorted order,
        and the counts as a host array."""
        counts = backend.to_numpy(counts).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        outputs = []
        for e, expert in enumerate(self.experts):
            start, end = int(bounds[e]), int(bounds[e + 1])
            if start == end:            # no token chose this expert: skip it (no zero-row GEMMs)
                continue
            outputs.append(expert(x2d[sorted_token[start:end]]))        # (n_e, C)
        return CatOp.apply(*outputs, axis=0), counts

    def _run_padded(self, x2d, sorted_token, sorted_expert, counts):
        """Each expert on a fixed N rows, its tokens first and padding after (static shapes: no
        host read) -> (N*K, C) in sorted order."""
        xp = backend.array_module(x2d.data)
        N, C = x2d.shape
        starts = xp.cumsum(counts) - counts                             # (E,) first sorted slot
        rank = xp.arange(sorted_token.shape[0]) - starts[sorted_expert]  # (N*K,) row in expert
        table = xp.full((self.n_expert, N), N, dtype=sorted_token.dtype)   # N: the zero row
        table[sorted_expert, rank] = sorted_token                       # (E, N) token per row
        x_pad = CatOp.apply(x2d, Tensor._wrap(xp.zeros((1, C), dtype=x2d.dtype)), axis=0)
        outputs = StackOp.apply(*(expert(x_pad[table[e]])               # (E, N, C)
                                  for e, expert in enumerate(self.experts)), axis=0)
        return outputs[sorted_expert, rank]                             # (N*K, C)

    def _load_balancing_loss(self, probs, counts, n_assign):
        """coef * E * sum_e f_e * P_e, f constant, P = mean router probability (Fedus, 2021)."""
        xp = backend.array_module(probs.data)
        f = backend.to_device(counts, probs.device, probs.dtype) / n_assign   # (E,)
        P = probs.mean(axis=0)                                          # (E,)
        return (P * f).sum() * (self.n_expert * self.aux_loss_coef)

    def _z_loss(self, logits):
        """coef * mean_n logsumexp(logits_n)^2 (Zoph et al., 2022); a zero Tensor when off."""
        xp = backend.array_module(logits.data)
        if self.z_loss_coef == 0.0:
            return Tensor._wrap(xp.zeros((), dtype=logits.dtype))
        # lse = m + log sum exp(l - m) for any constant m; the row max keeps exp from overflowing
        m = logits.data.max(axis=-1, keepdims=True)                     # (N, 1) array, constant
        lse = (logits - m).exp().sum(axis=-1).log() + m[:, 0]           # (N,)
        return (lse * lse).mean() * self.z_loss_coef

    def extra_repr(self):
        return (f"dim={self.dim}, hidden={self.hidden}, n_expert={self.n_expert}, "
                f"n_expert_per_token={self.n_expert_per_token}, expert={self.expert_kind!r}, "
                f"normalize_topk={self.normalize_topk}")
