"""The Optimizer base class that SGD, Adam/AdamW and Lion share: parameter groups, per-parameter
state keyed by index, the step loop, and saving and restoring the state.

Reading order: argument checks -> Optimizer (construction, zero_grad, step, state_dict /
load_state_dict) -> flatten_state_dict / unflatten_state_dict (the safetensors + JSON split) ->
param_groups_for_weight_decay (which parameters to decay).

Shaped like torch.optim.Optimizer. `param_groups` is a list of dicts, each holding "params" and
the group's hyperparameters (a schedule writes group["lr"] before each step). Parameter i is the
i-th parameter counted across the groups in order, and `state[i]` holds its arrays (on the
parameter's device, in its dtype) and "step", the number of updates it has received. Indices, not
id(), key the state, so a checkpoint loads into a freshly built model.

A subclass defines three things: `_check_group(group)` (validate and normalise hyperparameters),
`_state_names(group)` (the names of a parameter's state arrays, each starting at zero) and
`_update(p, g, state, group)`, which calls its fused update kernel on one parameter's arrays.

On the CPU, step() calls `_update` once per parameter. On a GPU a group whose parameters all have
gradients is updated in one launch: its parameters, state and gradients are packed into flat
device arrays and `_update` runs once over them (flat.py explains how, and what it keeps).
"""
import math
import numbers

import numpy as np

from .. import backend
from ..nn.layers import Embedding
from ..tensor import Tensor
from .flat import FlatGroup, gpu_grads

__all__ = ["Optimizer", "flatten_state_dict", "unflatten_state_dict",
           "param_groups_for_weight_decay"]


# ---- argument checks (shared by the subclasses' _check_group) ------------------------------------
def check_number(name, value, low=0.0, high=math.inf, high_open=False):
    """`value` as a float in [low, high] (or [low, high) when high_open); ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    above = value >= high if high_open else value > high
    if not (value >= low) or above:             # `not >=` also catches NaN
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name}: expected a value in {interval}, got {value!r}")
    return value


def check_betas(betas):
    """betas as a tuple of two floats, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
    return (check_number("betas[0]", betas[0], 0.0, 1.0, high_open=True),
            check_number("betas[1]", betas[1], 0.0, 1.0, high_open=True))


def _as_groups(params):
    """The constructor's `params` (Parameters, or dicts with "params") as a list of dicts."""
    if isinstance(params, Tensor):
        raise TypeError("params: expected an iterable of Parameters or of param-group dicts, "
                        "got a single Tensor (wrap it in a list)")
    if isinstance(params, dict):
        raise TypeError("params: expected an iterable of Parameters or of param-group dicts, got "
                        "one dict (wrap it in a list)")
    params = list(params)
    if not params:
        raise ValueError("params: got an empty parameter list")
    if all(isinstance(p, dict) for p in params):
        return [dict(g) for g in params]
    if any(isinstance(p, dict) for p in params):
        raise TypeError("params: expected all Parameters or all param-group dicts, got a mix")
    return [{"params": params}]


class Optimizer:
    """Base class: holds param_groups and state; subclasses supply the update rule."""

    def __init__(self, params, defaults):
        self.defaults = self._check_group(dict(defaults))
        self.param_groups = []
        self.state = {}          # parameter index -> {"step": int, state name: array}
        self._flat = {}          # group position -> FlatGroup (GPU groups, see flat.py)
        for group in _as_groups(params):
            self.add_param_group(group)

    # ---- the subclass's part ----------------------------------------------------------------
    def _check_group(self, group):
        raise NotImplementedError

    def _state_names(self, group):
        raise NotImplementedError

    def _update(self, p, g, state, group):
        raise NotImplementedError

    # ---- groups -----------------------------------------------------------------------------
    def add_param_group(self, group):
        """Append a group: a dict with "params" and any hyperparameters to override."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"param group: expected a dict with a 'params' entry, got {group!r}")
        hyper = self._checked_hyper(group, f"param group {len(self.param_groups)}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if not params:
            raise ValueError(f"param group {len(self.param_groups)}: 'params' is empty")
        seen = {id(p) for p in self._parameters()}
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"param group {len(self.param_groups)}: expected Parameters, got "
                                f"{type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"param group {len(self.param_groups)}: parameters must be "
                                f"floating point, got one of dtype {p.dtype}")
            if id(p) in seen:
                raise ValueError(f"param group {len(self.param_groups)}: a parameter appears "
                                 "twice (in this group or an earlier one)")
            seen.add(id(p))
        self.param_groups.append({**hyper, "params": params})

    def _checked_hyper(self, group, where):
        """The group's hyperparameters, defaults filled in, checked by the subclass."""
        unknown = sorted(set(group) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} for {type(self).__name__}; "
                             f"expected some of {sorted(self.defaults)} and 'params'")
        hyper = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        return self._check_group(hyper)

    def _parameters(self):
        return [p for group in self.param_groups for p in group["params"]]

    def _init_state(self, p, group):
        """A new parameter's state: step 0 and a zeroed array per state name."""
        xp = backend.array_module(p.data)
        return {"step": 0, **{name: xp.zeros_like(p.data) for name in self._state_names(group)}}

    # ---- a step -----------------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Drop every parameter's gradient (set_to_none=False zeroes it in place instead)."""
        for p in self._parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0

    def step(self, closure=None):
        """Update every parameter that has a .grad (others are skipped and keep their state).
        closure, if given, re-evaluates the model and returns the loss, which step returns."""
        loss = closure() if closure is not None else None
        index = 0
        for k, group in enumerate(self.param_groups):
            if (backend.device_of(group["params"][0].data) == "cuda"
                    and self._step_flat(k, group, index)):
                index += len(group["params"])
                continue
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad.data if isinstance(p.grad, Tensor) else p.grad
                    if g.shape != p.shape:
                        raise ValueError(f"parameter {index}: grad has shape {g.shape}, "
                                         f"expected the parameter's shape {p.shape}")
                    if g.dtype != p.dtype:        # keep the update (and state) in p's dtype
                        g = g.astype(p.dtype)
                    state = self.state.get(index)
                    if state is None:
                        state = self.state[index] = self._init_state(p, group)
                    state["step"] += 1
                    self._update(p, g, state, group)
                    p._version[0] += 1            # autograd's in-place edit counter
                index += 1
        return loss

    def _step_flat(self, k, group, first):
        """Update GPU group `k` (parameters `first`, `first` + 1, ...) in one launch through its
        flat buffers; False, having changed nothing, where that does not apply (flat.py)."""
        params = group["params"]
        grads = gpu_grads(params)
        if grads is None:
            return False
        names = tuple(self._state_names(group))
        keys = {"step", *names}
        states = [self.state.get(first + j) for j in range(len(params))]
        if any(s is not None and set(s) != keys for s in states):
            return False                    # the per-parameter loop adds the missing arrays
        xp = backend.array_module(params[0].data)
        packed = self._flat.get(k)
        if packed is None or not packed.current(params, states, names):
            packed = self._flat[k] = FlatGroup(params, states, names, xp)
            states = packed.states
            for j, s in enumerate(states):
                self.state[first + j] = s
        for s in states:
            s["step"] += 1
        packed.gather(grads, xp)
        packed.update(self._update, group, states)
        for p in params:
            p._version[0] += 1              # autograd's in-place edit counter
        return True

    # ---- saving and restoring ---------------------------------------------------------------
    def state_dict(self):
        """{"state": {index: {"step": int, name: NumPy array}}, "param_groups": [hyperparameters
        and "params": the indices]}: copies, safe to keep while training goes on. For a
        safetensors checkpoint split it with flatten_state_dict()."""
        state = {i: {k: (v if k == "step" else backend.to_numpy(v).copy())
                     for k, v in s.items()} for i, s in sorted(self.state.items())}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = list(range(start, start + n))
            groups.append(saved)
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and state from state_dict() (or unflatten_state_dict()).
        Group sizes and every array's shape must match; arrays are copied to each parameter's
        device and dtype."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: the state has {len(groups)} param groups, this "
                             f"optimizer {len(self.param_groups)}")
        for k, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"load_state_dict: param group {k} has {len(saved['params'])} "
                                 f"parameters in the state, {len(group['params'])} here")
        checked = [self._checked_hyper(saved, f"load_state_dict: param group {k}")
                   for k, saved in enumerate(groups)]
        owners = [(p, hyper) for group, hyper in zip(self.param_groups, checked)
                  for p in group["params"]]
        new_state = {}
        for key, saved in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(owners):
                raise ValueError(f"load_state_dict: state for parameter {i}, but this optimizer "
                                 f"has {len(owners)} parameters")
            p, hyper = owners[i]
            expected = set(self._state_names(hyper)) | {"step"}
            if set(saved) != expected:
                raise ValueError(f"load_state_dict: parameter {i} has state keys "
                                 f"{sorted(saved)}, expected {sorted(expected)}")
            xp = backend.array_module(p.data)
            entry = {"step": int(saved["step"])}
            for name, array in saved.items():
                if name == "step":
                    continue
                if tuple(array.shape) != tuple(p.shape):
                    raise ValueError(f"load_state_dict: parameter {i} (shape {tuple(p.shape)}): "
                                     f"state {name!r} has shape {tuple(array.shape)}")
                entry[name] = xp.array(backend.to_device(array, p.device), dtype=p.dtype)
            new_state[i] = entry
        for group, hyper in zip(self.param_groups, checked):
            group.update(hyper)
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{n}={v}" for n, v in group.items() if n != "params")
            lines.append(f"  group {k}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines + [")"])


# ---- checkpoints: arrays for safetensors, scalars for JSON ---------------------------------------
def flatten_state_dict(state_dict):
    """Split an optimizer state_dict into (arrays, meta): arrays is {"state.<index>.<name>":
    NumPy array} (safetensors-ready), meta a JSON-able dict of the steps and param groups."""
    arrays, steps = {}, {}
    for i, entry in state_dict["state"].items():
        steps[str(i)] = int(entry["step"])
        for name, array in entry.items():
            if name != "step":
                arrays[f"state.{i}.{name}"] = np.ascontiguousarray(backend.to_numpy(array))
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return arrays, {"steps": steps, "param_groups": groups}


def unflatten_state_dict(arrays, meta):
    """Inverse of flatten_state_dict: the state_dict that load_state_dict takes."""
    state = {int(i): {"step": int(step)} for i, step in meta["steps"].items()}
    for key, array in arrays.items():
        parts = key.split(".", 2)
        if (len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit()
                or int(parts[1]) not in state):
            raise ValueError(f"unflatten_state_dict: unexpected array {key!r} (expected "
                             f"'state.<index>.<name>' for an index in meta['steps'])")
        state[int(parts[1])][parts[2]] = array
    groups = [dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- which parameters to decay -------------------------------------------------------------------
def param_groups_for_weight_decay(model, weight_decay, decay_embeddings=True):
    """Two param groups for `model`: {"params": [2-D+ weights], "weight_decay": weight_decay} and
    {"params": [the rest], "weight_decay": 0.0}; empty groups are left out, frozen parameters
    (requires_grad=False) too.

    The default is nanoGPT's rule: decay every parameter with two or more axes (matmul weights
    and embedding tables), none with one (biases, LayerNorm/RMSNorm gains), since shrinking a
    gain or a bias towards 0 is not a useful prior. decay_embeddings=False also exempts the
    embedding tables (parameters of an nn.Embedding, or whose name contains "emb"), as some
    recipes do; a tied output head shares the token table's parameter and follows it."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        embedding = id(p) in embeddings or "emb" in name.lower()
        if p.ndim >= 2 and (decay_embeddings or not embedding):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
