"""Pruning: set weights to zero and keep them there.

Magnitude pruning (Han et al., 2015) removes the weights of smallest |w|, on the view that they
contribute least to the outputs. `magnitude_prune(model, sparsity)` zeroes exactly
round(sparsity * n) weights of each targeted matrix (per layer: every layer ends equally sparse;
or, with scope="global", the smallest across all of them, which prunes some layers harder).

2:4 semi-structured sparsity (NVIDIA's sparse tensor cores; Mishra et al., 2021) keeps the two
largest of every four consecutive weights along the input dimension: exactly 50%, in a pattern
that hardware can skip. `prune_2_4(model)`.

Both return {layer name: mask} (True = kept). A short recovery fine-tuning re-learns around the
holes; `apply_masks(model, masks)` after each optimizer step keeps the pruned weights at zero.
Only the Linear layers' weights of the transformer blocks are pruned by default (the embeddings
and head are shared and small); `targets` are fnmatch patterns of layer names.
"""
import fnmatch

import numpy as np

from .. import backend
from ..nn.layers import Linear

__all__ = ["magnitude_prune", "prune_2_4", "apply_masks", "sparsity"]

DEFAULT_TARGETS = ("blocks.*",)


def _linears(model, targets):
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, Linear) and any(fnmatch.fnmatch(name, t) for t in targets):
            found[name] = module
    if not found:
        names = [n for n, m in model.named_modules() if isinstance(m, Linear)]
        raise ValueError(f"prune: targets {list(targets)} match no Linear layer; the model's "
                         f"Linear layers are {names}")
    return found


def _apply(layer, keep):
    xp = backend.array_module(layer.weight.data)
    layer.weight.data *= xp.asarray(keep, dtype=layer.weight.dtype)


def magnitude_prune(model, sparsity, targets=DEFAULT_TARGETS, scope="layer"):
    """Zero the fraction `sparsity` of smallest-|w| weights in each targeted Linear (scope
    "layer") or across all of them together ("global"). Returns {name: keep mask}."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"magnitude_prune: sparsity must be in [0, 1), got {sparsity!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"magnitude_prune: scope must be 'layer' or 'global', got {scope!r}")
    layers = _linears(model, targets)
    weights = {n: np.abs(backend.to_numpy(m.weight.data)) for n, m in layers.items()}
    masks = {}
    if scope == "global":
        flat = np.concatenate([w.ravel() for w in weights.values()])
        k = int(round(sparsity * flat.size))
        order = np.argsort(flat, kind="stable")            # ties: the earlier weight goes first
        keep = np.ones(flat.size, bool)
        keep[order[:k]] = False
        at = 0
        for n, w in weights.items():
            masks[n] = keep[at:at + w.size].reshape(w.shape)
            at += w.size
    else:
        for n, w in weights.items():
            k = int(round(sparsity * w.size))
            keep = np.ones(w.size, bool)
            keep[np.argsort(w.ravel(), kind="stable")[:k]] = False
            masks[n] = keep.reshape(w.shape)
    for n, m in layers.items():
        _apply(m, masks[n])
    return masks


def prune_2_4(model, targets=DEFAULT_TARGETS):
    """Keep the 2 largest-|w| of every 4 consecutive input weights of each targeted Linear
    (in_features must be a multiple of 4). Returns {name: keep mask}."""
    masks = {}
    for n, m in _linears(model, targets).items():
        w = np.abs(backend.to_numpy(m.weight.data))
        if w.shape[1] % 4:
            raise ValueError(f"prune_2_4: layer {n!r} has in_features={w.shape[1]}, not a "
                             f"multiple of 4")
        groups = w.reshape(w.shape[0], -1, 4)
        order = np.argsort(groups, axis=2, kind="stable")       # smallest two first
        keep = np.ones(groups.shape, bool)
        np.put_along_axis(keep, order[..., :2], False, axis=2)
        masks[n] = keep.reshape(w.shape)
        _apply(m, masks[n])
    return masks


def apply_masks(model, masks):
    """Zero the pruned weights again (after an optimizer step moved them)."""
    modules = dict(model.named_modules())
    for n, keep in masks.items():
        _apply(modules[n], keep)


def sparsity(model, targets=DEFAULT_TARGETS):
    """{name: fraction of zero weights} of the targeted Linear layers, and "total"."""
    out, zeros, total = {}, 0, 0
    for n, m in _linears(model, targets).items():
        w = backend.to_numpy(m.weight.data)
        out[n] = float((w == 0).mean())
        zeros, total = zeros + int((w == 0).sum()), total + w.size
    out["total"] = zeros / max(total, 1)
    return out
