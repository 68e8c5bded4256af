"""Position schemes: how a transformer learns where each token sits.

Reading order, oldest idea first:
  LearnedPositions     a trained (block_size, C) table added to the token embeddings (GPT-2)
  SinusoidalPositions  the fixed sin/cos table of Vaswani et al., 2017
  RotaryEmbedding      RoPE (Su et al., 2021): q and k rotated by position, Llama's scheme, with
                       linear position interpolation (Chen et al., 2023), NTK-aware scaling and
                       YaRN (Peng et al., 2023), whose frequencies yarn_frequencies computes
  alibi_slopes, ALiBi  a per-head linear penalty on distance added to the scores (Press et al.,
                       2022)
  T5RelativeBias       a learned per-head bias per log-spaced distance bucket (Raffel et al., 2020)

The first two give a (T, C) Tensor to add to the embeddings; RoPE transforms q and k; the last
two give a (1, H, Tq, Tk) bias to add to the attention scores. Queries are end-aligned like the
causal mask in ops/attention.py: query i of Tq sits at absolute position i + Tk - Tq, which is
what a query block appended to a KV cache needs. Fixed tables are non-persistent buffers: they
move with `module.to(device)`, are read at call time, and stay out of `state_dict()`.
"""
import math

import numpy as np

from .. import backend
from ..ops.rope import PackedRopeOp, RopeOp
from ..tensor import Tensor, array_of
from .layers import init_parameter
from .module import Module

__all__ = ["LearnedPositions", "SinusoidalPositions", "RotaryEmbedding", "rope_frequencies",
           "yarn_frequencies", "alibi_slopes", "ALiBi", "T5RelativeBias"]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _check_positions(owner, positions, limit, limit_name):
    """An int array of positions, each in [0, limit) (checked while on the host: reading GPU
    positions back would cost a sync per call)."""
    positions = array_of(positions)
    if not hasattr(positions, "shape"):
        positions = np.asarray(positions)
    if positions.dtype.kind not in "iu":
        raise ValueError(f"{owner}: positions must be integers, got dtype {positions.dtype}")
    if backend.device_of(positions) == "cpu" and positions.size and (
            positions.min() < 0 or positions.max() >= limit):
        raise ValueError(f"{owner}: positions span {positions.min()}..{positions.max()}, outside "
                         f"[0, {limit_name}={limit})")
    return positions


def _check_span(owner, T, offset, limit, limit_name):
    """Positions offset .. offset + T - 1 must lie in [0, limit)."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"{owner}: T must be a non-negative int, got {T!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"{owner}: offset must be a non-negative int, got {offset!r}")
    if offset + T > limit:
        raise ValueError(f"{owner}: positions {offset}..{offset + T - 1} (offset={offset}, T={T}) "
                         f"exceed {limit_name}={limit}")


# ---- absolute positions added to the embeddings ------------------------------------------------
class LearnedPositions(Module):
    """A trained table of position vectors (GPT-2's `wpe`), init N(0, 0.02).

    forward(T, offset=0) -> Tensor (T, dim): rows offset .. offset + T - 1 of `weight`.
    """

    def __init__(self, block_size, dim, device=None, dtype=np.float32):
        super().__init__()
        self.block_size = _positive_int("block_size", block_size)
        self.dim = _positive_int("dim", dim)
        self.weight = init_parameter((self.block_size, self.dim), device, dtype, std=0.02)

    def forward(self, T, offset=0):
        _check_span("LearnedPositions", T, offset, self.block_size, "block_size")
        return self.weight[offset:offset + T]

    def rows(self, positions):
        """positions: (B, T) ints -> (B, T, dim): each row's own positions (left-padded batches,
        where row b's first real token is position 0)."""
        return self.weight[_check_positions("LearnedPositions", positions, self.block_size,
                                            "block_size")]

    def extra_repr(self):
        return f"{self.block_size}, {self.dim}"


def sinusoidal_table(n_positions, dim):
    """The (n_positions, dim) float64 table of Vaswani et al., 2017:
    P[p, 2i] = sin(p / 10000^(2i/dim)),  P[p, 2i+1] = cos(p / 10000^(2i/dim)).
    An odd dim has one more sin column than cos columns."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]          # (P, 1)
    pair = np.arange(dim) // 2                                         # column k: pair k // 2
    angle = pos / 10000.0 ** (2.0 * pair / dim)                        # (P, dim)
    return np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))


class SinusoidalPositions(Module):
    """The fixed sinusoidal table (Vaswani et al., 2017), a non-persistent buffer `table`.

    forward(T, offset=0) -> Tensor (T, dim) without grad: rows offset .. offset + T - 1.
    """

    def __init__(self, block_size, dim, device=None, dtype=np.float32):
        super().__init__()
        self.block_size = _positive_int("block_size", block_size)
        self.dim = _positive_int("dim", dim)
        table = sinusoidal_table(self.block_size, self.dim).astype(dtype)
        self.register_buffer("table", backend.to_device(table, backend.check_device(device)),
                             persistent=False)

    def forward(self, T, offset=0):
        _check_span("SinusoidalPositions", T, offset, self.block_size, "block_size")
        return Tensor._wrap(self.table[offset:offset + T])

    def rows(self, positions):
        """positions: (B, T) ints -> (B, T, dim), as LearnedPositions.rows."""
        positions = _check_positions("SinusoidalPositions", positions, self.block_size,
                                     "block_size")
        return Tensor._wrap(self.table[backend.to_device(positions, backend.device_of(
            self.table))])

    def extra_repr(self):
        return f"{self.block_size}, {self.dim}"


# ---- rotary embedding ------------------------------------------------------------------------
_ROPE_SCALINGS = ("linear", "ntk", "yarn")
_YARN_RAMPS = ("ratio", "index")
# YaRN's options with their defaults (Peng et al., 2023); None: resolved in _parse_scaling
_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "original_max_position_embeddings": None,
                  "mscale": None, "ramp": "ratio"}


def _number(name, value, minimum=None, above=None):
    """A float from an int or float (not a bool), checked against the bound given."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and above is not None:
        ok = value > above
    if not ok:
        bound = f" >= {minimum}" if minimum is not None else f" > {above}" if above is not None \
            else ""
        raise ValueError(f"scaling: {name!r} must be a number{bound}, got {value!r}")
    return float(value)


def _parse_scaling(scaling, max_seq_len):
    """None or {"type": "linear" | "ntk" | "yarn", "factor": f >= 1, ...yarn's options}
    -> (kind or None, factor, yarn's options with defaults filled, or {}).
    Hugging Face's key "rope_type" is accepted for "type", and "attention_factor" for "mscale"."""
    if scaling is None:
        return None, 1.0, {}
    if not isinstance(scaling, dict):
        raise TypeError(f"scaling: expected None or a dict like {{'type': 'linear', 'factor': 2}},"
                        f" got {type(scaling).__name__}")
    kinds = {scaling[k] for k in ("type", "rope_type") if k in scaling}
    if len(kinds) != 1 or next(iter(kinds)) not in _ROPE_SCALINGS:
        raise ValueError(f"scaling: 'type' must be one of {_ROPE_SCALINGS}, got {scaling!r}")
    kind = kinds.pop()
    allowed = {"type", "rope_type", "factor"}
    if kind == "yarn":
        allowed |= set(_YARN_DEFAULTS) | {"attention_factor"}
    unknown = set(scaling) - allowed
    if unknown:
        raise ValueError(f"scaling: unknown keys {sorted(unknown)} for type {kind!r}; expected "
                         f"some of {sorted(allowed)}")
    factor = _number("factor", scaling.get("factor"), minimum=1.0)
    if kind != "yarn":
        return kind, factor, {}
    options = {**_YARN_DEFAULTS, **{k: v for k, v in scaling.items() if k in _YARN_DEFAULTS}}
    beta_slow = _number("beta_slow", options["beta_slow"], above=0.0)
    beta_fast = _number("beta_fast", options["beta_fast"], above=beta_slow)
    original = options["original_max_position_embeddings"]
    original = max_seq_len if original is None else \
        _positive_int("scaling: 'original_max_position_embeddings'", original)
    if "mscale" in scaling and "attention_factor" in scaling:
        raise ValueError("scaling: give 'mscale' or Hugging Face's 'attention_factor', not both")
    mscale = scaling.get("mscale", scaling.get("attention_factor"))
    # the attention temperature of YaRN: sqrt(1/t) = 0.1 ln(s) + 1
    mscale = 0.1 * math.log(factor) + 1.0 if mscale is None else \
        _number("mscale", mscale, above=0.0)
    if options["ramp"] not in _YARN_RAMPS:
        raise ValueError(f"scaling: 'ramp' must be one of {_YARN_RAMPS}, got {options['ramp']!r}")
    return kind, factor, {"beta_fast": beta_fast, "beta_slow": beta_slow,
                          "original_max_position_embeddings": original, "mscale": mscale,
                          "ramp": options["ramp"]}


def rope_frequencies(head_dim, theta):
    """RoPE's angular frequencies theta_i = theta^(-2i/D), i < D/2, float64 (D/2,)."""
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def yarn_frequencies(head_dim, theta, factor, original_max_position_embeddings, beta_fast=32.0,
                     beta_slow=1.0, ramp="ratio"):
    """YaRN's "NTK-by-parts" frequencies (Peng et al., 2023), float64 (D/2,).

    Pair i turns r_i = L / lambda_i times over the original context L (lambda_i = 2 pi / theta_i).
    Pairs that turn many times (r > beta_fast) already saw every angle in training and keep
    theta_i; pairs that turn less than beta_slow times are interpolated as in PI (theta_i / s);
    between, gamma blends the two: theta_i' = (1 - gamma) theta_i / s + gamma theta_i.
    ramp="ratio": gamma = (r - beta_slow) / (beta_fast - beta_slow), the paper's definition;
    ramp="index": gamma linear over the pair index between the pairs where r = beta_fast and
    r = beta_slow (floored and ceiled), as the authors' code and Hugging Face compute it."""
    inv_freq = rope_frequencies(head_dim, theta)                        # (D/2,)
    L = float(original_max_position_embeddings)
    if ramp == "ratio":
        r = L * inv_freq / (2.0 * math.pi)
        gamma = np.clip((r - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
    else:
        def pair_of(rotations):          # solves r_i = rotations for i: theta^(2i/D) = L/(2 pi r)
            return head_dim * math.log(L / (2.0 * math.pi * rotations)) / (2.0 * math.log(theta))

        low = max(math.floor(pair_of(beta_fast)), 0)
        high = min(math.ceil(pair_of(beta_slow)), head_dim - 1)
        high = high + 0.001 if high == low else high          # a step, not a division by 0
        gamma = 1.0 - np.clip((np.arange(len(inv_freq)) - low) / (high - low), 0.0, 1.0)
    return (1.0 - gamma) * inv_freq / factor + gamma * inv_freq


class RotaryEmbedding(Module):
    """Rotary position embedding (Su et al., 2021), half-split as in Hugging Face Llama.

    head_dim: D (even); max_seq_len: positions the model was trained on; theta: the base.
    scaling: None, or a dict with "type" (Hugging Face's "rope_type" also reads) and "factor" f:
      "linear": position interpolation (Chen et al., 2023): positions divided by f;
      "ntk":    NTK-aware: the base becomes theta * f^(D/(D-2)), which slows the lowest
                frequency by exactly f and leaves the highest alone;
      "yarn":   YaRN (Peng et al., 2023): per-pair blend of the two by yarn_frequencies
                ("beta_fast" 32, "beta_slow" 1, "original_max_position_embeddings" default
                max_seq_len, "ramp" "ratio"), and cos and sin multiplied by the attention
                temperature mscale = 0.1 ln(f) + 1, so q.k grows by mscale^2 ("mscale", or Hugging
                Face's "attention_factor", overrides it).
    With scaling, `max_positions` = int(max_seq_len * f) positions are usable; `scaling` holds the
    dict with "type" spelled out (None without). The (max_positions, D) cos/sin tables are
    non-persistent buffers `cos` and `sin`.

    forward(x, offset=0): x (B, H, T, D) -> x rotated for positions offset .. offset + T - 1.
    """

    def __init__(self, head_dim, max_seq_len, theta=10000.0, scaling=None, device=None,
                 dtype=np.float32):
        super().__init__()
        self.head_dim = _positive_int("head_dim", head_dim)
        if self.head_dim % 2:
            raise ValueError(f"head_dim: RoPE rotates pairs of dims, so it must be even, "
                             f"got {head_dim}")
        self.max_seq_len = _positive_int("max_seq_len", max_seq_len)
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
            raise ValueError(f"theta: expected a positive number, got {theta!r}")
        self.theta = float(theta)
        self.scaling_type, self.factor, self.yarn = _parse_scaling(scaling, self.max_seq_len)
        self.scaling = None if scaling is None else {
            "type": self.scaling_type,
            **{k: v for k, v in scaling.items() if k not in ("type", "rope_type")}}
        self.max_positions = int(self.max_seq_len * self.factor)
        D = self.head_dim
        self.effective_theta = self.theta
        if self.scaling_type == "ntk":
            if D == 2:
                raise ValueError("scaling: NTK-aware scaling needs head_dim > 2 (the exponent is "
                                 "D/(D-2)), got head_dim=2")
            self.effective_theta = self.theta * self.factor ** (D / (D - 2))
        # angles a[p, i] = p' * theta_i, p' = p / f for linear scaling; built in float64
        if self.scaling_type == "yarn":
            inv_freq = yarn_frequencies(D, self.theta, self.factor,
                                        self.yarn["original_max_position_embeddings"],
                                        self.yarn["beta_fast"], self.yarn["beta_slow"],
                                        self.yarn["ramp"])
        else:
            inv_freq = rope_frequencies(D, self.effective_theta)           # (D/2,)
        self.mscale = self.yarn.get("mscale", 1.0)
        pos = np.arange(self.max_positions, dtype=np.float64)
        if self.scaling_type == "linear":
            pos = pos / self.factor
        angle = np.outer(pos, inv_freq)                                # (P, D/2)
        angle = np.concatenate((angle, angle), axis=1)                 # (P, D): both halves
        # YaRN's temperature rides in the tables: (m q)(m k) = m^2 q.k at no cost per token
        cos, sin = self.mscale * np.cos(angle), self.mscale * np.sin(angle)
        device = backend.check_device(device)
        self.register_buffer("cos", backend.to_device(cos.astype(dtype), device),
                             persistent=False)
        self.register_buffer("sin", backend.to_device(sin.astype(dtype), device),
                             persistent=False)

    def forward(self, x, offset=0):
        # x: (B, H, T, D)
        if x.ndim < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(f"RotaryEmbedding: x must be (B, H, T, D) with D = head_dim = "
                             f"{self.head_dim}, got shape {x.shape}")
        cos, sin = self.tables(x.shape[-2], offset)
        if backend.device_of(cos) != x.device:
            raise ValueError(f"RotaryEmbedding: tables are on {backend.device_of(cos)}, x is on "
                             f"{x.device}; move the module with .to({x.device!r})")
        return RopeOp.apply(x, cos=cos, sin=sin)

    def tables(self, T, offset=0):
        """(cos, sin), each (T, D): the tables' rows for positions offset .. offset + T - 1."""
        _check_span("RotaryEmbedding", T, offset, self.max_positions, "max_positions")
        return self.cos[offset:offset + T], self.sin[offset:offset + T]

    def rotate_packed(self, qkv, n_rotated, offset=0):
        """qkv: (B, T, S, D), a packed projection: rotate its first n_rotated slots (the query
        and key heads), pass the rest through."""
        cos, sin = self.tables(qkv.shape[1], offset)
        return PackedRopeOp.apply(qkv, cos=cos, sin=sin, n_rotated=n_rotated)

    def extra_repr(self):
        scaling = "" if self.scaling is None else f", scaling={self.scaling}"
        return f"{self.head_dim}, {self.max_seq_len}, theta={self.theta}{scaling}"


# ---- ALiBi ----------------------------------------------------------------------------------
def alibi_slopes(n_head):
    """The per-head slopes of ALiBi (Press et al., 2022) as a float64 NumPy array (n_head,).

    For n a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise, with
    m the largest power of two below n: the m slopes for m heads, then every other slope of the
    sequence for 2m heads (2^(-4/m), 2^(-12/m), ...) until there are n, so the extra heads fall
    between the existing ones."""
    n_head = _positive_int("n_head", n_head)

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    m = 1 << (n_head.bit_length() - 1)                  # the largest power of two <= n_head
    slopes = power_of_two(m)
    if m < n_head:
        slopes += power_of_two(2 * m)[0::2][:n_head - m]
    return np.asarray(slopes, dtype=np.float64)


class ALiBi(Module):
    """Attention with linear biases (Press et al., 2022): head h adds -slope_h * distance to the
    score of every key at or before the query. Nothing is trained; the slopes are a non-persistent
    buffer `slopes` (n_head,).

    forward(tq, tk, device=None, dtype=float32) -> array (1, H, Tq, Tk) on `device`:
    -slope_h * (i + tk - tq - j) for j <= i + tk - tq, and 0 for later keys (the causal mask
    removes them); bidirectional=True (encoders) uses the distance |i + tk - tq - j| both ways."""

    def __init__(self, n_head, bidirectional=False):
        super().__init__()
        self.n_head = _positive_int("n_head", n_head)
        self.bidirectional = bool(bidirectional)
        self.register_buffer("slopes", alibi_slopes(self.n_head), persistent=False)

    def forward(self, tq, tk, device=None, dtype=np.float32):
        tq, tk = _positive_int("tq", tq), _positive_int("tk", tk)
        device = backend.check_device(device)
        xp = backend.xp_for(device)
        query_pos = xp.arange(tq)[:, None] + (tk - tq)                # (Tq, 1), end-aligned
        distance = query_pos - xp.arange(tk)[None, :]                   # (Tq, Tk)
        distance = (xp.abs(distance) if self.bidirectional else xp.maximum(distance, 0)) \
            .astype(dtype)                                              # causal: later keys 0
        slopes = xp.asarray(backend.to_device(self.slopes, device), dtype=dtype)
        return (-slopes[:, None, None] * distance)[None]                # (1, H, Tq, Tk)

    def extra_repr(self):
        return f"{self.n_head}"


# ---- T5 relative position bias ------------------------------------------------------------
class T5RelativeBias(Module):
    """T5's learned relative position bias (Raffel et al., 2020): one scalar per head for each
    bucket of the relative position j - i, added to the scores. `weight` (num_buckets, n_head) is
    a Parameter, init N(0, 0.02) (the layout of Hugging Face T5's `relative_attention_bias`).

    Buckets: half of them hold exact distances 0 .. max_exact - 1 (max_exact = num_buckets/2),
    the rest are log-spaced up to max_distance, and every longer distance shares the last one.
    bidirectional=True (encoders) gives each sign half of the buckets; otherwise (decoders) keys
    after the query share bucket 0.

    forward(tq, tk) -> Tensor (1, H, Tq, Tk) that requires grad (queries end-aligned).
    """

    def __init__(self, n_head, num_buckets=32, max_distance=128, bidirectional=False,
                 device=None, dtype=np.float32):
        super().__init__()
        self.n_head = _positive_int("n_head", n_head)
        self.num_buckets = _positive_int("num_buckets", num_buckets)
        self.max_distance = _positive_int("max_distance", max_distance)
        self.bidirectional = bool(bidirectional)
        side = self.num_buckets // 2 if self.bidirectional else self.num_buckets
        if side < 2:
            raise ValueError(f"num_buckets: need at least {4 if self.bidirectional else 2} "
                             f"(bidirectional={self.bidirectional}), got {num_buckets}")
        if self.max_distance <= side // 2:
            raise ValueError(f"max_distance: must exceed the {side // 2} exact buckets, "
                             f"got {max_distance}")
        self.weight = init_parameter((self.num_buckets, self.n_head), device, dtype, std=0.02)

    def bucket(self, relative_position):
        """Bucket index (int64, same shape) of each relative position j - i (an int array)."""
        xp = backend.array_module(relative_position)
        n = -xp.asarray(relative_position, dtype=np.int64)       # distance back from the query
        num_buckets, ret = self.num_buckets, xp.zeros(n.shape, dtype=np.int64)
        if self.bidirectional:
            num_buckets //= 2
            ret += (n < 0).astype(np.int64) * num_buckets         # keys after the query
            n = xp.abs(n)
        else:
            n = xp.maximum(n, 0)
        max_exact = num_buckets // 2
        # log-spaced: max_exact at distance max_exact, num_buckets at max_distance (then capped);
        # the max() keeps log() away from 0 for the exact distances, whose value is not used
        log_ratio = (xp.log(xp.maximum(n, max_exact) / max_exact)
                     / math.log(self.max_distance / max_exact))
        large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int64)
        large = xp.minimum(large, num_buckets - 1)
        return ret + xp.where(n < max_exact, n, large)

    def forward(self, tq, tk):
        tq, tk = _positive_int("tq", tq), _positive_int("tk", tk)
        xp = backend.xp_for(self.weight.device)
        query_pos = xp.arange(tq)[:, None] + (tk - tq)                 # (Tq, 1), end-aligned
        buckets = self.bucket(xp.arange(tk)[None, :] - query_pos)       # (Tq, Tk)
        values = self.weight[buckets]                                   # (Tq, Tk, H), scatter-add
        return values.permute(2, 0, 1).reshape(1, self.n_head, tq, tk)

    def extra_repr(self):
        return (f"{self.n_head}, num_buckets={self.num_buckets}, "
                f"max_distance={self.max_distance}, bidirectional={self.bidirectional}")
