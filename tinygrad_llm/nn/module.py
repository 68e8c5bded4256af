"""Module, Parameter and the containers, shaped like PyTorch's so habits carry over.

A Module owns Parameters (trained tensors), buffers (arrays that travel with the model but are not
trained, such as RoPE tables) and child Modules, each registered when it is assigned as an
attribute. Names are dotted paths (`blocks.0.attn.qkv.weight`), the keys of `state_dict()` and of
the optimizer's state. Parameters exist from construction, so `AdamW(model.parameters())` and
`state_dict()` work before the first forward.
"""
from collections import OrderedDict

import numpy as np

from .. import backend
from ..tensor import Tensor, array_of

__all__ = ["Parameter", "Module", "ModuleList", "Sequential", "ModuleDict"]


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad is on unless asked otherwise."""
    __slots__ = ()

    def __init__(self, data, requires_grad=True, device=None, dtype=None):
        if isinstance(data, Tensor):
            device = device or data.device
            data = data.data
        super().__init__(data, requires_grad=requires_grad, device=device, dtype=dtype)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"


def _to_array(value, like, name):
    """A state_dict value (Tensor, NumPy or CuPy array) as an array on `like`'s device/dtype."""
    data = value.data if isinstance(value, Tensor) else value
    if not hasattr(data, "shape"):
        raise TypeError(f"load_state_dict: {name} must be a Tensor or an array, got "
                        f"{type(value).__name__}")
    xp = backend.array_module(like)
    return xp.asarray(backend.to_device(data, backend.device_of(like)), dtype=like.dtype)


class Module:
    """Base class of every layer and model: subclasses set attributes in __init__ and define
    forward(); calling the module calls forward."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ---------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                 f"assigning attribute {name!r}")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, array, persistent=True):
        """Keep `array` (not trained) with the module: moved by .to(), saved in state_dict() when
        persistent."""
        object.__setattr__(self, name, array)
        self._buffers[name] = array
        if persistent:
            self._persistent.add(name)
        else:
            self._persistent.discard(name)

    def register_parameter(self, name, param):
        setattr(self, name, param)

    # ---- traversal ------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(name, module) for this module and every descendant, depth first, each once."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(f"{name}.{n}" if name else n, c) for n, c in m._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix="", remove_duplicate=True):
        """(dotted name, Parameter); a parameter shared by two modules (tied embeddings) is listed
        once, under its first name, unless remove_duplicate=False."""
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if remove_duplicate and id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for bname, b in m._buffers.items():
                yield (f"{mname}.{bname}" if mname else bname), b

    def num_parameters(self, trainable_only=False):
        """Total number of parameter elements (shared parameters counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- modes and devices ----------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze every parameter."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def apply(self, fn):
        """Call fn(module) on every module, children first, then self (as PyTorch does)."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    def to(self, device=None, dtype=None):
        """Move (and/or cast) every parameter and buffer in place; shared parameters stay shared."""
        if device is not None:
            backend.check_device(device)
        for p in self.parameters():
            p.data = p.to(device, dtype).data
            p.grad = None
        for m in self.modules():
            m._move(device, dtype)
        return self

    @property
    def device(self):
        """The device of the first parameter ("cpu" for a module without parameters)."""
        for p in self.parameters():
            return p.device
        return "cpu"

    # ---- state ----------------------------------------------------------------------------
    def _move(self, device, dtype):
        """Move and/or cast this module's own buffers (Module.to moves the parameters, once each
        even when shared). A module holding arrays outside its buffers extends this."""
        for name, b in self._buffers.items():
            if b is None:
                continue
            moved = backend.to_device(b, device) if device is not None else b
            if dtype is not None and moved.dtype.kind == "f":
                moved = moved.astype(dtype)
            self.register_buffer(name, moved, name in self._persistent)

    def _save_to_state_dict(self, destination, prefix):
        """Add this module's own entries (not its children's) to destination: its parameters and
        persistent buffers. A module that keeps an array in another form than the one it saves
        (quant/linear.py: a quantized layer's bytes as the CPU kernel's tiles) extends this and
        _state_slots, as PyTorch modules extend their _save_to_state_dict."""
        for pname, p in self._parameters.items():
            destination[prefix + pname] = p.detach()
        for bname, b in self._buffers.items():
            if bname in self._persistent and b is not None:
                destination[prefix + bname] = Tensor(b, device=backend.device_of(b))

    def _state_slots(self, prefix):
        """{key: (shape, load)} for this module's own entries: the shape a checkpoint's value must
        have, and load(value, key), which puts it in place."""
        slots = OrderedDict()
        for pname, p in self._parameters.items():
            def load(value, key, p=p):
                p.data[...] = _to_array(value, p.data, key)
                p._version[0] += 1
            slots[prefix + pname] = (p.shape, load)
        for bname, b in self._buffers.items():
            if bname in self._persistent and b is not None:
                def load(value, key, bname=bname):
                    self.register_buffer(bname, _to_array(value, self._buffers[bname], key), True)
                slots[prefix + bname] = (b.shape, load)
        return slots

    def state_dict(self):
        """name -> Tensor (sharing the parameter's array) for every parameter and persistent
        buffer; a tied parameter appears under each of its names, as in PyTorch."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            m._save_to_state_dict(out, f"{mname}." if mname else "")
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays from `state` (name -> Tensor or array) into the parameters and buffers.

        strict=True: missing or unexpected keys raise a ValueError listing them. Shapes must match
        exactly (always checked). Returns (missing, unexpected) key lists."""
        targets = OrderedDict()
        for mname, m in self.named_modules():
            targets.update(m._state_slots(f"{mname}." if mname else ""))
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        bad_shapes = []
        for key, value in state.items():
            if key in targets:
                if not hasattr(array_of(value), "shape"):
                    raise TypeError(f"load_state_dict: {key} must be a Tensor or an array, got "
                                    f"{type(value).__name__}")
                have, got = tuple(targets[key][0]), tuple(value.shape)
                if have != got:
                    bad_shapes.append(f"{key}: checkpoint {got}, model {have}")
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        if bad_shapes:
            problems.append("shape mismatches: " + "; ".join(bad_shapes))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + " | ".join(problems))
        for key, value in state.items():
            if key in targets:
                targets[key][1](value, key)
        return missing, unexpected

    # ---- calling and printing ---------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules, registered as children "0", "1", ..."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ModuleList(list(self._modules.values())[i])
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied in order: Sequential(a, b)(x) == b(a(x))."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


class ModuleDict(Module):
    """A dict of named child modules."""

    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            setattr(self, k, m)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        setattr(self, key, module)

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()


def as_numpy_state(state):
    """A state_dict as name -> contiguous NumPy array (for safetensors)."""
    return {k: np.ascontiguousarray(v.numpy() if isinstance(v, Tensor) else
                                    backend.to_numpy(v)) for k, v in state.items()}
