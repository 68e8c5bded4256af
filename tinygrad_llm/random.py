"""Counter-based random numbers: Philox4x32-10 (Salmon, Moraes, Dror & Shaw, 2011, "Parallel
random numbers: as easy as 1, 2, 3"), written once over `xp` so that NumPy and CuPy compute the
same bits, and a Generator whose whole state is two integers.

Reading order: the Philox rounds (`philox4x32`), the uniform draw built on them (the reference of
kernel "philox_uniform"; fast version: kernels/cpu/random.py), then `Generator`.

Why counter-based: output block i is a pure function f(key, counter i), not the i-th step of a
recurrence. So a generator is (seed, offset): the seed is the key, the offset the first counter
not yet used. A draw of n words takes counters offset .. offset + ceil(n / 4) - 1 (4 words per
block) and moves the offset past them, so draws never overlap, any device reproduces any draw
from the two integers alone, and a checkpoint stores them as two ints (`get_state`). This is how
PyTorch's CUDA generator works (Philox, seed + offset) and why JAX's keys are counter-based too.

Philox4x32-10, one round on the counter words (c0, c1, c2, c3) with key (k0, k1):
    hi0:lo0 = M0 * c0          hi1:lo1 = M1 * c2          (32 x 32 -> 64-bit products)
    (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
ten rounds, the key bumped by the Weyl constants (W0, W1) between rounds. Here the counter is the
64-bit block number in (c0 low, c1 high), c2 = c3 = 0, and the key is the 64-bit seed (k0 low,
k1 high). The 32-bit words are held in uint64 lanes so that each product is one exact uint64
multiply on both backends.

Floats: float32 from a word's top 24 bits (k * 2^-24), float64 from two words' top 27 and 26 bits
(k * 2^-53), as NumPy's generators do: exact conversions, so uniforms are bit-identical on every
device, in [0, 1). Normals (Box-Muller) go through log, sqrt, cos and sin, whose last bit may
differ between a CPU's libm and CUDA's.
"""
import math

import numpy as np

from .backend import array_module, check_device, xp_for
from .kernels import kernel

__all__ = ["Generator", "philox4x32", "philox_uniform", "words_per_number"]

M0, M1 = 0xD2511F53, 0xCD9E8D57          # the round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85          # the key's Weyl increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
MASK32 = 0xFFFFFFFF
_U64 = 1 << 64


def words_per_number(dtype):
    """32-bit words one uniform of `dtype` uses: 1 for float32, 2 for float64."""
    return 2 if np.dtype(dtype) == np.float64 else 1


# ---- Philox4x32-10 over xp --------------------------------------------------------------------
def _rounds(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint64 lanes holding 32-bit words; k0, k1 are Python ints."""
    u = np.uint64                         # typed constants: a Python int would be fine in NumPy 2,
    lo, shift = u(MASK32), u(32)          # but uint64 with int64 promotes to float64 in NumPy 1
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        p0, p1 = c0 * u(M0), c2 * u(M1)   # exact: both factors < 2^32
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ u(k0), p1 & lo, (p0 >> shift) ^ c3 ^ u(k1), p0 & lo
    return c0, c1, c2, c3


def philox4x32(counter, key):
    """Philox4x32-10 of uint32 arrays: counter (c0, c1, c2, c3), key (k0, k1) ints in [0, 2^32).
    Returns the four uint32 output words (arrays shaped like the counters)."""
    c = [w.astype(np.uint64) for w in counter]
    return tuple(w.astype(np.uint32) for w in _rounds(*c, int(key[0]), int(key[1])))


def _blocks(xp, seed, offset, n_blocks):
    """(n_blocks * 4,) uint64 words (values < 2^32) of blocks offset .. offset + n_blocks - 1."""
    block = xp.arange(n_blocks, dtype=np.uint64) + np.uint64(offset)   # wraps mod 2^64
    zero = xp.zeros(n_blocks, dtype=np.uint64)
    words = _rounds(block & np.uint64(MASK32), block >> np.uint64(32), zero, zero,
                    seed & MASK32, seed >> 32)
    return xp.stack(words, axis=1).reshape(-1)           # block i's words at 4i .. 4i + 3


# ---- uniforms: float32 from 24 bits of one word, float64 from 53 bits of two ---------------------
@kernel("philox_uniform")        # fast version: kernels/cpu/random.py
def philox_uniform(out, seed, offset):
    """Fill `out` ((n,) float32 or float64, contiguous) with uniforms in [0, 1) from the Philox
    blocks offset, offset + 1, ... under key `seed`; returns out. Uses ceil(n * w / 4) blocks,
    w = words_per_number(out.dtype)."""
    xp = array_module(out)
    n = out.shape[0]
    w = words_per_number(out.dtype)
    words = _blocks(xp, seed, offset, -(-n * w // 4))[:n * w]
    if w == 1:
        out[...] = (words >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)
    else:
        a, b = words[0::2] >> np.uint64(5), words[1::2] >> np.uint64(6)   # 27 + 26 bits
        out[...] = (a.astype(np.float64) * 2.0 ** 26 + b.astype(np.float64)) * 2.0 ** -53
    return out


def _check_u64(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not 0 <= value < _U64:
        raise ValueError(f"{name}: expected an int in [0, 2**64), got {value!r}")
    return int(value)


class Generator:
    """A Philox4x32-10 stream on one device, like torch.Generator: state (seed, offset).

    device: "cpu" or "cuda" (where its arrays are made). seed: the key, an int in [0, 2^64).
    The same (seed, offset) gives the same uniforms on every device. Each draw advances the
    offset by the blocks it used: ceil(n / 4) for n float32 numbers, ceil(n / 2) for float64.
    """

    def __init__(self, device="cpu", seed=0):
        self.device = check_device(device)
        self.manual_seed(seed)

    def manual_seed(self, seed):
        """Restart the stream of `seed` (offset 0); returns self."""
        self.seed, self.offset = _check_u64("seed", seed), 0
        return self

    def initial_seed(self):
        return self.seed

    def get_state(self):
        """(seed, offset): two ints, all a checkpoint needs to resume the stream."""
        return self.seed, self.offset

    def set_state(self, state):
        """Resume from get_state()'s pair (a list after a JSON round trip is fine)."""
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"set_state: expected (seed, offset), got {state!r}")
        self.seed = _check_u64("seed", state[0])
        self.offset = _check_u64("offset", state[1])

    def _take(self, n_words):
        """The first block of a draw of n_words words; the offset moves past its blocks."""
        start = self.offset
        self.offset = (start + -(-n_words // 4)) % _U64
        return start

    def random(self, shape, dtype=np.float32):
        """Uniforms in [0, 1) of `shape`, float32 or float64, on the generator's device."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"Generator.random: dtype must be float32 or float64, got {dtype}")
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        n = math.prod(shape)
        out = xp_for(self.device).empty(n, dtype=dtype)
        if n:
            philox_uniform(out, self.seed, self._take(n * words_per_number(dtype)))
        return out.reshape(shape)

    def standard_normal(self, shape, dtype=np.float32):
        """N(0, 1) samples of `shape` by Box-Muller (Box & Muller, 1958) on pairs of uniforms:
        r = sqrt(-2 ln(1 - u1)), z = (r cos(2 pi u2), r sin(2 pi u2)); 1 - u1 is in (0, 1]."""
        xp = xp_for(self.device)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        n = math.prod(shape)
        half = -(-n // 2)
        u = self.random(2 * half, dtype)                          # (2 * half,)
        r = xp.sqrt(-2.0 * xp.log(1.0 - u[:half]))
        theta = (2.0 * math.pi) * u[half:]
        return xp.concatenate([r * xp.cos(theta), r * xp.sin(theta)])[:n].reshape(shape)
