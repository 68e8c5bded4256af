"""One update launch per parameter group on the GPU: the group's parameters, their optimizer state
and their gradients each live in one flat device array, and the fused update runs once over them.

Why. On the CPU a fused update per parameter costs a function call. On a GPU each costs a kernel
launch, a few microseconds whatever its size, and a model has a hundred or more parameters, most
of them small (biases, norm gains): launching per parameter would spend more time starting
kernels than the update spends on memory. So, for a group whose parameters all live on the GPU:

- `FlatGroup` packs the group: one flat array P holds every parameter (each Parameter's `.data`
  becomes the view P[lo:hi].reshape(shape), so the update's results land in the parameters), one
  flat array per state name holds the state (state[i][name] is likewise a view), and G is a
  staging buffer for the gradients.
- A step gathers the gradients into G with one concatenate (casting them to the parameters'
  dtype), then calls the subclass's `_update` on (P, G, state) once: one launch of the fused
  kernel, or the reference's few array operations when kernels are off. Parameters whose step
  counts differ (one was skipped earlier) are updated in runs of equal count, one launch each.
- Before every step, a check in Python (no device work) confirms the packing still holds: every
  parameter's `.data` and every state array is still the view handed out. Module.to (which
  replaces `.data`), a user's assignment, and Optimizer.load_state_dict (which installs new state
  arrays) all break it; the group is then packed again, a one-time copy.
- Where it does not apply, the per-parameter loop runs, unchanged and still correct on the views:
  a parameter without a gradient this step, a group mixing dtypes or devices, a gradient of the
  wrong shape (the loop raises), or state that lacks a name its rule now needs (SGD's momentum
  switched on mid-run: the loop creates the buffer, and the next step packs it).

What does not change: the CPU path (the per-parameter Numba kernels, exactly as before),
`state_dict()`'s format (the state is copied per parameter from its view) and loading. What it
costs: one gradient-sized staging buffer per group. Parameters being views of one buffer means
that code identifying arrays must compare memory, not `.base` (train/checkpoint.py does), and that
a `Module.state_dict()` taken before the first step holds the arrays that packing replaced.
"""
from ..backend import device_of
from ..tensor import Tensor

__all__ = ["FlatGroup", "gpu_grads"]


def gpu_grads(params):
    """The gradients of `params` if the flat step applies to the group: every parameter has a
    gradient of its shape, all on the GPU, one dtype. Otherwise None."""
    dtype = params[0].dtype
    grads = []
    for p in params:
        g = p.grad
        if g is None:
            return None
        g = g.data if isinstance(g, Tensor) else g
        if (g.shape != p.shape or p.dtype != dtype or device_of(p.data) != "cuda"
                or device_of(g) != "cuda"):
            return None
        grads.append(g)
    return grads


class FlatGroup:
    """One parameter group packed into flat device arrays (see the module docstring).

    params: the group's Parameters; states: their state dicts (None where a parameter has none
    yet: it starts from zeros at step 0); names: the state's array names. Rebinds each
    parameter's `.data`; `self.states` holds the state dicts to keep (views of the flat state)."""

    def __init__(self, params, states, names, xp):
        self.params, self.names = list(params), tuple(names)
        self.bounds, total = [], 0                        # [lo, hi) of each parameter in P
        for p in params:
            self.bounds.append((total, total + p.data.size))
            total += p.data.size
        self.param = xp.concatenate([p.data.reshape(-1) for p in params])
        self.grad = xp.empty_like(self.param)             # the gradients' staging buffer
        self.state = {}
        for name in self.names:
            self.state[name] = xp.zeros_like(self.param)  # a fresh parameter's state is zeros
            for s, (lo, hi) in zip(states, self.bounds):
                if s is not None:                         # after load_state_dict: once
                    self.state[name][lo:hi] = s[name].reshape(-1)
        self.views, self.state_views, self.states = [], [], []
        for p, s, (lo, hi) in zip(params, states, self.bounds):
            p.data = self.param[lo:hi].reshape(p.shape)
            views = {name: self.state[name][lo:hi].reshape(p.shape) for name in self.names}
            s = {"step": 0} if s is None else s
            s.update(views)
            self.views.append(p.data)
            self.state_views.append(views)
            self.states.append(s)

    def current(self, params, states, names):
        """True while the parameters and the state are still the views handed out."""
        return (tuple(names) == self.names and len(params) == len(self.params)
                and all(p is q and p.data is v
                        for p, q, v in zip(params, self.params, self.views))
                and all(s is not None and all(s[n] is views[n] for n in self.names)
                        for s, views in zip(states, self.state_views)))

    def gather(self, grads, xp):
        """Copy the gradients into the staging buffer G, in the parameters' dtype (one launch)."""
        xp.concatenate([g.reshape(-1) for g in grads], out=self.grad)

    def runs(self, states):
        """(lo, hi, step) for each run of parameters with the same step count (one, usually)."""
        out, start = [], 0
        for j in range(1, len(states) + 1):
            if j == len(states) or states[j]["step"] != states[start]["step"]:
                out.append((self.bounds[start][0], self.bounds[j - 1][1], states[start]["step"]))
                start = j
        return out

    def update(self, update, group, states):
        """Call update(p, g, state, group) on each run: p a Tensor over P[lo:hi], g and the
        state arrays the matching slices of G and of the flat state."""
        for lo, hi, step in self.runs(states):
            state = {"step": step, **{n: self.state[n][lo:hi] for n in self.names}}
            update(Tensor._wrap(self.param[lo:hi]), self.grad[lo:hi], state, group)
