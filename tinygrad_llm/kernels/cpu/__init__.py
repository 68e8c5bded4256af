"""Numba kernels for the CPU. Importing this package registers every fast implementation; the
kernel registry does so on the first dispatch to a CPU array, so `import tinygrad_llm` stays cheap.

One file per fused family, named as in ops/: softmax (cross-entropy), norm, activation (GELU,
the squared ReLU), embedding, attention, rope (QK-norm with RoPE on a packed projection), and
optim (the SGD, Adam/AdamW and Lion updates), linear (a Linear layer's bias, forward and
backward; its GEMMs stay with BLAS); kv_quant attends over a KIVI-quantized KV cache
reading its packed codes; dedup computes MinHash signatures (data/dedup.py).

Threads: NumPy's OpenBLAS and Numba's prange each keep a pool of worker threads, and both pools
spin-wait after their work by default. On a 2-core machine a spinning pool steals the core the
other pool's next call needs, and each barrier then waits for a scheduler slice: a training step's
interleaved GEMMs and kernels ran 5-10x slower (measured: 8.6 ms instead of 1.2 ms for one GEMM
plus one layer-norm call). So the OpenMP layer is preferred and its workers sleep at once
(OMP_WAIT_POLICY=PASSIVE, unless the user set it): no collapse, but waking a sleeping worker costs
30-60 us per parallel call on these machines. So the workers first spin briefly
(GOMP_SPINCOUNT=1000, about 10 us; libgomp lets it override the passive policy's zero): a kernel
that follows another within that time finds its worker awake (2.5 us per launch instead of 58,
measured), while a GEMM that follows has its core back almost at once. Both the training step
and quantized decoding (~60 parallel loops per token) gain over the passive policy alone; fewer
spins catch too few launches, many more tax the GEMMs.
The attention, norm, cross-entropy and bias loops are not prange loops but serial task loops that
run_tasks (_common.py) spreads over a third pool, of Python threads that release the GIL inside the
loop: prange's parallel lowering tripled their compile time. Those workers never spin; they sleep
between calls, and a wake-up costs about 30-75 us, so a loop over fewer than 2^18 elements runs in
the calling thread alone (run_tasks' `work`).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import numba  # noqa: E402

numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

from . import (activation, attention, bpe, decode, dedup, embedding,  # noqa: E402,F401
               kv_quant, linear, norm, optim, quant, random, rope, softmax)
