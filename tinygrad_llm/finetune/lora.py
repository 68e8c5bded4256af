"""LoRA (Hu et al., 2021): fine-tune a frozen layer through a low-rank update.

    y = W x + b  +  (alpha / r) * B A dropout(x)        A: (r, in), B: (out, r), r << in, out

Only A and B train: r (in + out) numbers per layer instead of in * out. B starts at zero, so the
adapted model starts exactly as the base model; A starts random (uniform, +-1/sqrt(in), as a
Linear's weight), so the first gradients on B are not zero. alpha / r scales the update so that
changing r does not change the effective learning rate much.

QLoRA (Dettmers et al., 2023) is the same adapter over a quantized base: the base is a
QuantLinear (NF4 in the paper), whose forward gives x its gradient through the dequantized weight
and keeps the weight frozen (quant/linear.py). Only the adapters hold float parameters that train.

merge() folds the update into a float base, W <- W + (alpha / r) B A, so inference pays nothing
extra; unmerge() takes it out again. A quantized base cannot absorb a float update without being
quantized again, so merging one raises (use `merged_linear()` for a float copy).

`apply_lora(model, targets, ...)` wraps the Linear layers whose names match `targets`
(fnmatch patterns such as "*.attn.qkv") and freezes everything else; `lora_state_dict` /
`save_adapters` / `load_adapters` keep just the adapters (a few hundred kilobytes).
"""
import fnmatch

import numpy as np

from .. import backend
from ..nn.layers import Dropout, Linear, init_parameter
from ..nn.module import Module

__all__ = ["LoRALinear", "apply_lora", "lora_layers", "lora_state_dict", "save_adapters",
           "load_adapters", "merge_lora", "unmerge_lora"]


def _is_projection(module):
    """A Linear, or a quantized one (quant.QuantLinear: in/out features and `dequantize`)."""
    return isinstance(module, Linear) or (hasattr(module, "packed")
                                          and hasattr(module, "in_features"))


class LoRALinear(Module):
    """A frozen projection `base` (Linear or QuantLinear) plus a trainable rank-r update."""

    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__()
        if not _is_projection(base):
            raise TypeError(f"LoRALinear: base must be a Linear or QuantLinear, got "
                            f"{type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise ValueError(f"LoRALinear: r must be a positive int, got {r!r}")
        self.base, self.r, self.alpha = base, int(r), float(alpha)
        self.scaling = self.alpha / self.r
        for p in base.parameters():
            p.requires_grad = False
        device = base.weight.device if isinstance(base, Linear) else base.packed.device
        dtype = base.weight.dtype if isinstance(base, Linear) else base.dtype
        bound = 1.0 / np.sqrt(base.in_features)
        self.lora_A = init_parameter((self.r, base.in_features), device, dtype, bound=bound)
        self.lora_B = init_parameter((base.out_features, self.r), device, dtype, value=0.0)
        self.dropout = Dropout(dropout)
        self.merged = False

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def delta(self):
        """(alpha / r) B A as an array (out, in): the update the adapter adds to W."""
        return self.scaling * (self.lora_B.data @ self.lora_A.data)

    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        update = (self.dropout(x) @ self.lora_A.transpose(1, 0)) @ self.lora_B.transpose(1, 0)
        return y + update * self.scaling

    def merge(self):
        """W <- W + (alpha / r) B A; forward then skips the adapter (same outputs, one matmul)."""
        if not isinstance(self.base, Linear):
            raise TypeError("LoRALinear.merge: the base is quantized; merging would quantize the "
                            "update again. Use merged_linear() for a float Linear instead")
        if not self.merged:
            self.base.weight.data += self.delta().astype(self.base.weight.dtype)
            self.merged = True

    def unmerge(self):
        if self.merged:
            self.base.weight.data -= self.delta().astype(self.base.weight.dtype)
            self.merged = False

    def merged_linear(self):
        """A new float Linear equal to base + adapter (a quantized base is dequantized)."""
        base = self.base
        w = base.weight.data if isinstance(base, Linear) else base.dequantize()
        out = Linear(base.in_features, base.out_features, base.bias is not None,
                     backend.device_of(w), w.dtype)
        out.weight.data[...] = w + (0 if self.merged else self.delta().astype(w.dtype))
        if base.bias is not None:
            out.bias.data[...] = base.bias.data
        return out

    def extra_repr(self):
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def _projections(model):
    """(parent, attribute, full name, layer) for every Linear / QuantLinear not inside a LoRA."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            continue
        for child_name, child in list(module._modules.items()):
            full = f"{name}.{child_name}" if name else child_name
            if _is_projection(child) and not isinstance(module, LoRALinear):
                found.append((module, child_name, full, child))
    return found


def apply_lora(model, targets=("*.attn.qkv", "*.attn.proj"), r=8, alpha=16.0, dropout=0.0):
    """Wrap the projections whose names match any of `targets` (fnmatch patterns) in LoRALinear,
    freeze every other parameter, and return the list of wrapped names. A pattern that matches
    no layer raises ValueError listing the layer names."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    layers = _projections(model)
    names = [full for _, _, full, _ in layers]
    for pattern in targets:
        if not any(fnmatch.fnmatch(n, pattern) for n in names):
            raise ValueError(f"apply_lora: target {pattern!r} matches no layer; the model's "
                             f"projections are {names}")
    for p in model.parameters():
        p.requires_grad = False
    wrapped = []
    for parent, child_name, full, layer in layers:
        if any(fnmatch.fnmatch(full, pattern) for pattern in targets):
            setattr(parent, child_name, LoRALinear(layer, r, alpha, dropout))
            wrapped.append(full)
    return wrapped


def lora_layers(model):
    """{name: LoRALinear} of a model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model):
    """Only the adapters' arrays: {"<layer>.lora_A": (r, in), "<layer>.lora_B": (out, r)}."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = backend.to_numpy(layer.lora_A.data)
        out[f"{name}.lora_B"] = backend.to_numpy(layer.lora_B.data)
    return out


def save_adapters(model, path):
    """Write the adapters (and their r / alpha) to a safetensors file, atomically."""
    from safetensors.numpy import save_file
    from ..data.files import commit, temporary_beside
    layers = lora_layers(model)
    if not layers:
        raise ValueError("save_adapters: the model has no LoRA layers (call apply_lora first)")
    meta = {name: f"{m.r},{m.alpha}" for name, m in layers.items()}
    tmp = temporary_beside(str(path))
    save_file({k: np.ascontiguousarray(v) for k, v in lora_state_dict(model).items()}, tmp,
              metadata=meta)
    commit(tmp, str(path))


def load_adapters(model, path):
    """Load adapters written by save_adapters into a model wrapped by apply_lora with the same
    targets and r; a missing or extra layer raises naming it."""
    from safetensors.numpy import load_file
    state = load_file(str(path))
    layers = lora_layers(model)
    want = {f"{n}.lora_{ab}" for n in layers for ab in "AB"}
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        raise ValueError(f"load_adapters: {path} does not fit this model: missing {missing}, "
                         f"unexpected {extra}")
    for name, layer in layers.items():
        for ab in "AB":
            p = getattr(layer, f"lora_{ab}")
            value = state[f"{name}.lora_{ab}"]
            if value.shape != p.shape:
                raise ValueError(f"load_adapters: {name}.lora_{ab} has shape {value.shape}, the "
                                 f"model's is {p.shape} (a different r?)")
            p.data[...] = backend.to_device(value.astype(p.dtype), p.device)


def merge_lora(model):
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model):
    for layer in lora_layers(model).values():
        layer.unmerge()


def merge_and_unload(model):
    """Replace every LoRALinear by a plain Linear equal to base + adapter (merged_linear), so
    the model is back in its own layout: it saves and loads as the base architecture would."""
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.merged_linear())
    return model
