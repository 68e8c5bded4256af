"""StreamBatcher (data/streams.py): each row continues where it stopped, rows are disjoint
contiguous streams, epochs restart at a new offset and say so, the seed fixes the sequence, and
state_dict / load_state_dict resume it exactly."""
import json

import numpy as np
import pytest

from tinygrad_llm.data import StreamBatcher

IDS = np.arange(1000, dtype=np.int64)     # id = position: continuity reads off the values


def _take(batcher, n):
    return [next(batcher) for _ in range(n)]


def test_each_row_continues_the_previous_segment_and_targets_shift_by_one():
    b = StreamBatcher(IDS, batch_size=4, segment_len=16, seed=0)
    batches = _take(b, b.steps_per_epoch)
    for (x0, _), (x1, _) in zip(batches, batches[1:]):
        np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)
    for x, y in batches:
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(np.diff(x, axis=1), 1)


def test_rows_are_disjoint_streams_covering_the_epoch():
    b = StreamBatcher(IDS, batch_size=4, segment_len=16, seed=3)
    seen = np.concatenate([x for x, _ in _take(b, b.steps_per_epoch)], axis=1)   # (B, S T)
    assert len(np.unique(seen)) == seen.size
    assert seen.min() == b.offset and b.offset < 16
    assert seen.shape[1] == b.steps_per_epoch * 16 <= b.stream_len
    np.testing.assert_array_equal(seen[1:, 0], seen[0, 0] + np.arange(1, 4) * b.stream_len)


def test_a_new_epoch_restarts_the_streams_at_a_new_offset_and_says_so():
    b = StreamBatcher(IDS, batch_size=4, segment_len=16, seed=0)
    flags, offsets = [], []
    for _ in range(4 * b.steps_per_epoch):
        next(b)
        flags.append(b.new_epoch)
        offsets.append(b.offset)
    starts = [i for i, f in enumerate(flags) if f]
    assert starts[0] == 0 and len(starts) >= 4
    assert all(0 <= o < 16 for o in offsets)
    assert len(set(offsets)) > 1                         # the boundaries move between epochs
    x, _ = next(StreamBatcher(IDS, 4, 16, seed=0))
    b.reset()
    np.testing.assert_array_equal(next(b)[0], x)
    assert b.epoch == 0 and b.new_epoch


def test_the_seed_fixes_the_sequence_and_state_dict_resumes_it():
    a, b = StreamBatcher(IDS, 2, 8, seed=7), StreamBatcher(IDS, 2, 8, seed=7)
    for (xa, _), (xb, _) in zip(_take(a, 100), _take(b, 100)):
        np.testing.assert_array_equal(xa, xb)
    state = json.loads(json.dumps(a.state_dict()))         # JSON-able
    expected = _take(a, 150)                               # crosses epochs
    c = StreamBatcher(IDS, 2, 8, seed=99)
    c.load_state_dict(state)
    for (x, y), (xe, ye) in zip(_take(c, 150), expected):
        np.testing.assert_array_equal(x, xe)
        np.testing.assert_array_equal(y, ye)


def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="ids"):
        StreamBatcher(np.arange(19), batch_size=4, segment_len=4)     # needs (4 + 1) * 4
    StreamBatcher(np.arange(20), batch_size=4, segment_len=4)
    with pytest.raises(ValueError, match="batch_size"):
        StreamBatcher(IDS, batch_size=0, segment_len=4)
    with pytest.raises(ValueError, match="segment_len"):
        StreamBatcher(IDS, batch_size=2, segment_len=-1)
    with pytest.raises(ValueError, match="ids"):
        StreamBatcher(IDS.reshape(2, -1), batch_size=2, segment_len=4)
    with pytest.raises(TypeError, match="ids"):
        StreamBatcher(IDS.astype(np.float32), batch_size=2, segment_len=4)


def test_the_smallest_stream_still_yields_whole_segments():
    b = StreamBatcher(np.arange(20), batch_size=4, segment_len=4, seed=0)
    for _ in range(20):
        x, y = next(b)
        assert x.shape == (4, 4) and y.max() <= 19
