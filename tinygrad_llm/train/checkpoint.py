"""Checkpoints: one safetensors file holding the model, the optimizer state and a JSON record
(step, configs, RNG states, tokenizer), written so that a crash never destroys the last good one.

Layout of `ckpt.safetensors`:
  tensors   "model/<name>"   every parameter and persistent buffer (a tied parameter once)
            "optim/<key>"    the optimizer's arrays (moments, ...), as its state_dict gives them
  metadata  "record"         JSON: step, model config, train config, optimizer scalars, RNG
                             states, tokenizer, aliases of tied parameters
            "sha256"         of every tensor (name, dtype, shape, bytes) and then the record's
                             text: a flipped or truncated byte anywhere is caught on load, a
                             learning rate or a step in the record as much as a weight

Writing: to `<path>.tmp`, fsync, then os.replace onto `<path>` (atomic on POSIX), then fsync of the
directory. Reading uses safetensors (no pickle, no code execution); any inconsistency raises
CheckpointError naming the file. A file from before the record was checksummed (its "sha256" inside
the record, over the tensors alone) still loads, its tensors verified, with a warning that its
record is not: refusing it would throw away every model trained before, and re-saving it (load,
then save_checkpoint) checksums both.
"""
import hashlib
import json
import os
import warnings

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..optim import flatten_state_dict

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "CheckpointError", "model_arrays"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or from an incompatible model."""


def _digest(tensors, record_text=None):
    """sha256 of the tensors in name order, then of the record's JSON text (None: tensors only,
    the older files' checksum)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    if record_text is not None:
        h.update(b"record")
        h.update(record_text.encode())
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
    text = json.dumps(record)
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, tmp, metadata={"record": text, "sha256": _digest(tensors, text)})
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
            metadata = json.loads(f.read(n))["__metadata__"]
        text = metadata["record"]
        record = json.loads(text)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({err})") from None
    if "sha256" in metadata:
        if _digest(tensors, text) != metadata["sha256"]:
            raise CheckpointError(f"checkpoint {path!r} is corrupt: its tensors or its record "
                                  "do not match the checksum stored with them")
    elif isinstance(record, dict) and "sha256" in record:       # before records were covered
        if _digest(tensors) != record["sha256"]:
            raise CheckpointError(f"checkpoint {path!r} is corrupt: its tensors do not match "
                                  "the checksum stored with them")
        warnings.warn(f"checkpoint {path!r} predates checksummed records: its tensors are "
                      "verified, its record is not (save it again to cover both)", stacklevel=2)
    else:
        raise CheckpointError(f"checkpoint {path!r} has no checksum (not written by "
                              "save_checkpoint)")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    for alias, name in record.get("aliases", {}).items():
        model_state[alias] = model_state[name]
    opt_arrays = {k[len("optim/"):]: v for k, v in tensors.items() if k.startswith("optim/")}
    return model_state, opt_arrays, record


def load_model(path):
    """(model in eval mode, tokenizer, record) from a checkpoint whose record holds
    "model_config" (as the examples write them): a GPT, or an Encoder when the record's
    "architecture" is "encoder" (train_mlm.py). A record with "quantization"
    (examples/quantize.py) rebuilds those quantized layers first, so the packed arrays load into
    layers of their own shape. tokenizer: rebuilt from the record's "tokenizer", None without
    one."""
    from ..models import GPT, Encoder, GPTConfig  # models and quant build on layers below train
    from ..quant import quantize
    from ..tokenizers import tokenizer_from_dict
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
    tokenizer = tokenizer_from_dict(record["tokenizer"]) if "tokenizer" in record else None
    return model.eval(), tokenizer, record
