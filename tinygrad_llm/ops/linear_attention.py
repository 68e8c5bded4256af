"""Linear attention (Katharopoulos, Vyas, Pappas & Fleuret, 2020, "Transformers are RNNs").

Softmax attention's similarity exp(q.k) is replaced by a kernel phi(q).phi(k) with non-negative
features, so the sums over keys can be taken once and shared by every query: O(T D Dv) work
instead of O(T^2 D), and, in the causal case, a recurrent form with a fixed-size state (S, z) that
a decoder keeps in place of a KV cache.

Reading order: the math -> shape checks -> forward / backward on arrays (the readable reference,
chunked) -> LinearAttentionOp -> the recurrent form on arrays (linear_attention_state,
linear_attention_step) -> feature maps on Tensors -> linear_attention, the Tensor-level entry.

The feature map is applied outside the op by ordinary Tensor ops (autograd derives its gradient),
so the op sees phi(q) and phi(k) and assumes them non-negative (the denominator is then >= eps).
"""
from ..backend import array_module
from ..tensor import Function, Tensor
from .elementwise import WhereOp

__all__ = ["LinearAttentionOp", "linear_attention", "linear_attention_state",
           "linear_attention_step", "elu_feature_map", "relu_feature_map",
           "linear_attention_forward", "linear_attention_backward", "FEATURE_MAPS"]

# ---- the math ---------------------------------------------------------------------------------
#   phi_q: (B, H, T, D)   phi_k: (B, H, Tk, D)   v: (B, H, Tk, Dv)   (Tk == T when causal)
#   forward:  S_i = sum_{j<=i} phi_k_j v_j^T  (D, Dv)      z_i = sum_{j<=i} phi_k_j  (D,)
#             num_i = phi_q_i^T S_i  (Dv,)   den_i = phi_q_i . z_i + eps   out_i = num_i / den_i
#             (non-causal: the sums run over every j, so S and z are the same for every i)
#   backward: g_i = dout_i / den_i                        (d num_i)
#             h_i = -(dout_i . out_i) / den_i             (d den_i = -dout.num / den^2)
#             dphi_q_i = S_i g_i + z_i h_i
#             dS_i = phi_q_i g_i^T,   dz_i = phi_q_i h_i, and S_i, z_i are prefix sums, so their
#             gradients flow back as suffix sums over i >= j:
#             dphi_k_j = sum_{i>=j} (dS_i v_j + dz_i) = sum_{i>=j} phi_q_i (g_i . v_j + h_i)
#             dv_j     = sum_{i>=j} dS_i^T phi_k_j     = sum_{i>=j} g_i (phi_q_i . phi_k_j)
#
# Chunked evaluation (the chunkwise form of Hua et al., 2022, "Transformer Quality in Linear
# Time"): materialising every S_i costs O(T D Dv) memory, so T is cut into chunks of C positions.
# Inside a chunk the prefix sums are a masked C x C product, A = tril(phi_Q phi_K^T); across
# chunks they are the running state (S0, z0) at the chunk's start:
#   num_c = phi_Q S0 + A V            den_c = phi_Q z0 + rowsum(A) + eps
# and backward walks the chunks in reverse with the suffix sums of the later chunks,
# R = sum phi_q_i g_i^T (D, Dv) and r = sum phi_q_i h_i (D,):
#   dA = tril(g V^T + h 1^T)          (dA_ij = g_i . v_j + h_i)
#   dphi_Q = dA phi_K + g S0^T + h z0^T     dphi_K = dA^T phi_Q + V R^T + r     dV = A^T g + phi_K R
# Memory is O(T C + (T / C) D Dv) and the work is a handful of GEMMs per chunk.
DEFAULT_CHUNK = 64


def _check(phi_q, phi_k, v, causal):
    if phi_q.ndim != 4 or phi_k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"linear_attention: expected phi_q (B, H, T, D), phi_k (B, H, Tk, D) and "
                         f"v (B, H, Tk, Dv), got {phi_q.shape}, {phi_k.shape} and {v.shape}")
    bq, hq, tq, dq = phi_q.shape
    bk, hk, tk, dk = phi_k.shape
    if (bq, hq, dq) != (bk, hk, dk):
        raise ValueError(f"linear_attention: phi_q {phi_q.shape} and phi_k {phi_k.shape} must "
                         "agree in B, H and D (grouped K/V heads are not supported)")
    if causal and tq != tk:
        raise ValueError(f"linear_attention: causal attention needs as many queries as keys, got "
                         f"phi_q {phi_q.shape} and phi_k {phi_k.shape}")
    if v.shape[:3] != phi_k.shape[:3]:
        raise ValueError(f"linear_attention: v {v.shape} must match phi_k {phi_k.shape} in "
                         "B, H and Tk")


def _check_chunk(chunk_size):
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"linear_attention: chunk_size must be a positive int, got "
                         f"{chunk_size!r}")


def _chunks(t, size):
    return [(s, min(s + size, t)) for s in range(0, t, size)]


def _tril(xp, n, dtype):
    # a 0/1 matrix (not a bool mask): a product keeps the dtype, a where with 0 would not always
    return xp.tril(xp.ones((n, n), dtype=dtype))


# ---- forward / backward on arrays -------------------------------------------------------------
def linear_attention_forward(phi_q, phi_k, v, causal, eps, chunk_size=DEFAULT_CHUNK):
    """phi_q: (B, H, T, D), phi_k: (B, H, Tk, D), v: (B, H, Tk, Dv) -> out (B, H, T, Dv),
    den (B, H, T), S0 (n, B, H, D, Dv), z0 (n, B, H, D): the state at the start of each of the n
    chunks (causal), or the one full-sum state (n = 1, non-causal)."""
    xp = array_module(phi_q)
    b, h, t, d = phi_q.shape
    eps = phi_q.dtype.type(eps)
    if not causal:
        s = phi_k.swapaxes(-1, -2) @ v                                  # (B, H, D, Dv)
        z = phi_k.sum(axis=2)                                           # (B, H, D)
        den = (phi_q @ z[..., None])[..., 0] + eps                      # (B, H, T)
        return (phi_q @ s) / den[..., None], den, s[None], z[None]
    dv = v.shape[-1]
    out = xp.empty((b, h, t, dv), dtype=phi_q.dtype)
    den = xp.empty((b, h, t), dtype=phi_q.dtype)
    s = xp.zeros((b, h, d, dv), dtype=phi_q.dtype)
    z = xp.zeros((b, h, d), dtype=phi_q.dtype)
    s_starts, z_starts = [], []
    for t0, t1 in _chunks(t, chunk_size):
        q_c, k_c, v_c = phi_q[:, :, t0:t1], phi_k[:, :, t0:t1], v[:, :, t0:t1]
        a = (q_c @ k_c.swapaxes(-1, -2)) * _tril(xp, t1 - t0, phi_q.dtype)  # (B, H, C, C)
        den_c = (q_c @ z[..., None])[..., 0] + a.sum(axis=-1) + eps
        out[:, :, t0:t1] = (q_c @ s + a @ v_c) / den_c[..., None]
        den[:, :, t0:t1] = den_c
        s_starts.append(s)
        z_starts.append(z)
        s = s + k_c.swapaxes(-1, -2) @ v_c
        z = z + k_c.sum(axis=2)
    return out, den, xp.stack(s_starts), xp.stack(z_starts)


def linear_attention_backward(dout, phi_q, phi_k, v, out, den, s0, z0, causal,
                              chunk_size=DEFAULT_CHUNK):
    """dout, out: (B, H, T, Dv), den: (B, H, T), S0, z0 from forward -> dphi_q (B, H, T, D),
    dphi_k (B, H, Tk, D), dv (B, H, Tk, Dv)."""
    xp = array_module(phi_q)
    g = dout / den[..., None]                                           # d num: (B, H, T, Dv)
    h = -(dout * out).sum(axis=-1) / den                                # d den: (B, H, T)
    if not causal:
        s, z = s0[0], z0[0]
        r_big = phi_q.swapaxes(-1, -2) @ g                              # R: (B, H, D, Dv)
        r = (phi_q.swapaxes(-1, -2) @ h[..., None])[..., 0]             # r: (B, H, D)
        dq = g @ s.swapaxes(-1, -2) + h[..., None] * z[:, :, None]
        dk = v @ r_big.swapaxes(-1, -2) + r[:, :, None]
        return dq, dk, phi_k @ r_big
    b, nh, t, d = phi_q.shape
    dq, dk, dv = xp.empty_like(phi_q), xp.empty_like(phi_k), xp.empty_like(v)
    r_big = xp.zeros((b, nh, d, v.shape[-1]), dtype=phi_q.dtype)
    r = xp.zeros((b, nh, d), dtype=phi_q.dtype)
    for c, (t0, t1) in reversed(list(enumerate(_chunks(t, chunk_size)))):
        q_c, k_c, v_c = phi_q[:, :, t0:t1], phi_k[:, :, t0:t1], v[:, :, t0:t1]
        g_c, h_c = g[:, :, t0:t1], h[:, :, t0:t1]
        tril = _tril(xp, t1 - t0, phi_q.dtype)
        a = (q_c @ k_c.swapaxes(-1, -2)) * tril                         # (B, H, C, C)
        da = (g_c @ v_c.swapaxes(-1, -2) + h_c[..., None]) * tril
        dq[:, :, t0:t1] = (da @ k_c + g_c @ s0[c].swapaxes(-1, -2)
                           + h_c[..., None] * z0[c][:, :, None])
        dk[:, :, t0:t1] = da.swapaxes(-1, -2) @ q_c + v_c @ r_big.swapaxes(-1, -2) + r[:, :, None]
        dv[:, :, t0:t1] = a.swapaxes(-1, -2) @ g_c + k_c @ r_big
        r_big = r_big + q_c.swapaxes(-1, -2) @ g_c
        r = r + (q_c.swapaxes(-1, -2) @ h_c[..., None])[..., 0]
    return dq, dk, dv


class LinearAttentionOp(Function):
    """LinearAttentionOp.apply(phi_q, phi_k, v, causal=True, eps=1e-6, chunk_size=64).

    phi_q: (B, H, T, D), phi_k: (B, H, Tk, D) non-negative features; v: (B, H, Tk, Dv).
    Returns (B, H, T, Dv). Causal needs Tk == T; chunk_size only changes how it is computed.
    """

    @staticmethod
    def forward(ctx, phi_q, phi_k, v, causal=True, eps=1e-6, chunk_size=DEFAULT_CHUNK):
        _check(phi_q, phi_k, v, causal)
        _check_chunk(chunk_size)
        out, den, s0, z0 = linear_attention_forward(phi_q, phi_k, v, causal, eps, chunk_size)
        ctx.save(phi_q, phi_k, v, out, den, s0, z0)       # the states are (T / C) D Dv: cheap
        ctx.causal, ctx.chunk_size = causal, chunk_size
        return out

    @staticmethod
    def backward(ctx, dout):
        phi_q, phi_k, v, out, den, s0, z0 = ctx.saved
        return linear_attention_backward(dout, phi_q, phi_k, v, out, den, s0, z0, ctx.causal,
                                         ctx.chunk_size)


# ---- the recurrent form: running state instead of a KV cache ----------------------------------
def _data(x):
    return x.data if isinstance(x, Tensor) else x


def linear_attention_state(phi_k, v):
    """The state after a whole prefix: S = sum_j phi_k_j v_j^T, z = sum_j phi_k_j.

    phi_k: (B, H, T, D), v: (B, H, T, Dv) (arrays or Tensors; no graph is recorded)
    -> S (B, H, D, Dv), z (B, H, D) arrays, ready for linear_attention_step.
    """
    phi_k, v = _data(phi_k), _data(v)
    if phi_k.ndim != 4 or v.ndim != 4 or phi_k.shape[:3] != v.shape[:3]:
        raise ValueError(f"linear_attention_state: expected phi_k (B, H, T, D) and v "
                         f"(B, H, T, Dv), got {phi_k.shape} and {v.shape}")
    return phi_k.swapaxes(-1, -2) @ v, phi_k.sum(axis=2)


def linear_attention_step(phi_q_t, phi_k_t, v_t, s=None, z=None, eps=1e-6):
    """One causal step of the RNN form: add token t to the state, then read it with its query.

        S <- S + phi_k_t v_t^T,   z <- z + phi_k_t,   out_t = phi_q_t^T S / (phi_q_t . z + eps)

    phi_q_t, phi_k_t: (B, H, D), v_t: (B, H, Dv) (arrays or Tensors; no graph is recorded);
    s: (B, H, D, Dv) and z: (B, H, D), or None for an empty state (the first token).
    Returns (out_t (B, H, Dv), S, z) as new arrays: the inputs are not modified.
    """
    phi_q_t, phi_k_t, v_t, s, z = (_data(a) for a in (phi_q_t, phi_k_t, v_t, s, z))
    if phi_q_t.shape != phi_k_t.shape or phi_k_t.shape[:-1] != v_t.shape[:-1]:
        raise ValueError(f"linear_attention_step: expected phi_q_t and phi_k_t (B, H, D) and v_t "
                         f"(B, H, Dv), got {phi_q_t.shape}, {phi_k_t.shape} and {v_t.shape}")
    xp = array_module(phi_q_t)
    state_shape = phi_k_t.shape + v_t.shape[-1:]
    if (s is None) != (z is None):
        raise ValueError("linear_attention_step: pass both s and z, or neither (empty state)")
    if s is None:
        s = xp.zeros(state_shape, dtype=phi_k_t.dtype)
        z = xp.zeros(phi_k_t.shape, dtype=phi_k_t.dtype)
    if s.shape != state_shape or z.shape != phi_k_t.shape:
        raise ValueError(f"linear_attention_step: state s {s.shape} and z {z.shape} do not fit "
                         f"phi_k_t {phi_k_t.shape} and v_t {v_t.shape}: expected {state_shape} "
                         f"and {phi_k_t.shape}")
    s = s + phi_k_t[..., :, None] * v_t[..., None, :]
    z = z + phi_k_t
    num = (phi_q_t[..., None, :] @ s)[..., 0, :]                        # (B, H, Dv)
    den = (phi_q_t * z).sum(axis=-1, keepdims=True) + phi_q_t.dtype.type(eps)
    return num / den, s, z


# ---- feature maps (Tensors in, Tensors out; autograd derives their gradients) -----------------
def elu_feature_map(x):
    """phi(x) = elu(x) + 1 = x + 1 for x > 0, e^x otherwise (Katharopoulos et al., 2020).

    Positive everywhere and C1 at 0 (both sides have value 1 and slope 1). The exponential sees
    min(x, 0), so large positive x cannot overflow in the branch that is thrown away.
    """
    return WhereOp.apply(x.data > 0, x + 1.0, x.clamp(max=0.0).exp())


def relu_feature_map(x):
    """phi(x) = max(x, 0): non-negative, and exactly 0 for negative inputs."""
    return x.relu()


FEATURE_MAPS = {"elu": elu_feature_map, "relu": relu_feature_map}


def linear_attention(q, k, v, causal=True, feature_map="elu", eps=1e-6,
                     chunk_size=DEFAULT_CHUNK):
    """Linear attention on Tensors: phi(q) and phi(k), then LinearAttentionOp.

    q: (B, H, T, D), k: (B, H, Tk, D), v: (B, H, Tk, Dv) -> (B, H, T, Dv).
    causal: query i sees keys j <= i (needs Tk == T). feature_map: "elu" (elu + 1, the paper's),
    "relu", or a function of a Tensor that returns non-negative features of the same shape.
    """
    if isinstance(feature_map, str):
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"linear_attention: feature_map must be one of "
                             f"{sorted(FEATURE_MAPS)} or a function, got {feature_map!r}")
        feature_map = FEATURE_MAPS[feature_map]
    elif not callable(feature_map):
        raise TypeError(f"linear_attention: feature_map must be a name or a function, got "
                        f"{type(feature_map).__name__}")
    return LinearAttentionOp.apply(feature_map(q), feature_map(k), v, causal=bool(causal),
                                   eps=eps, chunk_size=chunk_size)
