"""One time step of an LSTM as a single op with a hand-written backward.

Reading order: the math block -> lstm_cell_forward / lstm_cell_backward (plain array code) ->
LSTMCellOp, which checks shapes and packs (h, c) into one output.

Why one op per step: built from elementwise ops, a step is ~15 graph nodes, each with its own
temporaries and Python overhead; as one op it is 2 GEMMs plus a few fused-by-hand array passes,
and the backward is written in closed form. The input projection x_t W_ih^T + b does not depend
on the recurrence, so the caller computes it for all T time steps as one GEMM (models/lstm.py)
and passes each step's slice in as `gates_x`; only h_prev @ W_hh^T stays inside the time loop.

---- LSTM cell (Hochreiter & Schmidhuber, 1997; forget gate of Gers, Schmidhuber & Cummins, 2000)
  inputs:   gates_x (B, 4H) = x_t W_ih^T + b,   h_prev, c_prev (B, H),   w_hh (4H, H)
  forward:  z = gates_x + h_prev @ w_hh^T                           (B, 4H), gate order i, f, g, o
            i = sigma(z_i),  f = sigma(z_f),  g = tanh(z_g),  o = sigma(z_o)      (PyTorch's order)
            c = f * c_prev + i * g
            h = o * tanh(c)
  backward: given dh, dc (the gradient reaching c from the next step and from the caller)
            dc_t   = dc + dh * o * (1 - tanh(c)^2)          c feeds h too: both paths add
            do     = dh * tanh(c)
            di     = dc_t * g,   dg = dc_t * i,   df = dc_t * c_prev,   dc_prev = dc_t * f
            dz     = [di * i(1 - i),  df * f(1 - f),  dg * (1 - g^2),  do * o(1 - o)]
            dgates_x = dz,   dh_prev = dz @ w_hh,   dw_hh = dz^T @ h_prev

Two outputs through a one-output Function: the op returns h and c stacked as one array
(2, B, H), h at index 0 and c at index 1. The caller takes hc[0] and hc[1] (views); the backward
walk sums the two slices' gradients into one (2, B, H) gradient, which backward unpacks into
dh and dc. A slice that is not used (c after the last step) simply contributes zeros.
"""
from ..backend import array_module
from ..tensor import Function
from .elementwise import sigmoid

__all__ = ["LSTMCellOp", "lstm_cell_forward", "lstm_cell_backward"]


def lstm_cell_forward(gates_x, h_prev, c_prev, w_hh):
    """gates_x (B, 4H), h_prev, c_prev (B, H), w_hh (4H, H) -> hc (2, B, H) and the gate
    activations i, f, g, o and tanh(c) (each (B, H)) that the backward needs."""
    xp = array_module(gates_x)
    H = h_prev.shape[1]
    z = gates_x + h_prev @ w_hh.T                       # (B, 4H)
    i = sigmoid(z[:, :H])
    f = sigmoid(z[:, H:2 * H])
    g = xp.tanh(z[:, 2 * H:3 * H])
    o = sigmoid(z[:, 3 * H:])
    hc = xp.empty((2,) + h_prev.shape, dtype=z.dtype)    # h at 0, c at 1 (one allocation)
    c = hc[1]
    xp.multiply(f, c_prev, out=c)
    c += i * g
    tanh_c = xp.tanh(c)
    xp.multiply(o, tanh_c, out=hc[0])
    return hc, i, f, g, o, tanh_c


def lstm_cell_backward(dhc, i, f, g, o, tanh_c, c_prev):
    """dhc (2, B, H) -> dz (B, 4H) (= dgates_x) and dc_prev (B, H)."""
    xp = array_module(dhc)
    dh, dc = dhc[0], dhc[1]
    H = i.shape[1]
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    dz = xp.empty(i.shape[:1] + (4 * H,), dtype=dhc.dtype)
    dz[:, :H] = dc_total * g * i * (1 - i)
    dz[:, H:2 * H] = dc_total * c_prev * f * (1 - f)
    dz[:, 2 * H:3 * H] = dc_total * i * (1 - g * g)
    dz[:, 3 * H:] = dh * tanh_c * o * (1 - o)
    return dz, dc_total * f


def _check_shapes(gates_x, h_prev, c_prev, w_hh):
    if h_prev.ndim != 2:
        raise ValueError(f"lstm_cell: h_prev must be (B, H), got shape {h_prev.shape}")
    B, H = h_prev.shape
    expected = {"gates_x": (B, 4 * H), "c_prev": (B, H), "w_hh": (4 * H, H)}
    for name, a in (("gates_x", gates_x), ("c_prev", c_prev), ("w_hh", w_hh)):
        if a.shape != expected[name]:
            raise ValueError(f"lstm_cell: {name} has shape {a.shape}, expected "
                             f"{expected[name]} for h_prev of shape {h_prev.shape}")


class LSTMCellOp(Function):
    """LSTMCellOp.apply(gates_x, h_prev, c_prev, w_hh) -> hc (2, B, H): h = hc[0], c = hc[1]."""

    @staticmethod
    def forward(ctx, gates_x, h_prev, c_prev, w_hh):
        _check_shapes(gates_x, h_prev, c_prev, w_hh)
        hc, i, f, g, o, tanh_c = lstm_cell_forward(gates_x, h_prev, c_prev, w_hh)
        # gate activations, not pre-activations: each derivative is a function of its output
        ctx.save(i, f, g, o, tanh_c, h_prev, c_prev, w_hh)
        return hc

    @staticmethod
    def backward(ctx, dhc):
        i, f, g, o, tanh_c, h_prev, c_prev, w_hh = ctx.saved
        dz, dc_prev = lstm_cell_backward(dhc, i, f, g, o, tanh_c, c_prev)
        need_x, need_h, need_c, need_w = ctx.needs_grad
        return (dz if need_x else None,
                dz @ w_hh if need_h else None,          # (B, 4H) @ (4H, H)
                dc_prev if need_c else None,
                dz.T @ h_prev if need_w else None)      # (4H, B) @ (B, H)
