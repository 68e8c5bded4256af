"""Embedding lookup: rows of a weight table picked by integer ids.

    forward:  y[n] = W[ids[n]]                       ids: (...)  W: (V, C)  y: (..., C)
    backward: dW[v] = sum of dy[n] over the n with ids[n] == v   (a scatter-add)

The backward's scatter-add is the `embedding_backward` kernel: `np.add.at` is correct but slow.
"""
from ..backend import array_module, device_of, scatter_add
from ..kernels import kernel
from ..tensor import Function

__all__ = ["EmbeddingOp", "embedding_backward", "check_ids"]


@kernel("embedding_backward")        # fast versions: kernels/{cpu,cuda}/embedding.py
def embedding_backward(dy, ids, num_embeddings):
    """dy: (N, C), ids: (N,) -> dW (V, C)."""
    xp = array_module(dy)
    dw = xp.zeros((num_embeddings, dy.shape[1]), dtype=dy.dtype)
    scatter_add(dw, ids, dy)
    return dw


def check_ids(name, ids, limit):
    """Raise a ValueError naming the first id outside [0, limit). Ids already on the GPU are not
    read back for this (a host sync per call); F.embedding checks ids while they are still on the
    host, and PyTorch's CUDA kernels likewise leave device ids to an assert on the device."""
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name}: ids must be integers, got dtype {ids.dtype}")
    if device_of(ids) == "cpu" and ids.size and (int(ids.min()) < 0 or int(ids.max()) >= limit):
        bad = ids[(ids < 0) | (ids >= limit)].reshape(-1)[0]
        raise ValueError(f"{name}: id {int(bad)} is out of range [0, {limit})")


class EmbeddingOp(Function):
    @staticmethod
    def forward(ctx, weight, ids):
        check_ids("embedding", ids, weight.shape[0])
        ctx.save(ids)
        ctx.num_embeddings = weight.shape[0]
        return weight[ids]

    @staticmethod
    def backward(ctx, dy):
        (ids,) = ctx.saved
        dy2 = dy.reshape(-1, dy.shape[-1])
        return embedding_backward(dy2, ids.reshape(-1), ctx.num_embeddings), None
