"""Training on several processes: data parallelism over MPI (CPUs, mpi4py) or NCCL (GPUs, CuPy),
with ZeRO-1's sharded optimizer state as an option.

    mpiexec -n 2 python examples/train_shakespeare.py --ddp=true            # two ranks
    mpiexec -n 2 python examples/train_shakespeare.py --ddp=true --zero=true

comm.py: process groups (the collectives, each wait bounded by a timeout). ddp.py:
DistributedDataParallel (bucketed gradient allreduce overlapping backward, no_sync for gradient
accumulation, ZeRO-1). The Trainer (train/trainer.py) uses them when TrainConfig.ddp is set:
each rank trains on its rows of every batch, rank 0 logs and writes checkpoints.
"""
from .comm import DistributedError, MPIGroup, NCCLGroup, ProcessGroup, get_group, \
    init_process_group
from .ddp import DistributedDataParallel

__all__ = ["DistributedDataParallel", "DistributedError", "ProcessGroup", "MPIGroup",
           "NCCLGroup", "init_process_group", "get_group"]
