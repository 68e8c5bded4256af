"""Matrix product with NumPy's matmul semantics (1-D promotion, batched, broadcasting).

Speed: BLAS does the work, and it is fastest on one large 2-D GEMM. So `(..., K) @ (K, N)` (the
shape of every Linear layer) is computed as one `(M, K) @ (K, N)` product with M the flattened
leading dims, and its weight gradient as one `x2d.T @ dy2d`, never as a stack of small products.
"""
from ..kernels import kernel
from ..tensor import Function

__all__ = ["MatMulOp", "LinearOp", "add_bias", "bias_grad"]

#   y = a @ b      da = dy @ b^T      db = a^T @ dy   (summed over broadcast batch dims)


def _swap(x):
    return x.swapaxes(-1, -2)


def _promote(a, b):
    """1-D operands as NumPy promotes them: a (K,) -> (1, K), b (K,) -> (K, 1)."""
    return (a.reshape(1, -1) if a.ndim == 1 else a), (b.reshape(-1, 1) if b.ndim == 1 else b)


class MatMulOp(Function):
    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least 1 dim, got shapes "
                             f"{a.shape} and {b.shape}")
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        a2, b2 = _promote(a, b)
        if a2.shape[-1] != b2.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} don't align: "
                             f"{a2.shape[-1]} (last dim of a) != {b2.shape[-2]} (dim -2 of b)")
        ctx.save(a, b)          # the inputs themselves, not views, so in-place edits are caught
        if b2.ndim == 2 and a2.ndim > 2:                        # (..., K) @ (K, N): one GEMM
            y = (a2.reshape(-1, a2.shape[-1]) @ b2).reshape(a2.shape[:-1] + (b2.shape[1],))
        else:
            try:
                y = a2 @ b2
            except ValueError:
                raise ValueError(f"matmul: batch dims of shapes {a.shape} and {b.shape} "
                                 "do not broadcast") from None
        ctx.y_shape = y.shape
        if a.ndim == 1:
            y = y.reshape(y.shape[:-2] + y.shape[-1:])
        if b.ndim == 1:
            y = y.reshape(y.shape[:-1])
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b = _promote(*ctx.saved)
        dy = dy.reshape(ctx.y_shape)
        da = db = None
        if b.ndim == 2 and a.ndim > 2:
            dy2 = dy.reshape(-1, dy.shape[-1])                  # (M, N)
            if ctx.needs_grad[0]:
                da = (dy2 @ b.T).reshape(a.shape)
            if ctx.needs_grad[1]:
                db = a.reshape(-1, a.shape[-1]).T @ dy2        # (K, M) @ (M, N)
        else:
            if ctx.needs_grad[0]:
                da = dy @ _swap(b)
            if ctx.needs_grad[1]:
                db = _swap(a) @ dy
        # undo 1-D promotion; batch broadcasting is summed away by the backward walk
        if da is not None and len(ctx.a_shape) == 1:
            da = da.reshape(da.shape[:-2] + ctx.a_shape) if da.ndim > 2 else da.reshape(ctx.a_shape)
        if db is not None and len(ctx.b_shape) == 1:
            db = db.reshape(db.shape[:-2] + ctx.b_shape) if db.ndim > 2 else db.reshape(ctx.b_shape)
        return da, db


# ---- Linear: y = x W^T + b, one op ------------------------------------------------------------
#   x: (..., K)  W: (N, K) (PyTorch's layout)  b: (N,)  y: (..., N);  with x2 = x as (M, K):
#   dx = dy W        dW = dy2^T x2  (N, K), already in W's layout    db = sum over M of dy2
# As three ops (transpose, matmul, add) this would copy W^T's gradient back into W's layout and
# allocate the sum y + b; as one it is one GEMM each way and an in-place bias add.
@kernel("add_bias")                   # fast version: kernels/cpu/linear.py
def add_bias(y, b):
    """y (M, N) += b (N,) on every row, in place; returns y."""
    y += b
    return y


@kernel("bias_grad")                  # fast version: kernels/cpu/linear.py
def bias_grad(dy):
    """The gradient of a bias added to every row of y: dy (M, N) summed over its M rows."""
    return dy.sum(axis=0)


class LinearOp(Function):
    @staticmethod
    def forward(ctx, x, w, b=None):
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: input of shape {x.shape} does not match weight of shape "
                             f"{w.shape} (expected last dim {w.shape[1]})")
        ctx.save(x, w)
        x2 = x.reshape(-1, x.shape[-1])
        y = x2 @ w.T
        if b is not None:
            y = add_bias(y, b)
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = (dy2 @ w).reshape(x.shape) if ctx.needs_grad[0] else None
        dw = dy2.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_grad[1] else None
        db = bias_grad(dy2) if len(ctx.needs_grad) > 2 and ctx.needs_grad[2] else None
        return dx, dw, db
