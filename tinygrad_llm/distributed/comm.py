"""Process groups: the collectives data parallelism needs, over MPI (mpi4py, host arrays) or NCCL
(CuPy, device arrays), every wait bounded by a timeout.

Reading order: init_process_group (which engine, and the one-line errors), ProcessGroup (the four
collectives and the bounded wait that every one of them ends in), MPIGroup, NCCLGroup, then the
small host-side helpers (a JSON object to every rank, the same-configuration check).

The engines are used, not rebuilt. MPI moves NumPy buffers between processes on one machine
(shared memory) or several (the network), and `mpiexec` starts the processes; NCCL moves CuPy
buffers between GPUs, and is bootstrapped over MPI as llm.c does: rank 0 makes NCCL's unique id
and MPI broadcasts it.

A collective here is started, not finished: allreduce, reduce_scatter, allgather and broadcast
return a handle at once (MPI's non-blocking Iallreduce and kin; NCCL's calls on a side stream),
and wait(handles) finishes them. That is what lets data parallelism start a bucket's allreduce
while backward computes the next bucket's gradients. MPI without a progress thread moves a
non-blocking collective along only inside MPI calls, so progress() (a Testall) is called from the
gradient hooks: each finished gradient nudges the messages in flight.

No wait hangs. wait() polls, and after `timeout_s` without the other ranks' answer it prints one
line naming the collective and stops the whole job (MPI_Abort): a rank that died, was killed or
hangs costs the others `timeout_s`, not forever. An uncaught exception on any rank also stops
every rank at once (the excepthook installed by init_process_group), instead of leaving the
others waiting in their next collective.
"""
import json
import sys
import time

import numpy as np

from .. import backend

__all__ = ["DistributedError", "ProcessGroup", "MPIGroup", "NCCLGroup", "init_process_group",
           "get_group", "MPI_HINT"]

MPI_HINT = ("pip install -e '.[mpi]' (mpi4py and the MPICH wheels: no system MPI needed), then "
            "launch with: mpiexec -n 2 python <script> ... --ddp=true")
DEFAULT_TIMEOUT_S = 300.0
ABORT_FLUSH_S = 1.0            # seconds a rank waits after its last line before MPI_Abort
_group = None                     # the process group init_process_group made


class DistributedError(RuntimeError):
    """Distributed training cannot start or go on: no MPI, a bad world size, ranks that
    disagree. The message is one line that says what to change."""


def init_process_group(backend_name=None, timeout_s=DEFAULT_TIMEOUT_S, device="cpu"):
    """The process group of this run (made once; later calls return it). backend_name: "mpi"
    (host arrays) or "nccl" (device arrays, one GPU per rank, bootstrapped over MPI); None
    picks "nccl" for device "cuda", else "mpi". Every rank of an `mpiexec -n N` launch calls it.
    A process started without mpiexec is a group of one."""
    global _group
    if _group is not None:
        return _group
    name = backend_name or ("nccl" if backend.check_device(device) == "cuda" else "mpi")
    if name not in ("mpi", "nccl"):
        raise DistributedError(f"init_process_group: backend_name must be 'mpi' or 'nccl', got "
                               f"{backend_name!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise DistributedError(f"init_process_group: timeout_s must be a positive number of "
                               f"seconds, got {timeout_s!r}")
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(f"distributed training needs mpi4py and an MPI library: "
                               f"{MPI_HINT}") from None
    group = MPIGroup(MPI, MPI.COMM_WORLD, float(timeout_s))
    if name == "nccl":
        group = NCCLGroup(group)
    if group.size > 1:
        _abort_on_uncaught_exception(MPI)
    _group = group
    return group


def get_group():
    """The group init_process_group made (None before it was called)."""
    return _group


def _flush_before_abort():
    """Flush stderr and give the launcher a moment to forward it: MPICH's mpiexec stops every
    process as soon as one calls MPI_Abort and can exit before it has read the aborting rank's
    last lines from the pipe (seen once in CI as an empty stderr), which are the lines that say
    why the job stopped."""
    sys.stderr.flush()
    sys.stdout.flush()
    time.sleep(ABORT_FLUSH_S)


def _abort_on_uncaught_exception(MPI):
    """An exception nobody caught on one rank prints its traceback and stops every rank, so the
    others do not wait for it in their next collective."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        _flush_before_abort()
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook


class ProcessGroup:
    """`size` processes, this one `rank`. The collectives take arrays on the group's device and
    return handles for wait(); the reductions sum (dividing by size is the caller's choice).

    allreduce(buf): buf <- the sum of every rank's buf, in place.
    reduce_scatter(buf, out): out <- rank's slice (out.size elements) of the sum of every rank's
        buf, which holds size * out.size elements.
    allgather(part, out): out <- every rank's part, in rank order (out.size = size * part.size).
    broadcast(buf, root): buf <- root's buf.
    host: the MPI group that moves this group's host-side messages (scalars, JSON, checkpoint
        state): the group itself for MPI, NCCL's MPI bootstrap for NCCL.
    """
    rank, size, timeout_s, device = 0, 1, DEFAULT_TIMEOUT_S, "cpu"

    def wait(self, handles, what):
        """Finish `handles`; after timeout_s without them, stop every rank naming `what`."""
        handles = [h for h in handles if h is not None]
        deadline = time.monotonic() + self.timeout_s
        polls = 0
        while not self._done(handles):
            if time.monotonic() > deadline:
                self.abort(f"rank {self.rank}: {what} had no answer from the other ranks in "
                           f"{self.timeout_s:g} s (a rank died, was killed or hangs); stopping "
                           f"all {self.size} ranks")
            polls += 1
            if polls > 200:                   # past the first ~100 us: let the core go
                time.sleep(2e-4)

    def progress(self, handles):
        """Move started collectives along (MPI progresses them only inside its own calls)."""
        if handles:
            self._done(handles)

    def abort(self, message):
        sys.stderr.write(message + "\n")   # one write: ranks sharing stderr keep lines whole
        _flush_before_abort()
        self._abort()

    def allreduce_scalars(self, values, what="a scalar allreduce"):
        """The sum over ranks of a few floats (host), as a float64 NumPy array."""
        buf = np.array(values, dtype=np.float64)
        if self.size > 1:
            self.host.wait([self.host.allreduce(buf)], what)
        return buf

    def barrier(self, what="a barrier"):
        self.allreduce_scalars([0.0], what)


class MPIGroup(ProcessGroup):
    """MPI_COMM_WORLD through mpi4py: NumPy buffers, non-blocking collectives."""

    def __init__(self, MPI, comm, timeout_s=DEFAULT_TIMEOUT_S):
        self.MPI, self.comm, self.timeout_s = MPI, comm, timeout_s
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.device = "cpu"
        self.host = self

    def _check(self, *arrays):
        for a in arrays:
            if backend.device_of(a) != "cpu":
                raise DistributedError("MPIGroup: the mpi backend moves host (NumPy) arrays; "
                                       "device arrays need backend 'nccl'")

    def allreduce(self, buf):
        self._check(buf)
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def reduce_scatter(self, buf, out):
        self._check(buf, out)
        return self.comm.Ireduce_scatter_block(buf, out, op=self.MPI.SUM)

    def allgather(self, part, out):
        self._check(part, out)
        return self.comm.Iallgather(part, out)

    def broadcast(self, buf, root=0):
        self._check(buf)
        return self.comm.Ibcast(buf, root=root)

    def _done(self, handles):
        return self.MPI.Request.Testall(handles)

    def _abort(self):
        self.comm.Abort(1)


class NCCLGroup(ProcessGroup):
    """NCCL through CuPy, one GPU per rank (the rank's index among the ranks on its machine),
    bootstrapped over `mpi_group`. Each collective runs on a side stream after the work already
    queued on the current stream; its handle is an event recorded after it, and the current stream
    waits on that event when wait() returns, so later kernels see the result."""

    _DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}

    def __init__(self, mpi_group):
        cupy, nccl = backend.xp_for("cuda"), backend.nccl()
        self.host, self.nccl, self.cupy = mpi_group, nccl, cupy
        self.rank, self.size, self.timeout_s = mpi_group.rank, mpi_group.size, mpi_group.timeout_s
        self.device = "cuda"
        local = mpi_group.comm.Split_type(mpi_group.MPI.COMM_TYPE_SHARED)
        gpus = cupy.cuda.runtime.getDeviceCount()
        if local.Get_size() > gpus:
            raise DistributedError(f"NCCLGroup: {local.Get_size()} ranks on this machine but "
                                   f"{gpus} GPU(s); the nccl backend needs one GPU per rank")
        cupy.cuda.Device(local.Get_rank()).use()
        uid = np.zeros(128, dtype=np.int64)   # NCCL's unique id: 128 bytes, as ints
        if self.rank == 0:
            uid[:] = nccl.get_unique_id()
        mpi_group.wait([mpi_group.broadcast(uid, 0)], "NCCL's bootstrap (its unique id)")
        self.comm = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _type(self, a):
        name = self._DTYPES.get(str(a.dtype))
        if name is None:
            raise DistributedError(f"NCCLGroup: no NCCL type for dtype {a.dtype}; expected one "
                                   f"of {sorted(self._DTYPES)}")
        return getattr(self.nccl, name)

    def _launch(self, call):
        ready = self.cupy.cuda.Event(disable_timing=True)
        ready.record(self.cupy.cuda.get_current_stream())
        self.stream.wait_event(ready)
        call(self.stream.ptr)
        done = self.cupy.cuda.Event(disable_timing=True)
        done.record(self.stream)
        return done

    def allreduce(self, buf):
        return self._launch(lambda s: self.comm.allReduce(
            buf.data.ptr, buf.data.ptr, buf.size, self._type(buf), self.nccl.NCCL_SUM, s))

    def reduce_scatter(self, buf, out):
        return self._launch(lambda s: self.comm.reduceScatter(
            buf.data.ptr, out.data.ptr, out.size, self._type(buf), self.nccl.NCCL_SUM, s))

    def allgather(self, part, out):
        return self._launch(lambda s: self.comm.allGather(
            part.data.ptr, out.data.ptr, part.size, self._type(part), s))

    def broadcast(self, buf, root=0):
        return self._launch(lambda s: self.comm.bcast(
            buf.data.ptr, buf.size, self._type(buf), root, s))

    def _done(self, events):
        if not all(e.done for e in events):
            return False
        for e in events:                  # later kernels on the current stream see the result
            self.cupy.cuda.get_current_stream().wait_event(e)
        return True

    def _abort(self):
        try:
            self.comm.abort()
        finally:
            self.host._abort()


# ---- small host-side objects ------------------------------------------------------------------
def allgather_json(group, obj, what):
    """Every rank's JSON-able `obj`, in rank order (a list). JSON text in byte buffers, so no
    rank unpickles what another sent."""
    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)
    if group.size == 1:
        return [obj]
    mpi = group.host
    lengths = np.zeros(group.size, dtype=np.int64)
    mpi.wait([mpi.comm.Iallgather(np.array([data.size], dtype=np.int64), lengths)], what)
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    mpi.wait([mpi.comm.Iallgatherv(data, [out, (lengths, offsets), mpi.MPI.BYTE])], what)
    return [json.loads(out[o:o + n].tobytes().decode()) for o, n in zip(offsets, lengths)]


def check_same_everywhere(group, what, obj):
    """Raise DistributedError on every rank when the ranks' `obj` (a JSON-able dict) differ,
    naming the first rank that differs from rank 0 and the keys."""
    if group.size == 1:
        return
    everyone = allgather_json(group, obj, f"the {what} check")
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            keys = sorted(k for k in set(theirs) | set(everyone[0])
                          if theirs.get(k) != everyone[0].get(k))
            raise DistributedError(f"rank {rank}'s {what} differs from rank 0's in "
                                   f"{', '.join(keys)}; every rank must run the same command")

