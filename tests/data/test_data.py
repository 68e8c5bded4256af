"""tinygrad_llm.data: finding / downloading / verifying tiny Shakespeare, token files, the split
and random batches.

No test touches the network: an autouse fixture replaces urllib.request.urlopen with one that
fails the test, and the download tests install a fake that serves bytes from memory, with the
module's expected checksum and size patched to match them. The real file is used only when
/work/shared/data/tinyshakespeare/input.txt exists.
"""
import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tinygrad_llm.data import corpus, files, tokens
from tinygrad_llm.data import (Batcher, TokenWriter, get_batch, get_rng_state, read_tokens,
                               set_rng_state, shakespeare, split, write_tokens)

REAL_DIR = Path("/work/shared/data")
REAL_FILE = REAL_DIR / "tinyshakespeare" / "input.txt"
needs_real_file = pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"{REAL_FILE} is absent")
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


# ---- fixtures: a clean environment and no network ----------------------------------------------
@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a URL: {args}")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No TINYGRAD_LLM_DATA; the cache in a fresh temporary directory. Returns the cache dir."""
    monkeypatch.delenv(corpus.DATA_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(corpus.CACHE_ENV, str(cache))
    return cache


def serve(monkeypatch, payload, patch_checksum=True):
    """Make urlopen return `payload`; returns the list of URLs requested."""
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(payload)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    if patch_checksum:
        monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
        monkeypatch.setattr(corpus, "SHAKESPEARE_SIZE", len(payload))
    return calls


def cached_file(cache):
    return cache / "tinyshakespeare" / "input.txt"


def files_under(directory):
    return sorted(p.relative_to(directory).as_posix() for p in Path(directory).rglob("*")
                  if p.is_file())


# ---- locating the text -------------------------------------------------------------------------
def test_explicit_path_file(env, tmp_path):
    path = tmp_path / "any.txt"
    path.write_text(TEXT)
    assert shakespeare(path) == TEXT
    assert shakespeare(str(path)) == TEXT


@pytest.mark.parametrize("layout", ["input.txt", "tinyshakespeare/input.txt"])
@pytest.mark.parametrize("source", ["path", "env"])
def test_file_and_directory_forms(env, tmp_path, monkeypatch, layout, source):
    root = tmp_path / "data"
    (root / layout).parent.mkdir(parents=True, exist_ok=True)
    (root / layout).write_text(TEXT)
    for given in (root, root / layout):        # the directory, and the file itself
        if source == "env":
            monkeypatch.setenv(corpus.DATA_ENV, str(given))
            assert shakespeare() == TEXT
        else:
            assert shakespeare(path=given) == TEXT


def test_explicit_path_beats_env(env, tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("from the argument")
    (tmp_path / "b.txt").write_text("from the environment")
    monkeypatch.setenv(corpus.DATA_ENV, str(tmp_path / "b.txt"))
    assert shakespeare(tmp_path / "a.txt") == "from the argument"
    assert shakespeare() == "from the environment"


def test_named_paths_that_do_not_exist_raise(env, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="path=.*nowhere.txt.*does not exist"):
        shakespeare(tmp_path / "nowhere.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir.*without input.txt"):
        shakespeare(tmp_path / "empty_dir")
    monkeypatch.setenv(corpus.DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="TINYGRAD_LLM_DATA=.*missing"):
        shakespeare()


def test_cache_hit_does_not_download(env, monkeypatch):
    payload = TEXT.encode()
    cached_file(env).parent.mkdir(parents=True)
    cached_file(env).write_bytes(payload)
    monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
    assert shakespeare() == TEXT                 # the autouse guard fails on any urlopen call
    assert corpus.shakespeare_path() == cached_file(env)


def test_cache_dir_argument_beats_env(env, tmp_path, monkeypatch):
    payload = TEXT.encode()
    other = tmp_path / "other_cache"
    cached_file(other).parent.mkdir(parents=True)
    cached_file(other).write_bytes(payload)
    monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
    assert corpus.shakespeare_path(cache_dir=other) == cached_file(other)
    assert shakespeare(cache_dir=other, download=False) == TEXT


def test_cached_file_with_wrong_checksum_is_reported(env):
    cached_file(env).parent.mkdir(parents=True)
    cached_file(env).write_bytes(b"<html>not the text</html>")
    with pytest.raises(ValueError, match="sha256.*delete it"):
        shakespeare()


# ---- downloading -------------------------------------------------------------------------------
def test_download_verifies_and_caches_once(env, monkeypatch):
    payload = TEXT.encode()
    calls = serve(monkeypatch, payload)
    assert shakespeare() == TEXT
    assert calls == [corpus.SHAKESPEARE_URL]
    assert cached_file(env).read_bytes() == payload
    assert files_under(env) == ["tinyshakespeare/input.txt"]     # no temporary left behind
    assert shakespeare() == TEXT
    assert len(calls) == 1                                       # the second call hit the cache


def test_checksum_mismatch_raises_and_leaves_no_file(env, monkeypatch):
    payload = b"tampered text\n"
    serve(monkeypatch, payload, patch_checksum=False)
    monkeypatch.setattr(corpus, "SHAKESPEARE_SIZE", len(payload))    # only the checksum differs
    with pytest.raises(ValueError, match="failed verification.*" + corpus.SHAKESPEARE_SHA256):
        shakespeare()
    assert files_under(env) == []


def test_size_mismatch_raises_even_with_matching_checksum(env, monkeypatch):
    payload = TEXT.encode()
    serve(monkeypatch, payload)
    monkeypatch.setattr(corpus, "SHAKESPEARE_SIZE", len(payload) + 1)
    with pytest.raises(ValueError, match=f"got {len(payload)} bytes"):
        shakespeare()
    assert files_under(env) == []


def test_offline_error_says_how_to_provide_the_file(env, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as info:
        shakespeare()
    message = str(info.value)
    for needed in ("TINYGRAD_LLM_DATA", "path=", corpus.SHAKESPEARE_URL, str(cached_file(env))):
        assert needed in message
    assert files_under(env) == []


def test_connection_dropped_mid_download_leaves_no_file(env, monkeypatch):
    class Dropping(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(8)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Dropping(b"x" * 64))
    with pytest.raises(FileNotFoundError, match="connection reset"):
        shakespeare()
    assert files_under(env) == []


def test_download_false_does_not_fetch(env):
    with pytest.raises(FileNotFoundError, match="download=False.*TINYGRAD_LLM_DATA"):
        shakespeare(download=False)


def test_non_utf8_file_names_the_byte_offset(env, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello\nwor\xe9ld\n")          # 0xe9 is 'é' in Latin-1, invalid UTF-8 here
    with pytest.raises(ValueError, match=r"latin1.txt.*0xe9 at byte offset 9 \(line 2\)"):
        shakespeare(path)


def test_newlines_are_not_translated(env, tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"a\r\nb\n")
    assert shakespeare(path) == "a\r\nb\n"


@needs_real_file
def test_real_file_length_and_checksum(env, monkeypatch):
    monkeypatch.setenv(corpus.DATA_ENV, str(REAL_DIR))
    text = shakespeare()
    assert len(text) == corpus.SHAKESPEARE_SIZE == 1_115_394
    assert hashlib.sha256(text.encode()).hexdigest() == corpus.SHAKESPEARE_SHA256
    assert corpus.sha256_file(corpus.shakespeare_path()) == corpus.SHAKESPEARE_SHA256
    train, val = split(np.frombuffer(text.encode(), dtype=np.uint8))
    assert (len(train), len(val)) == (1_003_854, 111_540)     # nanoGPT's shakespeare_char counts


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.txt"
    with files.atomic_write(path, "w", encoding="utf-8") as f:
        f.write("first")
    with pytest.raises(RuntimeError, match="interrupted"):
        with files.atomic_write(path, "w", encoding="utf-8") as f:
            f.write("second, half writ")
            raise RuntimeError("interrupted")
    assert path.read_text() == "first"
    assert files_under(tmp_path) == ["out.txt"]


# ---- token files -------------------------------------------------------------------------------
@pytest.mark.parametrize("high,dtype", [(65535, np.uint16), (65536, np.uint32),
                                        (2**32 - 1, np.uint32)])
def test_token_file_round_trip(tmp_path, high, dtype):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=5000)
    ids[1234] = high
    path = write_tokens(ids, tmp_path / "train.bin")
    back = read_tokens(path)
    assert isinstance(back, np.memmap)
    assert back.dtype == dtype and back.shape == (5000,)
    np.testing.assert_array_equal(back, ids)
    assert path.stat().st_size == 5000 * np.dtype(dtype).itemsize     # no header in the .bin
    with pytest.raises(ValueError):
        back[0] = 1                                                    # read-only
    info = json.loads(tokens.sidecar_path(path).read_text())
    assert info == {"format": "tinygrad_llm.tokens", "version": 1, "dtype": np.dtype(dtype).name,
                    "byteorder": "little", "count": 5000, "vocab_size": None}


def test_vocab_size_sets_dtype_and_bounds(tmp_path):
    write_tokens(np.arange(10), tmp_path / "a.bin", vocab_size=70_000)
    assert read_tokens(tmp_path / "a.bin").dtype == np.uint32
    assert tokens.token_file_info(tmp_path / "a.bin")["vocab_size"] == 70_000
    write_tokens(np.arange(10), tmp_path / "b.bin", vocab_size=65_536)
    assert read_tokens(tmp_path / "b.bin").dtype == np.uint16
    with pytest.raises(ValueError, match="vocab_size=65.*got 65 at index 3"):
        write_tokens([1, 2, 3, 65], tmp_path / "c.bin", vocab_size=65)
    assert not (tmp_path / "c.bin").exists()


@pytest.mark.parametrize("chunk_sizes", [[7, 1, 100, 0, 392], [500]])
def test_streaming_writer_equals_one_shot(tmp_path, monkeypatch, chunk_sizes):
    monkeypatch.setattr(tokens, "_COPY_CHUNK", 13)       # widen in many pieces
    ids = np.random.default_rng(1).integers(0, 60_000, size=500)
    ids[300] = 70_000                                    # arrives after uint16 chunks were written
    write_tokens(ids, tmp_path / "one.bin")
    with TokenWriter(tmp_path / "many.bin") as writer:
        for piece in np.split(ids, np.cumsum(chunk_sizes)[:-1]):
            writer.write(piece)
    assert writer.count == 500 and writer.dtype == "uint32"
    assert (tmp_path / "one.bin").read_bytes() == (tmp_path / "many.bin").read_bytes()
    assert (tokens.sidecar_path(tmp_path / "one.bin").read_text()
            == tokens.sidecar_path(tmp_path / "many.bin").read_text())
    assert files_under(tmp_path) == ["many.bin", "many.bin.json", "one.bin", "one.bin.json"]


def test_failed_stream_keeps_the_old_file(tmp_path):
    path = write_tokens([1, 2, 3], tmp_path / "t.bin")
    with pytest.raises(RuntimeError, match="tokeniser crashed"):
        with TokenWriter(path) as writer:
            writer.write([4, 5, 6, 7])
            raise RuntimeError("tokeniser crashed")
    np.testing.assert_array_equal(read_tokens(path), [1, 2, 3])
    assert files_under(tmp_path) == ["t.bin", "t.bin.json"]


def test_mismatched_pair_and_missing_sidecar_raise(tmp_path):
    path = write_tokens(np.arange(100), tmp_path / "t.bin")
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="198 bytes.*100 uint16 ids \\(200 bytes\\)"):
        read_tokens(path)
    tokens.sidecar_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="no sidecar"):
        read_tokens(path)


@pytest.mark.parametrize("ids,error,match", [
    ([1, -1, 2], ValueError, "ids must be >= 0, got -1 at index 1"),
    (np.array([1.0, 2.0]), TypeError, "integers, got dtype float64"),
    (np.zeros((2, 2), dtype=np.int64), ValueError, r"1-D, got shape \(2, 2\)"),
    ([2**32], ValueError, "< 2\\*\\*32"),
])
def test_bad_ids_raise(tmp_path, ids, error, match):
    with pytest.raises(error, match=match):
        write_tokens(ids, tmp_path / "t.bin")
    assert files_under(tmp_path) == []


def test_empty_token_file(tmp_path):
    back = read_tokens(write_tokens(np.array([], dtype=np.int64), tmp_path / "e.bin"))
    assert back.shape == (0,) and back.dtype == np.uint16 and not back.flags.writeable


# ---- split -------------------------------------------------------------------------------------
def test_split_sizes_and_views(tmp_path):
    ids = np.arange(1000)
    train, val = split(ids)
    assert (len(train), len(val)) == (900, 100)
    assert train[-1] + 1 == val[0] and np.shares_memory(train, ids)
    assert [len(s) for s in split(ids, 0.25)] == [750, 250]
    assert [len(s) for s in split(ids, 0.0)] == [1000, 0]
    mapped = read_tokens(write_tokens(ids, tmp_path / "t.bin"))
    assert all(isinstance(s, np.memmap) for s in split(mapped))     # still mapped, not loaded


@pytest.mark.parametrize("fraction", [1.0, -0.1, "0.1", True])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction must be a number in \\[0, 1\\)"):
        split(np.arange(10), fraction)


# ---- batches -----------------------------------------------------------------------------------
def test_batch_shapes_and_shift():
    data = np.random.default_rng(0).integers(0, 65, size=300).astype(np.uint16)
    x, y = get_batch(data, 4, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for b in range(4):                      # each row is a window of data, y one step later
        starts = [i for i in range(len(data) - 8) if np.array_equal(data[i:i + 8], x[b])]
        assert any(np.array_equal(data[i + 1:i + 9], y[b]) for i in starts)


def test_batches_from_a_memmap(tmp_path):
    mapped = read_tokens(write_tokens(np.arange(50_000), tmp_path / "t.bin"))
    x, y = get_batch(mapped, 3, 16, np.random.default_rng(0))
    assert type(x) is np.ndarray and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[:, 1:] - x[:, :-1], 1)


def test_same_seed_same_batches():
    data = np.arange(1000)
    a = [get_batch(data, 4, 8, rng) for rng in [np.random.default_rng(7)] * 3]
    b = [get_batch(data, 4, 8, rng) for rng in [np.random.default_rng(7)] * 3]
    c = get_batch(data, 4, 8, np.random.default_rng(8))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0])
    assert not np.array_equal(a[0][0], a[1][0])        # the generator advances between batches


def test_rng_state_save_restore_continues_identically():
    data = np.arange(1000)
    rng = np.random.default_rng(3)
    get_batch(data, 4, 8, rng)
    state = json.loads(json.dumps(get_rng_state(rng)))            # as stored in a checkpoint
    expected = [get_batch(data, 4, 8, rng) for _ in range(3)]
    resumed = np.random.default_rng(12345)
    set_rng_state(resumed, state)
    for want, got in zip(expected, (get_batch(data, 4, 8, resumed) for _ in range(3))):
        np.testing.assert_array_equal(want[0], got[0])
        np.testing.assert_array_equal(want[1], got[1])
    with pytest.raises(ValueError, match="PCG64 bit-generator state, got 'MT19937'"):
        set_rng_state(rng, np.random.Generator(np.random.MT19937(0)).bit_generator.state)


def test_batcher_state_dict_resumes():
    data = np.arange(500)
    first = Batcher(data, 2, 5, seed=1)
    next(first)
    state = json.loads(json.dumps(first.state_dict()))
    want = [next(first) for _ in range(4)]
    second = Batcher(data, 2, 5, seed=99)
    second.load_state_dict(state)
    for (wx, wy), (gx, gy) in zip(want, second):
        np.testing.assert_array_equal(wx, gx)
        np.testing.assert_array_equal(wy, gy)


def test_every_window_is_reachable_and_in_range():
    data = np.arange(6)                      # block_size 2: offsets 0..3 (4 windows)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        x, y = get_batch(data, 3, 2, rng)
        assert y.max() <= 5 and x.min() >= 0
        seen.update(x[:, 0].tolist())
    assert seen == {0, 1, 2, 3}
    x, y = get_batch(np.arange(3), 5, 2, rng)          # the smallest data: one window only
    np.testing.assert_array_equal(x, [[0, 1]] * 5)
    np.testing.assert_array_equal(y, [[1, 2]] * 5)


@pytest.mark.parametrize("n,batch_size,block_size,match", [
    (8, 4, 8, "data has 8 tokens but block_size=8 needs at least 9"),
    (5, 2, 100, "data has 5 tokens but block_size=100"),
    (100, 0, 8, "batch_size must be a positive int, got 0"),
    (100, 4, -1, "block_size must be a positive int, got -1"),
    (100, 4.0, 8, "batch_size must be a positive int, got 4.0"),
])
def test_bad_sizes_raise_naming_the_numbers(n, batch_size, block_size, match):
    with pytest.raises(ValueError, match=match):
        get_batch(np.arange(n), batch_size, block_size, np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        Batcher(np.arange(n), batch_size, block_size)


def test_bad_data_and_rng_raise():
    with pytest.raises(TypeError, match="np.random.Generator, got RandomState"):
        get_batch(np.arange(100), 2, 4, np.random.RandomState(0))
    with pytest.raises(TypeError, match="integer token ids, got dtype float64"):
        get_batch(np.arange(100.0), 2, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"1-D array of token ids, got shape \(10, 10\)"):
        get_batch(np.zeros((10, 10), dtype=np.int64), 2, 4, np.random.default_rng(0))
