"""Data parallelism, shaped like PyTorch's DistributedDataParallel, with ZeRO-1 as an option.

Every rank holds the whole model and runs forward and backward on its own slice of the batch;
the gradients are then averaged over the ranks, so every rank takes the same optimizer step and
the parameters stay identical without ever being sent again.

Reading order: DistributedDataParallel (construction: the broadcast from rank 0, the buckets),
the gradient hook and finish_gradients (the allreduce that overlaps backward), no_sync (gradient
accumulation), clip_grad_norm_, then ZeRO-1's three extra steps (the partition, gather_parameters,
and the optimizer state's consolidation for a checkpoint).

Buckets. Sending each parameter's gradient alone would pay the per-message latency (alpha) a
hundred times; sending all of them at the end of backward would leave the network idle while
backward computes. So the parameters are grouped, in reverse order of registration (roughly the
order backward finishes them), into buckets of about bucket_cap_mb, each with one flat buffer.
Each parameter's post-accumulate-grad hook counts it ready; when a bucket's last parameter is
ready its gradients are copied into the buffer and a non-blocking allreduce starts, while
backward goes on computing the earlier layers' gradients. finish_gradients() waits for the
buckets, divides by the world size and writes the averages back into each .grad.

Gradient accumulation: inside `with ddp.no_sync():` the hooks do nothing and gradients just
accumulate locally; the last micro-step's backward (outside no_sync) starts the reductions.

ZeRO-1 (Rajbhandari et al., 2020), shard_optimizer=True. Each parameter gets one owner rank
(greedy by size, so the ranks' shares are nearly equal); each bucket's buffer is laid out rank
by rank, every rank's segment padded to the bucket's largest, so one reduce-scatter leaves each
rank the averaged gradients of exactly the parameters it owns. Only the owners' parameters have
a .grad after finish_gradients, so the optimizer (which skips a parameter without a gradient and
creates state lazily) keeps moments for about 1/world of the model. After the step,
gather_parameters() allgathers every bucket's updated parameters. Sharding by whole parameters,
not by flat ranges, keeps Muon correct: its Newton-Schulz step needs the whole matrix. The cost
is the padding (at most a bucket's largest parameter per rank) and a coarser balance.
"""
import contextlib

import numpy as np

from .. import backend
from ..optim.clip import clip_grad_norm_
from ..tensor import Tensor
from .comm import DistributedError, init_process_group

__all__ = ["DistributedDataParallel"]


class _Bucket:
    """Parameters whose gradients travel in one message: `flat` holds them rank segment by rank
    segment (ZeRO-1) or end to end; spans[i] = (lo, hi) of params[i] in flat."""

    def __init__(self, params, owners, size, xp):
        if owners is None:
            self.params, self.segment = list(params), None
        else:                                 # rank 0's parameters, then rank 1's, ...
            self.params = sorted(params, key=lambda p: owners[id(p)])
            per_rank = [sum(p.numel() for p in params if owners[id(p)] == r)
                        for r in range(size)]
            self.segment = max(per_rank)
        self.spans, offset, rank = [], 0, 0
        for p in self.params:
            if owners is not None:
                while rank < owners[id(p)]:   # the next owner's segment starts on a boundary
                    rank += 1
                    offset = rank * self.segment
            self.spans.append((offset, offset + p.numel()))
            offset += p.numel()
        total = size * self.segment if owners is not None else offset
        dtype = self.params[0].dtype
        self.flat = xp.zeros(total, dtype=dtype)
        self.shard = xp.zeros(self.segment, dtype=dtype) if owners is not None else None
        self.ready = 0
        self.handle = None


class DistributedDataParallel:
    """Wraps `module` for data-parallel training over `group` (default: init_process_group()
    for the module's device). Calling it calls the module. Construction broadcasts rank 0's
    parameters and buffers, so every rank starts from the same weights.

    bucket_cap_mb: the gradient bytes per allreduce message (PyTorch's default, 25).
    shard_optimizer: ZeRO-1; then call gather_parameters() after every optimizer step.

    Per step: forward and backward on this rank's batch slice (earlier micro-steps inside
    no_sync()), finish_gradients(), clip_grad_norm_(), optimizer.step(), gather_parameters().
    """

    def __init__(self, module, group=None, bucket_cap_mb=25.0, shard_optimizer=False):
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) \
                or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive number "
                             f"of megabytes, got {bucket_cap_mb!r}")
        self.module = module
        self.group = group or init_process_group(device=module.device)
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("DistributedDataParallel: the module has no parameter that "
                             "requires a gradient")
        devices = {p.device for p in self.params}
        if devices != {self.group.device}:
            raise DistributedError(f"DistributedDataParallel: the parameters are on "
                                   f"{sorted(devices)}, the process group moves "
                                   f"{self.group.device} arrays")
        self.owners = _partition(self.params, self.group.size) if shard_optimizer else None
        self.buckets = self._make_buckets(self.params, bucket_cap_mb * 2 ** 20)
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._sync = True
        self._started = []
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._ready)
        self.broadcast_from_rank0()

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @property
    def rank(self):
        return self.group.rank

    @property
    def world_size(self):
        return self.group.size

    def owner(self, p):
        """The rank that updates `p` under ZeRO-1 (0 for a parameter outside the partition: a
        frozen one in the optimizer)."""
        return self.owners.get(id(p), 0)

    def owns(self, p):
        """Whether this rank updates `p` (always, without ZeRO-1)."""
        return self.owners is None or self.owner(p) == self.group.rank

    def _make_buckets(self, params, cap_bytes):
        """Buckets of at most cap_bytes (a larger parameter alone), one dtype each, in reverse
        registration order."""
        xp = backend.array_module(params[0].data)
        buckets, current, nbytes = [], [], 0
        for p in reversed(params):
            if current and (nbytes + p.data.nbytes > cap_bytes or p.dtype != current[0].dtype):
                buckets.append(_Bucket(current, self.owners, self.group.size, xp))
                current, nbytes = [], 0
            current.append(p)
            nbytes += p.data.nbytes
        buckets.append(_Bucket(current, self.owners, self.group.size, xp))
        return buckets

    def broadcast_from_rank0(self):
        """Every rank's parameters and buffers <- rank 0's (one message per bucket and dtype)."""
        if self.group.size == 1:
            return
        buffers = [b for _, b in self.module.named_buffers()]
        arrays = [t.data if isinstance(t, Tensor) else t for t in self.params + buffers]
        xp = backend.array_module(arrays[0])
        by_dtype = {}
        for a in arrays:
            if a.dtype.kind == "f":
                by_dtype.setdefault(a.dtype, []).append(a)
        for group in by_dtype.values():
            flat = xp.concatenate([a.reshape(-1) for a in group])
            self.group.wait([self.group.broadcast(flat, 0)], "the broadcast of rank 0's weights")
            offset = 0
            for a in group:
                a[...] = flat[offset:offset + a.size].reshape(a.shape)
                offset += a.size
        for p in self.params:
            p._version[0] += 1

    # ---- the gradient reduction ----------------------------------------------------------------
    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate gradients locally (gradient accumulation's
        earlier micro-steps); the first backward after it reduces the sum."""
        previous, self._sync = self._sync, False
        try:
            yield self
        finally:
            self._sync = previous

    def _ready(self, p):
        """p's gradient is final for this backward: count it, and start its bucket when full."""
        if not self._sync:
            return
        bucket = self._bucket_of[id(p)]
        bucket.ready += 1
        if bucket.ready > len(bucket.params):
            raise RuntimeError("DistributedDataParallel: a second backward reached the "
                               "parameters before finish_gradients(); accumulate gradients "
                               "inside no_sync() and call finish_gradients() once per step")
        if bucket.ready == len(bucket.params):
            self._start(bucket)
        self.group.progress([b.handle for b in self._started])

    def _start(self, bucket):
        for p, (lo, hi) in zip(bucket.params, bucket.spans):
            if p.grad is None:                # unused on this rank: it contributes zeros
                bucket.flat[lo:hi] = 0
            else:
                bucket.flat[lo:hi] = p.grad.data.reshape(-1)
        if bucket.shard is None:
            bucket.handle = self.group.allreduce(bucket.flat)
        else:
            bucket.handle = self.group.reduce_scatter(bucket.flat, bucket.shard)
        self._started.append(bucket)

    def finish_gradients(self):
        """Wait for every bucket's reduction and leave the average over the ranks in .grad (with
        ZeRO-1: in the .grad of this rank's own parameters only; the others' become None).
        Buckets that backward never completed (parameters unused this step) are sent now."""
        for bucket in self.buckets:
            if bucket.handle is None:
                self._start(bucket)
        self.group.wait([b.handle for b in self.buckets], "the gradient allreduce")
        scale = 1.0 / self.group.size
        rank = self.group.rank
        for bucket in self.buckets:
            reduced = bucket.flat if bucket.shard is None else bucket.shard
            reduced *= scale
            base = 0 if bucket.shard is None else rank * bucket.segment
            for p, (lo, hi) in zip(bucket.params, bucket.spans):
                if not self.owns(p):
                    p.grad = None
                    continue
                g = reduced[lo - base:hi - base].reshape(p.shape)
                if p.grad is None:
                    p.grad = Tensor._wrap(g.copy())
                else:
                    p.grad.data[...] = g
            bucket.ready, bucket.handle = 0, None
        self._started = []

    def clip_grad_norm_(self, max_norm):
        """clip_grad_norm_ over the reduced gradients; returns the global norm before clipping
        (non-finite: nothing is scaled, and the step should be skipped). With ZeRO-1 each rank
        holds a share of the gradients: the squared norms are summed over the ranks first."""
        reduce = None
        if self.owners is not None and self.group.size > 1:
            def reduce(total):
                return float(self.group.allreduce_scalars([total], "the gradient norm")[0])
        return clip_grad_norm_([p for p in self.params if self.owns(p)], max_norm,
                               reduce_sum_squares=reduce)

    # ---- ZeRO-1 --------------------------------------------------------------------------------
    def gather_parameters(self):
        """ZeRO-1, after the optimizer step: every rank's updated parameters to every rank (one
        allgather per bucket). Without ZeRO-1, nothing to do."""
        if self.owners is None:
            return
        rank = self.group.rank
        for bucket in self.buckets:
            base = rank * bucket.segment
            for p, (lo, hi) in zip(bucket.params, bucket.spans):
                if self.owns(p):
                    bucket.shard[lo - base:hi - base] = p.data.reshape(-1)
            bucket.handle = self.group.allgather(bucket.shard, bucket.flat)
        self.group.wait([b.handle for b in self.buckets], "the parameter allgather")
        for bucket in self.buckets:
            for p, (lo, hi) in zip(bucket.params, bucket.spans):
                if not self.owns(p):
                    p.data[...] = bucket.flat[lo:hi].reshape(p.shape)
                    p._version[0] += 1
            bucket.handle = None

    def drop_foreign_state(self, optimizer):
        """ZeRO-1, after loading a whole optimizer state (a checkpoint): keep only the state of
        this rank's own parameters."""
        if self.owners is None:
            return
        owned = {i for i, p in enumerate(_optimizer_params(optimizer)) if self.owns(p)}
        optimizer.state = {i: s for i, s in optimizer.state.items() if i in owned}

    def consolidated_state_dict(self, optimizer):
        """The whole optimizer's state_dict on rank 0 (None on the others): with ZeRO-1 every
        owner sends its parameters' state to rank 0 (a collective: every rank calls it). Without
        ZeRO-1, rank 0's own."""
        if self.owners is None or self.group.size == 1:
            return optimizer.state_dict() if self.group.rank == 0 else None
        return _gather_optimizer_state(self, optimizer)


def _optimizer_params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def _gather_optimizer_state(ddp, optimizer):
    """ZeRO-1's state_dict on rank 0: each parameter's state from its owner, over host MPI
    messages (state_dict's arrays are host arrays anyway). First a MAX-allreduce of the steps
    (-1: no state yet; each parameter has one owner, so the max is the owner's), then one message
    per state array from each owner other than rank 0."""
    mpi = ddp.group.host
    MPI = mpi.MPI
    params = _optimizer_params(optimizer)
    names = [sorted(optimizer._state_names(group)) for group in optimizer.param_groups
             for _ in group["params"]]
    steps = np.full(len(params), -1, dtype=np.int64)
    for i, p in enumerate(params):
        if ddp.owns(p) and i in optimizer.state:
            steps[i] = optimizer.state[i]["step"]
    what = "the optimizer state's gather to rank 0"
    mpi.wait([mpi.comm.Iallreduce(MPI.IN_PLACE, steps, op=MPI.MAX)], what)
    requests, received = [], {}
    for i, p in enumerate(params):
        owner = ddp.owner(p)
        if owner == 0 or steps[i] < 0:
            continue
        for j, name in enumerate(names[i]):
            tag = i * len(names[i]) + j
            if ddp.rank == owner:
                array = np.ascontiguousarray(backend.to_numpy(optimizer.state[i][name]))
                received[(i, name)] = array       # kept alive until the send completes
                requests.append(mpi.comm.Isend(array, dest=0, tag=tag))
            elif ddp.rank == 0:
                array = received[(i, name)] = np.empty(p.shape, dtype=p.dtype)
                requests.append(mpi.comm.Irecv(array, source=owner, tag=tag))
    mpi.wait(requests, what)
    if ddp.rank != 0:
        return None
    full = optimizer.state_dict()
    for i, p in enumerate(params):
        if ddp.owner(p) != 0 and steps[i] >= 0:
            full["state"][i] = {"step": int(steps[i]),
                                **{name: received[(i, name)] for name in names[i]}}
    full["state"] = dict(sorted(full["state"].items()))
    return full


def _partition(params, size):
    """{id(p): owner rank}: the largest parameters first, each to the rank owning the fewest
    elements so far (ties to the lower rank) — deterministic, so every rank computes the same."""
    load = [0] * size
    owners = {}
    for index in sorted(range(len(params)), key=lambda i: (-params[i].numel(), i)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owners[id(params[index])] = rank
        load[rank] += params[index].numel()
    return owners
