"""GPTQ (Frantar et al., 2022): quantize a layer column by column, pushing each column's rounding
error onto the columns not yet quantized, weighted by how the layer's inputs correlate.

A Linear y = W x is judged by its outputs on real inputs: minimise ||W X - W_hat X||^2 over the
calibration inputs X (in, N). With H = 2 X X^T (in x in), quantizing column i alone to q_i leaves
an error that the other columns can partly cancel; Optimal Brain Surgeon gives the best update of
the remaining columns F:

    delta_F = -(w_i - q_i) / [H_F^-1]_ii * [H_F^-1]_{i, F}

GPTQ quantizes the columns in a fixed order (left to right), which lets it use one Cholesky
factor U of H^-1 (upper, H^-1 = U^T U) for every step: row i of U holds exactly the [H_F^-1]
entries above, divided by sqrt([H_F^-1]_ii). Updates are applied within a block of 128 columns
at once and to the columns after the block in one matrix product ("lazy batch" updates), so the
work is a few GEMMs per layer.

Block formats: the scale (and min) of each 32-column block (q8_0 / q4_0 / q4_1) or group (NF4)
is fixed when GPTQ enters it, from the error-compensated weights at that moment, by the format's
own rule (formats.py); each column is then snapped to that block's grid. int8 keeps its
per-row scales from the original weights. The result is ordinary fields of the scheme: a GPTQ
layer is stored and run exactly as a round-to-nearest one.

`gptq_quantize(w, H, scheme)` does one matrix; `gptq(model, calibration, scheme)` runs the model
block by block, each block's Linear layers quantized from the inputs they receive once the
blocks before them are already quantized (the paper's sequential setting).
"""
import numpy as np

from .. import backend
from ..nn.layers import Linear
from ..tensor import no_grad
from .formats import (NF4_CODEBOOK, QK, block_size, pack_nibbles, quantize_weight)
from .linear import QuantLinear, fall_back

__all__ = ["gptq_quantize", "gptq", "hessian"]


def hessian(x):
    """H = 2 X^T X / N for inputs x (..., in), in float64."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return 2.0 * x.T @ x / max(len(x), 1)


def _block_params(scheme, wb):
    """Grid parameters of a (out, g) block from its current weights, by the format's rule."""
    f = quantize_weight(wb.astype(np.float32), scheme, group_size=wb.shape[1])
    if scheme == "nf4":
        return {"absmax": f["absmax"][:, 0]}
    params = {"scale": f["scale"][:, 0]}
    if scheme == "q4_1":
        params["min"] = f["min"][:, 0]
    return params


def _snap(scheme, x, p):
    """Codes and grid values of a column x (out,) under fixed block parameters p."""
    if scheme == "nf4":
        a = p["absmax"].astype(np.float64)
        mid = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2
        code = np.searchsorted(mid, x / np.where(a == 0, 1, a))
        return code.astype(np.uint8), NF4_CODEBOOK[code] * a
    d = p["scale"].astype(np.float64)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    if scheme in ("q8_0", "int8"):
        r = x * inv
        code = np.clip(np.sign(r) * np.floor(np.abs(r) + 0.5) if scheme == "q8_0" else np.rint(r),
                       -127, 127)
        return code.astype(np.int8), code * d
    if scheme == "q4_0":
        code = np.clip(np.trunc(x * inv + 8.5), 0, 15)
        return code.astype(np.uint8), (code - 8) * d
    m = p["min"].astype(np.float64)                                   # q4_1
    code = np.clip(np.trunc((x - m) * inv + 0.5), 0, 15)
    return code.astype(np.uint8), code * d + m


def gptq_quantize(w, H, scheme, group_size=64, block=128, damp=0.01):
    """w: (out, in) float weights, H: (in, in) input Hessian (hessian(x)) -> fields of `scheme`
    (formats.SCHEMES), quantized with GPTQ's error compensation. damp: fraction of H's mean
    diagonal added to it (the paper's 1%), so that the inverse exists."""
    W = np.array(w, dtype=np.float64)
    out, n = W.shape
    g = block_size(scheme, group_size)
    g = n if scheme == "int8" else g
    if n % g:
        raise ValueError(f"gptq_quantize({scheme!r}): in_features={n} is not a multiple of the "
                         f"block size {g}")
    if H.shape != (n, n):
        raise ValueError(f"gptq_quantize: H must be ({n}, {n}) for w of shape {w.shape}, got "
                         f"{H.shape}")
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0                     # inputs that never fire: nothing to compensate
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(n)] += damp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T                        # upper: H^-1 = U^T U
    codes = np.zeros((out, n), np.int8 if scheme in ("q8_0", "int8") else np.uint8)
    n_groups = n // g
    params = [None] * n_groups
    if scheme == "int8":                        # per-row scales from the original weights
        params[0] = {"scale": quantize_weight(np.asarray(w, np.float32), "int8")["scale"]}
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        err = np.zeros((out, b1 - b0))
        for i in range(b0, b1):
            if params[i // g] is None:          # entering a block: fix its grid now
                params[i // g] = _block_params(scheme, W[:, i:i + g])
            code, q = _snap(scheme, W[:, i], params[i // g])
            codes[:, i] = code
            e = (W[:, i] - q) / U[i, i]
            W[:, i + 1:b1] -= np.outer(e, U[i, i + 1:b1])
            err[:, i - b0] = e
        W[:, b1:] -= err @ U[b0:b1, b1:]
    return _fields(scheme, codes, params, g)


def _fields(scheme, codes, params, g):
    """Assemble the scheme's fields from per-column codes and per-block parameters."""
    stack = {k: np.stack([p[k] for p in params], axis=1) for k in params[0]}
    if scheme == "int8":
        return {"qweight": codes, "scale": stack["scale"][:, 0].astype(np.float32)}
    if scheme == "q8_0":
        return {"qweight": codes, "scale": stack["scale"]}
    fields = {"qweight": pack_nibbles(codes)}
    if scheme == "nf4":
        fields["absmax"] = stack["absmax"].astype(np.float32)
        return fields
    fields["scale"] = stack["scale"]
    if scheme == "q4_1":
        fields["min"] = stack["min"]
    assert g == QK
    return fields


def _blocks_linears(block):
    """(name in the block, parent, attribute name, Linear) for each Linear of a block."""
    return [(f"{path}.{name}" if path else name, parent, name, child)
            for path, parent in block.named_modules()
            for name, child in list(parent._modules.items()) if isinstance(child, Linear)]


def gptq(model, calibration, scheme="q4_0", group_size=64, block=128, damp=0.01):
    """Quantize a GPT's block Linear layers with GPTQ, in place (the head and embeddings stay
    float). calibration: (B, T) token ids run through the model; block by block, each Linear's
    inputs are recorded with the earlier blocks already quantized. A layer whose input size is
    not a multiple of the scheme's block falls back as in quantize() (linear.fall_back), with
    one warning. Returns the model."""
    ids = np.asarray(calibration)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"gptq: calibration must be (B, T) token ids, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    groups = fall_back("gptq", scheme, group_size, {
        f"blocks.{i}.{name}": lin.in_features
        for i, block_module in enumerate(model.blocks)
        for name, _, _, lin in _blocks_linears(block_module)})
    was_training = model.training
    model.eval()
    try:
        for i, block_module in enumerate(model.blocks):
            targets = [(parent, name, lin, groups[f"blocks.{i}.{full}"])
                       for full, parent, name, lin in _blocks_linears(block_module)
                       if groups[f"blocks.{i}.{full}"] is not None]
            captured = {id(lin): [] for _, _, lin, _ in targets}
            originals = {}
            for _, _, lin, _ in targets:
                originals[id(lin)] = lin.forward

                def record(x, lin=lin):
                    captured[id(lin)].append(backend.to_numpy(x.data).reshape(-1, x.shape[-1]))
                    return originals[id(lin)](x)
                object.__setattr__(lin, "forward", record)
            with no_grad():
                model(ids)
            for _, _, lin, _ in targets:
                object.__delattr__(lin, "forward")
            for parent, name, lin, group in targets:
                H = hessian(np.concatenate(captured[id(lin)]))
                fields = gptq_quantize(backend.to_numpy(lin.weight.data), H, scheme, group,
                                       block, damp)
                q = QuantLinear(lin.in_features, lin.out_features, scheme, group,
                                lin.bias is not None, device=lin.weight.device,
                                dtype=lin.weight.dtype, fields=fields)
                if lin.bias is not None:
                    q.bias.data[...] = lin.bias.data
                setattr(parent, name, q)
    finally:
        model.train(was_training)
    return model
