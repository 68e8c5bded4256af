"""Train/val split and random language-model batches, as in nanoGPT's train.py.

A batch is B windows of T + 1 consecutive ids at offsets drawn uniformly (with replacement) from
[0, N - T - 1]: x is the first T ids of each window, y the last T, so y[b, t] is the id that
follows x[b, t]. Offsets come from an explicit np.random.Generator, never global state, so a seed
fixes the batch sequence, and the generator's state (a JSON-able dict of ints) can be stored in a
checkpoint and restored for a bit-identical resume. Windows are gathered with one fancy index,
which on a memory map reads only the touched pages.
"""
import copy
import numbers

import numpy as np

__all__ = ["split", "get_batch", "Batcher", "get_rng_state", "set_rng_state"]


def _as_ids(data, name="data"):
    data = np.asarray(data)         # a memmap stays mapped: asarray makes a view, not a copy
    if data.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of token ids, got shape {data.shape}")
    if data.size and data.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {data.dtype}")
    return data


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_sizes(n_tokens, batch_size, block_size):
    """batch_size and block_size as ints; a window needs block_size + 1 tokens."""
    batch_size = _check_positive_int(batch_size, "batch_size")
    block_size = _check_positive_int(block_size, "block_size")
    if n_tokens <= block_size:
        raise ValueError(f"data has {n_tokens} tokens but block_size={block_size} needs at "
                         f"least {block_size + 1} (T inputs and T targets shifted by one); "
                         f"batch_size={batch_size}")
    return batch_size, block_size


def split(ids, val_fraction=0.1):
    """(train, val): the first 1 - val_fraction of `ids` and the rest, as views (no copy).

    nanoGPT's split: train = ids[:int(N * 0.9)] for the default val_fraction=0.1."""
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real)
            or not 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:]


def get_batch(data, batch_size, block_size, rng):
    """x, y: (B, T) int64 windows of `data` at uniformly random offsets; y is x shifted by one.

    data: (N,) token ids (array or memmap) with N > block_size; rng: np.random.Generator, advanced
    by exactly one draw of batch_size integers.
    """
    data = _as_ids(data)
    batch_size, block_size = _check_sizes(len(data), batch_size, block_size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator, got {type(rng).__name__}")
    starts = rng.integers(0, len(data) - block_size, size=batch_size)   # (B,) in [0, N - T - 1]
    windows = np.asarray(data[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
    # windows: (B, T + 1)
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def get_rng_state(rng):
    """A copy of a Generator's state: a dict of str and int, safe to store as JSON."""
    return copy.deepcopy(rng.bit_generator.state)


def set_rng_state(rng, state):
    """Restore a state from get_rng_state; the bit generators must be of the same kind."""
    kind = type(rng.bit_generator).__name__
    if not isinstance(state, dict) or state.get("bit_generator") != kind:
        got = state.get("bit_generator") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"state must be a {kind} bit-generator state, got {got!r}")
    rng.bit_generator.state = copy.deepcopy(state)


class Batcher:
    """An endless stream of (x, y) batches of one split, with its own seeded generator.

        train = Batcher(train_ids, batch_size=64, block_size=256, seed=1337)
        x, y = next(train)
        state = train.state_dict()          # into the checkpoint (JSON-able)
        train.load_state_dict(state)        # on resume: the same batches follow
    """

    def __init__(self, data, batch_size, block_size, seed=0):
        self.data = _as_ids(data)
        self.batch_size, self.block_size = _check_sizes(len(self.data), batch_size, block_size)
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def __next__(self):
        return get_batch(self.data, self.batch_size, self.block_size, self.rng)

    def state_dict(self):
        return {"rng": get_rng_state(self.rng)}

    def load_state_dict(self, state):
        set_rng_state(self.rng, state["rng"])
