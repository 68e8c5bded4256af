"""QuantLinear: a Linear layer whose weight is stored quantized, and `quantize(model)`.

The forward never builds the float weight: `quant_matmul` (a kernel; the reference below
dequantizes and multiplies, the Numba version in kernels/cpu/quant.py decodes each block inside
the dot product) computes y = x W_hat^T straight from the packed fields. The weight is frozen (it
has no gradient), but x gets one, dx = dy W_hat, so a LoRA adapter on top of a quantized base
trains through it (QLoRA).

The fields are persistent buffers, so `state_dict()` / checkpoints hold the packed bytes (the
file shrinks with the weights) and `quantize(model, ...)` followed by `load_state_dict` restores a
saved quantized model. A float checkpoint into a quantized model, or the reverse, fails in
load_state_dict with the layer's missing and unexpected keys (weight vs qweight, scale, ...).
"""
import fnmatch

import numpy as np

from .. import backend
from ..kernels import kernel
from ..nn.layers import Linear, init_parameter
from ..nn.module import Module
from ..tensor import Function, Tensor
from .formats import (SCHEMES, block_size, dequantize_operands, dequantize_weight,
                      matmul_operands, quantize_weight)

__all__ = ["QuantLinear", "QuantEmbedding", "quantize", "quant_matmul", "quantized_layers"]


def _dense(operands, like):
    """The float weight of matmul_operands' form, on `like`'s device and in its dtype."""
    arrays = [None if a is None else backend.to_numpy(a) for a in operands[:4]]
    w = dequantize_operands(*arrays, operands[4])
    return backend.to_device(w, backend.device_of(like)).astype(like.dtype)


@kernel("quant_matmul")         # fast version: kernels/cpu/quant.py
def quant_matmul(x, qweight, scale, minimum, levels, group):
    """x: (N, in) float -> (N, out) = x W_hat^T in x's dtype, W_hat given in matmul_operands'
    form (formats.py): decoded here in full, then one matrix product."""
    return x @ _dense((qweight, scale, minimum, levels, group), x).T


class QuantMatmulOp(Function):
    """y = x W_hat^T with W_hat frozen: backward gives x its gradient dy W_hat only."""

    @staticmethod
    def forward(ctx, x, operands):
        ctx.operands = operands
        lead = x.shape[:-1]
        y = quant_matmul(x.reshape(-1, x.shape[-1]), *operands)
        return y.reshape(lead + (y.shape[-1],))

    @staticmethod
    def backward(ctx, grad):
        return (grad @ _dense(ctx.operands, grad),)


class QuantLinear(Module):
    """y = x W_hat^T + b with W stored as `scheme` (formats.SCHEMES): fields as buffers
    (qweight, scale, and min / absmax / absmax_q... by scheme), bias a Parameter.

    Build with QuantLinear.from_linear(linear, scheme, group_size, double_quant), or empty (zero
    fields of the right shapes, for load_state_dict) with QuantLinear(in, out, scheme, ...)."""

    def __init__(self, in_features, out_features, scheme, group_size=64, bias=True,
                 double_quant=False, device=None, dtype=np.float32):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"QuantLinear: unknown scheme {scheme!r}; valid schemes: {SCHEMES}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.group_size, self.double_quant = scheme, group_size, double_quant
        self.dtype = np.dtype(dtype)
        block = block_size(scheme, group_size)
        if in_features % block:
            raise ValueError(f"QuantLinear({scheme!r}): in_features={in_features} is not a "
                             f"multiple of the block size {block}")
        zeros = quantize_weight(np.zeros((out_features, in_features), np.float32), scheme,
                                group_size, double_quant)
        self._set_fields(zeros, device)
        self.bias = init_parameter((out_features,), device, dtype, value=0.0) if bias else None

    def _set_fields(self, fields, device=None):
        device = backend.check_device(device)
        self.field_names = tuple(sorted(fields))
        for name, value in fields.items():
            self.register_buffer(name, backend.to_device(np.ascontiguousarray(value), device))

    @classmethod
    def from_linear(cls, linear, scheme, group_size=64, double_quant=False):
        w = backend.to_numpy(linear.weight.data)
        q = cls(linear.in_features, linear.out_features, scheme, group_size,
                linear.bias is not None, double_quant, linear.weight.device, w.dtype)
        q._set_fields(quantize_weight(w, scheme, group_size, double_quant), linear.weight.device)
        if linear.bias is not None:
            q.bias.data[...] = linear.bias.data
        return q

    @property
    def fields(self):
        return {name: getattr(self, name) for name in self.field_names}

    @property
    def operands(self):
        """matmul_operands of the fields, made once (NF4's double-quantized scales decoded)."""
        key = tuple(id(getattr(self, n)) for n in self.field_names)
        if getattr(self, "_operands_key", None) != key:
            object.__setattr__(self, "_operands", matmul_operands(self.fields, self.scheme))
            object.__setattr__(self, "_operands_key", key)
        return self._operands

    def dequantize(self):
        """The float weight (out, in) the fields stand for (a new array)."""
        w = dequantize_weight({k: backend.to_numpy(v) for k, v in self.fields.items()},
                              self.scheme)
        return backend.to_device(w.astype(self.dtype), self.device_of_fields)

    @property
    def device_of_fields(self):
        return backend.device_of(self.qweight)

    @property
    def weight_nbytes(self):
        """Bytes the quantized weight occupies (the fields, not the bias)."""
        return sum(v.nbytes for v in self.fields.values())

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: input of shape {x.shape} has last dim {x.shape[-1]}, "
                             f"expected in_features={self.in_features}")
        y = QuantMatmulOp.apply(x, operands=self.operands)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        group = f", group_size={self.group_size}" if self.scheme == "nf4" else ""
        dq = ", double_quant=True" if self.double_quant else ""
        return (f"{self.in_features}, {self.out_features}, scheme={self.scheme!r}{group}{dq}, "
                f"bias={self.bias is not None}")


class QuantEmbedding(Module):
    """An Embedding whose table is stored quantized: rows are decoded when looked up (a few rows
    per step while decoding). Built from an Embedding, or `tied` to a QuantLinear head that shares
    the same table (GPT-2's tied embeddings): then both hold the same field arrays, saved once."""

    def __init__(self, source, scheme=None, group_size=64, double_quant=False):
        super().__init__()
        if isinstance(source, QuantLinear):                      # tied: share the head's fields
            self.num_embeddings, self.embedding_dim = source.out_features, source.in_features
            self.scheme, self.dtype = source.scheme, source.dtype
            fields = source.fields
        else:
            w = backend.to_numpy(source.weight.data)
            self.num_embeddings, self.embedding_dim = w.shape
            self.scheme, self.dtype = scheme, w.dtype
            fields = quantize_weight(w, scheme, group_size, double_quant)
        self.field_names = tuple(sorted(fields))
        for name, value in fields.items():
            self.register_buffer(name, value)

    fields = QuantLinear.fields
    operands = QuantLinear.operands

    def forward(self, ids):
        ids = np.asarray(backend.to_numpy(getattr(ids, "data", ids)))
        q, scale, minimum, levels, group = self.operands
        rows = ids.reshape(-1)
        table = dequantize_operands(backend.to_numpy(q)[rows], backend.to_numpy(scale)[rows],
                                    None if minimum is None else backend.to_numpy(minimum)[rows],
                                    levels, group)
        out = table.reshape(ids.shape + (self.embedding_dim,)).astype(self.dtype)
        return Tensor._wrap(backend.to_device(out, backend.device_of(self.qweight)))

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme={self.scheme!r}"


def _targets(model, include_head, skip):
    """(parent, attribute name, full name, Linear) for each Linear to quantize."""
    found = []
    for name, module in model.named_modules():
        for child_name, child in list(module._modules.items()):
            full = f"{name}.{child_name}" if name else child_name
            if not isinstance(child, Linear):
                continue
            if any(fnmatch.fnmatch(full, pattern) for pattern in skip):
                continue
            if full.split(".")[-1] in ("head", "lm_head") and not include_head:
                continue
            found.append((module, child_name, full, child))
    return found


def quantize(model, scheme="q8_0", group_size=64, double_quant=False, include_head=False,
             include_embeddings=False, skip=()):
    """Replace the model's Linear layers with QuantLinear, in place; returns the model.

    scheme: one of formats.SCHEMES. group_size: NF4's group (32/64/128). include_head: quantize
    the output head too. include_embeddings: the token embedding table too (QuantEmbedding); a
    head tied to the embeddings is quantized only with both flags, and stays tied (one table).
    skip: fnmatch patterns of layer names to leave in float. Layers whose input size is not a
    multiple of the scheme's block raise, naming the layer (add it to skip)."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: unknown scheme {scheme!r}; valid schemes: {SCHEMES}")
    block = block_size(scheme, group_size)
    emb = getattr(model, "tok_emb", None)
    tied_weight = getattr(emb, "weight", None)
    targets = _targets(model, include_head, skip)
    for _, _, full, linear in targets:
        if linear.weight is tied_weight and tied_weight is not None and not include_embeddings:
            raise ValueError(f"quantize: layer {full!r} is tied to the token embeddings; pass "
                             f"include_embeddings=True to quantize both (they stay one table), "
                             f"or include_head=False")
        if linear.in_features % block:
            raise ValueError(f"quantize: layer {full!r} has in_features={linear.in_features}, "
                             f"not a multiple of {scheme}'s block size {block}; pass "
                             f"skip=[{full!r}] to keep it in float")
    tied = None
    for parent, child_name, _, linear in targets:
        q = QuantLinear.from_linear(linear, scheme, group_size, double_quant)
        if tied_weight is not None and linear.weight is tied_weight:
            tied = q
        setattr(parent, child_name, q)
    if include_embeddings and emb is not None and not isinstance(emb, QuantEmbedding):
        if tied is not None:
            model.tok_emb = QuantEmbedding(tied)
        else:
            model.tok_emb = QuantEmbedding(emb, scheme, group_size, double_quant)
    return model


def quantized_layers(model):
    """{name: QuantLinear} of a model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
