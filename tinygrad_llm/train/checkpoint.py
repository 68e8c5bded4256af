"""Checkpoints: one safetensors file holding the model, the optimizer state and a JSON record
(step, configs, RNG states, tokenizer), written so that a crash never destroys the last good one.

Layout of `ckpt.safetensors`:
  tensors   "model/<name>"   every parameter and persistent buffer (a tied parameter once)
            "optim/<key>"    the optimizer's arrays (moments, ...), as its state_dict gives them
  metadata  "record"         JSON: step, model config, train config, optimizer scalars, RNG
                             states, tokenizer, aliases of tied parameters, and a sha256 of all
                             tensor bytes (a flipped or truncated byte is caught on load)

Writing: to `<path>.tmp`, fsync, then os.replace onto `<path>` (atomic on POSIX), then fsync of the
directory. Reading uses safetensors (no pickle, no code execution); any inconsistency raises
CheckpointError naming the file.
"""
import hashlib
import json
import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..optim import flatten_state_dict

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "CheckpointError", "model_arrays"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or from an incompatible model."""


def _digest(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _memory(a):
    """Where an array's elements are: its first element's address, shape, strides and dtype.
    Tied entries share it; views of one buffer (on a GPU the optimizer packs a group's parameters
    into one, optim/flat.py) share a .base but not this."""
    face = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return face["data"][0], a.shape, a.strides, a.dtype.str


def model_arrays(model):
    """(name -> NumPy array for each distinct parameter/buffer, aliases {tied name: first name})."""
    arrays, first, aliases = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = _memory(tensor.data)
        if key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        arrays[name] = np.ascontiguousarray(tensor.numpy())
    return arrays, aliases


def _fsync_dir(path):
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, model, optimizer=None, record=None):
    """Write model (+ optimizer) + `record` (a JSON-able dict) to `path` atomically."""
    arrays, aliases = model_arrays(model)
    tensors = {f"model/{k}": v for k, v in arrays.items()}
    record = dict(record or {})
    if optimizer is not None:
        opt_arrays, opt_scalars = flatten_state_dict(optimizer.state_dict())
        tensors.update({f"optim/{k}": v for k, v in opt_arrays.items()})
        record["optimizer"] = opt_scalars
    record["aliases"] = aliases
    record["sha256"] = _digest(tensors)
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, tmp, metadata={"record": json.dumps(record)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


def load_checkpoint(path):
    """(model_state, optimizer_arrays, record) from `path`; CheckpointError if it is damaged.
    The optimizer's state_dict is
    optim.unflatten_state_dict(optimizer_arrays, record["optimizer"])."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        tensors = load_file(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        record = json.loads(header["__metadata__"]["record"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({err})") from None
    if _digest(tensors) != record.get("sha256"):
        raise CheckpointError(f"checkpoint {path!r} is corrupt: its tensors do not match the "
                              "checksum stored with them")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    for alias, name in record.get("aliases", {}).items():
        model_state[alias] = model_state[name]
    opt_arrays = {k[len("optim/"):]: v for k, v in tensors.items() if k.startswith("optim/")}
    return model_state, opt_arrays, record


def load_model(path):
    """(model in eval mode, record) from a checkpoint whose record holds "model_config" (as the
    examples write them): a GPT, or an Encoder when the record's "architecture" is "encoder"
    (train_mlm.py --out). A record with "quantization" (examples/quantize.py) rebuilds those
    quantized layers first, so the packed arrays load into layers of their own shape."""
    from ..models import GPT, Encoder, GPTConfig  # models and quant build on layers below train
    from ..quant import quantize
    state, _, record = load_checkpoint(path)
    if "model_config" not in record:
        raise CheckpointError(f"{path}: the record has no 'model_config' (not written by the "
                              f"examples' trainers); keys: {sorted(record)}")
    architectures = {"gpt": GPT, "encoder": Encoder}
    kind = record.get("architecture", "gpt")
    if kind not in architectures:
        raise CheckpointError(f"{path}: unknown architecture {kind!r} in the record; expected "
                              f"one of {sorted(architectures)}")
    model = architectures[kind](GPTConfig(**record["model_config"]))
    if record.get("quantization"):
        quantize(model, **record["quantization"])
    model.load_state_dict(state)
    return model.eval(), record
