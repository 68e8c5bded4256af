"""Batches of consecutive segments, for models that carry a memory from one step to the next
(Transformer-XL, Dai et al., 2019; models/transformer_xl.py).

The token array is cut into batch_size contiguous streams, one per batch row, and each step
takes the next segment_len tokens of every stream: row b of step s + 1 continues exactly where
row b of step s ended, so the memory a model keeps from step s is the true past of step s + 1.

    ids:  [offset | stream 0 ........ | stream 1 ........ | ... | stream B-1 ...... | rest]
    step s, row b: x = stream_b[s T : s T + T],  y = stream_b[s T + 1 : s T + T + 1]

When the streams run out, a new epoch starts at a new random offset in [0, segment_len) (from the
seeded generator), so the segment boundaries move between epochs; `new_epoch` tells the caller
that the batch just returned starts fresh streams and the memory must be dropped. The state is a
JSON-able dict (data/batches.py's Batcher has the same interface) for an exact resume.
"""
import numpy as np

from .batches import _as_ids, _check_positive_int, get_rng_state, set_rng_state

__all__ = ["StreamBatcher"]


class StreamBatcher:
    """Endless (x, y) batches of consecutive segments: x, y (batch_size, segment_len) int64,
    y = x shifted by one token.

        train = StreamBatcher(train_ids, batch_size=16, segment_len=64, seed=0)
        x, y = next(train)
        if train.new_epoch: mems = None          # fresh streams: the memory is not their past
    """

    def __init__(self, ids, batch_size, segment_len, seed=0):
        self.ids = _as_ids(ids, "ids")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.segment_len = _check_positive_int(segment_len, "segment_len")
        # the largest offset, segment_len - 1, must leave every stream one segment and a target
        need = (self.batch_size + 1) * self.segment_len
        if len(self.ids) < need:
            raise ValueError(f"ids: {len(self.ids)} tokens are too few for batch_size="
                             f"{self.batch_size} streams of segment_len={self.segment_len}; "
                             f"need at least {need}")
        self.seed = seed
        self.reset()

    def reset(self):
        """Start over: epoch 0, its first segment, the generator re-seeded."""
        self.rng = np.random.default_rng(self.seed)
        self.epoch = -1
        self._start_epoch()

    def _start_epoch(self):
        self.epoch += 1
        self._lay_out(int(self.rng.integers(0, self.segment_len)))
        self.step = 0                              # segments taken in this epoch

    def _lay_out(self, offset):
        """Streams from `offset`: each holds stream_len inputs plus the target after the last."""
        self.offset = offset
        self.stream_len = (len(self.ids) - 1 - offset) // self.batch_size
        self.steps_per_epoch = self.stream_len // self.segment_len

    @property
    def new_epoch(self):
        """True when the last batch returned was the first of its epoch (fresh streams)."""
        return self.step == 1

    def __iter__(self):
        return self

    def __next__(self):
        if self.step == self.steps_per_epoch:
            self._start_epoch()
        t = self.segment_len
        starts = (self.offset + np.arange(self.batch_size) * self.stream_len
                  + self.step * t)                                          # (B,)
        windows = np.asarray(self.ids[starts[:, None] + np.arange(t + 1)], dtype=np.int64)
        self.step += 1
        # windows: (B, T + 1)
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])

    def state_dict(self):
        """Where the stream stands: the epoch, its offset and step, and the generator."""
        return {"epoch": self.epoch, "offset": self.offset, "step": self.step,
                "rng": get_rng_state(self.rng)}

    def load_state_dict(self, state):
        set_rng_state(self.rng, state["rng"])
        self.epoch = int(state["epoch"])
        self._lay_out(int(state["offset"]))
        self.step = int(state["step"])
