"""QuantLinear: a Linear layer whose weight is stored quantized, and `quantize(model)`.

The forward never builds the float weight: `quant_matmul` (a kernel; the reference below
dequantizes and multiplies, the Numba version in kernels/cpu/quant.py and the CUDA one in
kernels/cuda/quant.py decode each block inside the dot product) computes y = x W_hat^T straight
from the packed fields. The weight is frozen (it has no gradient), but x gets one, dx = dy W_hat,
so a LoRA adapter on top of a quantized base trains through it (QLoRA).

A layer keeps its fields in a PackedWeight, the bytes and scales in the layout `quant_pack`
gives: its reference keeps them row-major (RowMajor), as on a GPU, where the CUDA kernel
(kernels/cuda/quant.py) reads them and the reference decodes them (formats.py is written against
either array module), so a forward moves no weight between host and device; on the CPU its
kernel stores them only as column tiles (kernels/cpu/quant.py's ColumnTiles), one resident copy.
Quantizing (`quantize`, `from_linear`) is host work, done once: the float weight comes over, the
fields go back.

`state_dict()` gives the fields under their own names, row-major as formats.py defines them, so
checkpoints hold the packed bytes (the file shrinks with the weights) and `quantize(model, ...)`
followed by `load_state_dict` restores a saved quantized model. A float checkpoint into a
quantized model, or the reverse, fails in load_state_dict with the layer's missing and unexpected
keys (weight vs qweight, scale, ...).

Reading order: RowMajor and quant_pack (the layout), quant_matmul (the product's reference),
PackedWeight, QuantMatmulOp, QuantLinear, QuantEmbedding, fall_back and quantize.
"""
import fnmatch
import re
import warnings
import weakref

import numpy as np

from .. import backend
from ..kernels import kernel
from ..nn.layers import Linear, init_parameter
from ..nn.module import Module
from ..tensor import Function, Tensor
from .formats import (NF4_GROUPS, SCHEMES, block_size, dequantize_operands, fitting_group,
                      matmul_operands, quantize_weight)

__all__ = ["QuantLinear", "QuantEmbedding", "PackedWeight", "RowMajor", "quantize",
           "fall_back", "quant_matmul", "quant_pack", "quantized_layers"]


def _dense(weight, like):
    """A PackedWeight's float matrix, on `like`'s device and in its dtype."""
    return backend.to_device(weight.dequantize(), backend.device_of(like)).astype(like.dtype)


class RowMajor:
    """matmul_operands' qweight (out, row_bytes), scale (out, in / group) and minimum (q4_1's
    (out, in / 32), else None) kept as they are, on their device: quant_pack's reference layout.
    kernels/cpu/quant.py's ColumnTiles answers the same four questions from its column tiles."""

    def __init__(self, qweight, scale, minimum):
        self.qweight, self.scale, self.minimum = qweight, scale, minimum

    @property
    def nbytes(self):
        return sum(a.nbytes for a in (self.qweight, self.scale, self.minimum) if a is not None)

    def row_major(self, ids=None):
        """qweight, or its rows ids."""
        return self.qweight if ids is None else self.qweight[ids]

    def scales(self, ids=None):
        """The scales, or their rows ids."""
        return self.scale if ids is None else self.scale[ids]

    def mins(self, ids=None):
        """q4_1's block mins (or rows ids), None for other schemes."""
        return self.minimum if self.minimum is None or ids is None else self.minimum[ids]


@kernel("quant_pack")           # fast version: kernels/cpu/quant.py (column tiles)
def quant_pack(qweight, scale, minimum, levels, group):
    """The layout a quantized matrix's bytes and scales are kept in, from matmul_operands' form
    (levels and group say how to read them; the layout itself holds the three arrays).

    Here they stay as they are, row-major (RowMajor): block b of row o is q[o, b-th run of
    bytes], what quant_matmul's reference decodes and, on a GPU, what the CUDA kernel reads with
    a row's threads side by side. The CPU kernel stores them transposed instead, as column tiles
    (ColumnTiles: each input element meets a contiguous run of outputs, so its loops vectorise
    over the outputs), and the layer keeps only those."""
    return RowMajor(qweight, scale, minimum)


@kernel("quant_matmul")         # fast versions: kernels/cpu/quant.py, kernels/cuda/quant.py
def quant_matmul(x, weight):
    """x: (N, in) float -> (N, out) = x W_hat^T in x's dtype, W_hat a PackedWeight: decoded here in
    full, then one matrix product."""
    return x @ _dense(weight, x).T


SCALE_FIELD = {"int8": "scale", "q8_0": "scale", "q4_0": "scale", "q4_1": "scale",
               "nf4": "absmax"}       # the field matmul_operands passes on as its scale


class PackedWeight:
    """One quantized (out, in) matrix as it lives in memory: its scheme and fields (formats.py;
    what a checkpoint or a GGUF file holds, with qweight the largest by far).

    The bytes and scales are kept once, in the layout quant_pack gives (`layout`): on the CPU
    the column tiles its kernels read (`tiles`, also the decode step's), from which `fields`,
    `qweight` and `operands` rebuild the row-major arrays when a checkpoint, a GGUF writer or
    the reference path asks; with the kernels off, or on a GPU, the row-major arrays themselves
    (on the device: the CUDA kernels, kernels/cuda/quant.py, read that layout, and everything
    here decodes there; `tiles` is then None). Fields no layout holds (NF4's double-quantized
    scale codes) are kept as they are. A tied embedding and head share one PackedWeight;
    `replace` changes it in place so both see a load."""

    def __init__(self, scheme, fields, device=None):
        self.scheme = scheme
        self._store(dict(fields), backend.check_device(device))

    def _store(self, fields, device):
        xp = backend.xp_for(device)
        fields = {k: xp.ascontiguousarray(backend.to_device(v, device)) for k, v in fields.items()}
        self.field_specs = {k: (tuple(v.shape), v.dtype) for k, v in sorted(fields.items())}
        # levels (16 float32, or None) live on the device with the fields: made once, here
        q, scale, minimum, self.levels, self.group = matmul_operands(fields, self.scheme)
        self.layout = quant_pack(q, scale, minimum, self.levels, self.group)
        self.tiles = None if isinstance(self.layout, RowMajor) else self.layout
        # field name -> how the layout gives it back; NF4 with double quantization has no absmax
        # field (the layout holds the decoded scales), so its codes stay in _fields
        held = {"qweight": self.layout.row_major, SCALE_FIELD[self.scheme]: self.layout.scales,
                "min": self.layout.mins}
        self._held = {name: read for name, read in held.items() if name in fields}
        self._fields = {k: v for k, v in fields.items() if k not in self._held}
        self.device = device
        self._rebuilt = {}                   # name -> weak reference to the last rebuilt array
        self.key = object()                  # a new identity whenever the content changes

    def field(self, name):
        """One field as formats.py defines it (rebuilt from the tiles on the CPU; while someone
        holds a rebuilt array, asking again gives the same one, so a tied table is saved once)."""
        if name not in self._held:
            return self._fields[name]
        hit = self._rebuilt.get(name)
        value = hit() if hit is not None else None
        if value is None:
            shape, dtype = self.field_specs[name]
            value = self._held[name]().reshape(shape).astype(dtype, copy=False)
            self._rebuilt[name] = weakref.ref(value)
        return value

    @property
    def qweight(self):
        return self.field("qweight")

    @property
    def fields(self):
        return {name: self.field(name) for name in self.field_specs}

    @property
    def operands(self):
        """matmul_operands' form (NF4's double-quantized scales decoded), on the weight's device:
        (qweight, scale, minimum, levels, group)."""
        return (self.qweight, self.layout.scales(), self.layout.mins(), self.levels, self.group)

    @property
    def nbytes(self):
        """Resident bytes: the layout and the fields kept beside it."""
        return self.layout.nbytes + sum(v.nbytes for v in self._fields.values())

    def replace(self, name, value):
        """Put a new array in field `name` (a checkpoint being loaded), in place."""
        fields = self.fields
        fields[name] = value
        self._store(fields, self.device)

    def to(self, device):
        """Move to `device` in place (a no-op when already there)."""
        device = backend.check_device(device)
        if device != self.device:
            self._store(self.fields, device)

    def rows(self, ids):
        """W_hat[ids] (len(ids), in) float32 on the weight's device, decoding only those rows
        (an embedding lookup). ids: int array on either device (a few ids cross, never rows)."""
        xp = backend.xp_for(self.device)
        ids = xp.asarray(backend.to_device(ids, self.device), dtype=xp.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            return dequantize_operands(self.layout.row_major(ids), self.layout.scales(ids),
                                       self.layout.mins(ids), self.levels, self.group)

    def dequantize(self):
        """The float32 (out, in) matrix: a new array on the weight's device."""
        with np.errstate(over="ignore", invalid="ignore"):
            return dequantize_operands(*self.operands)


class QuantMatmulOp(Function):
    """y = x W_hat^T with W_hat frozen: backward gives x its gradient dy W_hat only."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        lead = x.shape[:-1]
        y = quant_matmul(x.reshape(-1, x.shape[-1]), weight)
        return y.reshape(lead + (y.shape[-1],))

    @staticmethod
    def backward(ctx, grad):
        return (grad @ _dense(ctx.weight, grad),)


class _Quantized(Module):
    """What QuantLinear and QuantEmbedding share: a PackedWeight `packed` whose fields the state
    dict holds under their own names (qweight, scale, ...), rebuilt row-major on the CPU."""

    def _set_fields(self, fields, device=None):
        self.packed = PackedWeight(self.scheme, fields, device)

    def __getattr__(self, name):
        """A field by its state-dict name (layer.scale, layer.qweight), as buffers read."""
        packed = self.__dict__.get("packed")
        if packed is not None and name in packed.field_specs:
            return packed.field(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def fields(self):
        return self.packed.fields

    def dequantize(self):
        """The float weight (out, in) the fields stand for (a new array, on their device)."""
        return self.packed.dequantize().astype(self.dtype, copy=False)

    def _move(self, device, dtype):
        super()._move(device, dtype)
        if device is not None:
            self.packed.to(device)
        if dtype is not None:
            self.dtype = np.dtype(dtype)

    def _save_to_state_dict(self, destination, prefix):
        super()._save_to_state_dict(destination, prefix)
        for name, value in self.packed.fields.items():
            destination[prefix + name] = Tensor(value, device=self.packed.device)

    def _state_slots(self, prefix):
        slots = super()._state_slots(prefix)
        for name, (shape, dtype) in self.packed.field_specs.items():
            def load(value, key, name=name, dtype=dtype):
                data = value.data if isinstance(value, Tensor) else value
                data = backend.to_device(data, self.packed.device)      # once, at load
                self.packed.replace(name, backend.array_module(data).asarray(data, dtype=dtype))
            slots[prefix + name] = (shape, load)
        return slots


class QuantLinear(_Quantized):
    """y = x W_hat^T + b with W stored as `scheme` (formats.SCHEMES) in a PackedWeight `packed`
    (fields qweight, scale, and min / absmax / absmax_q... by scheme, in the state dict under
    those names), bias a Parameter.

    Build with QuantLinear.from_linear(linear, scheme, group_size, double_quant), from fields
    with QuantLinear(in, out, scheme, ..., fields=...), or empty (zero fields of the right
    shapes, for load_state_dict) with QuantLinear(in, out, scheme, ...)."""

    def __init__(self, in_features, out_features, scheme, group_size=64, bias=True,
                 double_quant=False, device=None, dtype=np.float32, fields=None):
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
        if fields is None:                       # zeros of the right shapes, for load_state_dict
            fields = quantize_weight(np.zeros((out_features, in_features), np.float32), scheme,
                                     group_size, double_quant)
        self._set_fields(fields, device)
        self.bias = init_parameter((out_features,), device, dtype, value=0.0) if bias else None

    @classmethod
    def from_linear(cls, linear, scheme, group_size=64, double_quant=False):
        w = backend.to_numpy(linear.weight.data)
        q = cls(linear.in_features, linear.out_features, scheme, group_size,
                linear.bias is not None, double_quant, linear.weight.device, w.dtype,
                fields=quantize_weight(w, scheme, group_size, double_quant))
        if linear.bias is not None:
            q.bias.data[...] = linear.bias.data
        return q

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: input of shape {x.shape} has last dim {x.shape[-1]}, "
                             f"expected in_features={self.in_features}")
        y = QuantMatmulOp.apply(x, weight=self.packed)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        group = f", group_size={self.group_size}" if self.scheme == "nf4" else ""
        dq = ", double_quant=True" if self.double_quant else ""
        return (f"{self.in_features}, {self.out_features}, scheme={self.scheme!r}{group}{dq}, "
                f"bias={self.bias is not None}")


class QuantEmbedding(_Quantized):
    """An Embedding whose table is stored quantized: rows are decoded when looked up (a few rows
    per step while decoding). Built from an Embedding, or `tied` to a QuantLinear head that shares
    the same table (GPT-2's tied embeddings): then both hold one PackedWeight, saved once."""

    def __init__(self, source, scheme=None, group_size=64, double_quant=False):
        super().__init__()
        if isinstance(source, QuantLinear):                      # tied: share the head's table
            self.num_embeddings, self.embedding_dim = source.out_features, source.in_features
            self.scheme, self.dtype = source.scheme, source.dtype
            self.packed = source.packed
        else:
            w = backend.to_numpy(source.weight.data)
            self.num_embeddings, self.embedding_dim = w.shape
            self.scheme, self.dtype = scheme, w.dtype
            self._set_fields(quantize_weight(w, scheme, group_size, double_quant),
                             source.weight.device)

    def forward(self, ids):
        ids = ids.data if isinstance(ids, Tensor) else ids
        if backend.device_of(ids) == "cpu":             # lists and memoryviews too
            ids = np.asarray(ids)
        table = self.packed.rows(ids.reshape(-1))                  # on the table's device
        return Tensor._wrap(table.reshape(ids.shape + (self.embedding_dim,)).astype(self.dtype,
                                                                                    copy=False))

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


def _layer_list(names):
    """['blocks.0.ffn.down', 'blocks.1.ffn.down', 'head'] -> 'blocks.{0,1}.ffn.down, head':
    the layers' names, those differing only in their block number written once."""
    runs = {}
    for name in names:
        head, number, tail = re.match(r"(.*?)(\d*)((?<=\d)\..*|$)", name).groups()
        runs.setdefault((head, tail), []).append(number)
    return ", ".join(f"{head}{{{','.join(numbers)}}}{tail}" if len(numbers) > 1
                     else f"{head}{numbers[0]}{tail}" for (head, tail), numbers in runs.items())


def fall_back(caller, scheme, group_size, widths):
    """{name: the group size to quantize it with, or None to keep it in float} for layers
    {name: in_features}, by formats.fitting_group; one warning line names the layers that do
    not take `group_size`, and what they take instead."""
    if scheme == "nf4" and group_size not in NF4_GROUPS:    # not a group to fall back from
        raise ValueError(f"{caller}('nf4'): group_size must be one of {NF4_GROUPS}, got "
                         f"{group_size}")
    groups = {name: fitting_group(scheme, group_size, n) for name, n in widths.items()}
    moved = {}                               # what a layer takes instead -> its names
    for name, group in groups.items():
        if group != group_size:
            moved.setdefault(group, []).append(name)
    if moved:
        said = [f"{_layer_list(names)} "
                + ("stay in float" if group is None else f"take group_size={group}")
                for group, names in moved.items()]
        warnings.warn(f"{caller}: input size not a multiple of {scheme}'s block "
                      f"{block_size(scheme, group_size)}: " + "; ".join(said), stacklevel=3)
    return groups


def quantize(model, scheme="q8_0", group_size=64, double_quant=False, include_head=False,
             include_embeddings=False, skip=()):
    """Replace the model's Linear layers with QuantLinear, in place; returns the model.

    scheme: one of formats.SCHEMES. group_size: NF4's group (32/64/128). include_head: quantize
    the output head too. include_embeddings: the token embedding table too (QuantEmbedding); a
    head tied to the embeddings is quantized only with both flags, and stays tied (one table).
    skip: fnmatch patterns of layer names to leave in float. A layer whose input size is not a
    multiple of the scheme's block falls back as llama.cpp's quantizer does (fall_back: NF4's
    largest smaller group that fits, else the layer stays as it is, in its float dtype), with
    one warning naming those layers."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: unknown scheme {scheme!r}; valid schemes: {SCHEMES}")
    emb = getattr(model, "tok_emb", None)
    tied_weight = getattr(emb, "weight", None)
    targets = _targets(model, include_head, skip)
    for _, _, full, linear in targets:
        if linear.weight is tied_weight and tied_weight is not None and not include_embeddings:
            raise ValueError(f"quantize: layer {full!r} is tied to the token embeddings; pass "
                             f"include_embeddings=True to quantize both (they stay one table), "
                             f"or include_head=False")
    table = include_embeddings and emb is not None and not isinstance(emb, QuantEmbedding)
    widths = {full: linear.in_features for _, _, full, linear in targets}
    if table:
        widths["tok_emb"] = emb.embedding_dim       # a tied head has the same width: same group
    groups = fall_back("quantize", scheme, group_size, widths)
    tied = None
    for parent, child_name, full, linear in targets:
        if groups[full] is None:
            continue
        q = QuantLinear.from_linear(linear, scheme, groups[full], double_quant)
        if tied_weight is not None and linear.weight is tied_weight:
            tied = q
        setattr(parent, child_name, q)
    if table and groups["tok_emb"] is not None:
        if tied is not None:
            model.tok_emb = QuantEmbedding(tied)
        else:
            model.tok_emb = QuantEmbedding(emb, scheme, groups["tok_emb"], double_quant)
    return model


def quantized_layers(model):
    """{name: QuantLinear} of a model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
