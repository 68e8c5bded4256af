"""tinygrad_llm.data.dedup against its oracles: the Numba MinHash loop against the NumPy
reference and against Python's exact integers (odd sizes, one document, one shingle, an empty
document, values at the modulus); the MinHash estimate against brute-force Jaccard within 3
standard errors; the LSH candidate rate against the S-curve 1 - (1 - s^r)^b on pairs of
controlled similarity; exact and near dedup on Shakespeare with injected duplicates (and
nothing unrelated merged); determinism under a seed; and the bad inputs, each one clear line."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import kernels
from tinygrad_llm.data import dedup
from tinygrad_llm.kernels.cpu.dedup import minhash_cpu

P = dedup.MERSENNE_61


# ---- MinHash: the Numba loop, the NumPy reference, Python's integers --------------------------
def _python_minhash(hashes, offsets, a, b):
    return [[min([(int(aj) * int(x) + int(bj)) % P for x in hashes[offsets[i]:offsets[i + 1]]],
                 default=P) for aj, bj in zip(a, b)] for i in range(len(offsets) - 1)]


def _corpus(rng, lengths, large=False):
    """Shingle hashes (< p) for documents of the given shingle counts, and their offsets."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hashes = rng.integers(0, P, offsets[-1], dtype=np.uint64)
    if large:                                   # the top of the range, where the folds carry
        hashes = np.uint64(P - 1) - hashes % np.uint64(1000)
    return hashes, offsets


@pytest.mark.parametrize("lengths, num_perm, large", [
    ([1], 1, False),                            # one document, one shingle, one function
    ([3], 3, False),
    ([17, 1, 65], 17, False),                   # odd sizes
    ([5, 0, 2], 4, False),                      # an empty document: p in every column
    ([65, 3], 129, True),                       # values next to the modulus
    ([200] * 7, 128, True),
])
def test_the_numba_loop_matches_the_reference_and_exact_integers(lengths, num_perm, large):
    rng = np.random.default_rng(len(lengths) * 1000 + num_perm)
    hashes, offsets = _corpus(rng, lengths, large)
    a, b = dedup.hash_parameters(num_perm, seed=num_perm)
    if large:
        a[:2], b[:2] = P - 1, P - 1             # the largest multiplier and offset
    fast = minhash_cpu(hashes, offsets, a, b)
    ref = kernels.reference("minhash")(hashes, offsets, a, b)
    assert fast.dtype == ref.dtype == np.uint64 and fast.shape == (len(lengths), num_perm)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(ref, np.array(_python_minhash(hashes, offsets, a, b),
                                                dtype=np.uint64))
    assert (ref <= P).all()


def test_the_boundary_values_of_the_hash_family():
    # x = 0, 1, p - 1 with a = 1, p - 1 and b = 0, p - 1: the identity, a wrap, a double wrap
    hashes = np.array([0, 1, P - 1], dtype=np.uint64)
    offsets = np.array([0, 1, 2, 3], dtype=np.int64)
    a = np.array([1, P - 1, 1, P - 1], dtype=np.uint64)
    b = np.array([0, 0, P - 1, P - 1], dtype=np.uint64)
    expected = np.array(_python_minhash(hashes, offsets, a, b), dtype=np.uint64)
    np.testing.assert_array_equal(minhash_cpu(hashes, offsets, a, b), expected)
    np.testing.assert_array_equal(kernels.reference("minhash")(hashes, offsets, a, b), expected)


def test_signatures_take_the_kernel_switch():
    docs = ["the quick brown fox jumps", "the quick brown fox leaps", "a b c d e f"]
    fast, which = dedup.minhash_signatures(docs, 64, return_kernel=True)
    with tl.use_kernels(False):
        ref, which_ref = dedup.minhash_signatures(docs, 64, return_kernel=True)
    assert (which, which_ref) == ("cpu", "reference")
    np.testing.assert_array_equal(fast, ref)


# ---- shingles and exact hashes ------------------------------------------------------------
def test_shingle_hashes_are_one_per_shingle_and_stable():
    text = "To be, or not to be: that is the question."
    assert dedup.shingles("abcdef", 5) == {"abcde", "bcdef"}
    assert dedup.shingles("abcab", 2) == {"ab", "bc", "ca"}
    assert len(dedup.shingle_hashes(text)) == len(dedup.shingles(text))
    assert len(dedup.shingle_hashes("abcde")) == 1                          # k = length
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6, 1, 4, 1, 5])
    assert len(dedup.shingle_hashes(ids, 3)) == len(dedup.shingles(ids, 3)) == 8  # 2 repeats
    # a fixed value: no per-process salt (Python's hash() of a str changes with PYTHONHASHSEED)
    assert int(dedup.shingle_hashes("hello")[0]) == 0x77075F95E723F03D
    assert dedup.exact_hash("Hello   World\n") == "e9a804b2e527fd3601d2ffc0bb023cd6"


def test_exact_jaccard_is_the_shingle_set_ratio():
    assert dedup.exact_jaccard("abcdef", "abcdef", 3) == 1.0
    assert dedup.exact_jaccard("abcdef", "uvwxyz", 3) == 0.0
    # {abc, bcd, cde} against {abc, bcd, cdx}: 2 shared of 4
    assert dedup.exact_jaccard("abcde", "abcdx", 3) == pytest.approx(0.5)


# ---- MinHash estimates and the S-curve on pairs of controlled similarity ------------------
def _pairs(similarities, per_s, union=200, seed=0):
    """Token documents in pairs (2m, 2m + 1) of exact Jaccard s (k = 1: the shingles are the
    tokens): c shared tokens and d own tokens each, c / (c + 2 d) = s over a union of ~200."""
    rng = np.random.default_rng(seed)
    docs, truth, next_id = [], [], 0
    for s in similarities:
        c = int(round(s * union))
        d = (union - c) // 2
        for _ in range(per_s):
            ids = next_id + rng.permutation(c + 2 * d)
            next_id += c + 2 * d
            docs += [ids[:c + d], np.concatenate([ids[:c], ids[c + d:]])]
            truth.append(c / (c + 2 * d))
    return docs, np.array(truth)


def test_the_minhash_estimate_is_within_three_standard_errors():
    num_perm = 128
    docs, truth = _pairs([0.1, 0.3, 0.5, 0.7, 0.9], per_s=40)
    sig = dedup.minhash_signatures(docs, num_perm, k=1, seed=3)
    estimate = dedup.estimate_jaccard(sig[0::2], sig[1::2])
    se = np.sqrt(truth * (1 - truth) / num_perm)
    assert np.mean(np.abs(estimate - truth) <= 3 * se) >= 0.97     # 99.7% expected
    for s in np.unique(truth):                 # unbiased: the mean of 40 within 3 SE / sqrt(40)
        at = truth == s
        assert abs(estimate[at].mean() - s) <= 3 * se[at][0] / np.sqrt(at.sum()) + 1e-9
    # on text: a speech and a copy with a few characters edited
    speech = ("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to "
              "praise him. The evil that men do lives after them; the good is oft interred "
              "with their bones; so let it be with Caesar.")
    edited = speech.replace("bury", "berry").replace("bones", "stones").replace("evil", "ill")
    j = dedup.exact_jaccard(speech, edited)
    sig = dedup.minhash_signatures([speech, edited], 256)
    assert abs(dedup.estimate_jaccard(sig[0], sig[1]) - j) <= 3 * np.sqrt(j * (1 - j) / 256)


def test_the_candidate_rate_follows_the_s_curve():
    bands, rows = 16, 4                        # the curve rises through s ~ (1/16)^(1/4) = 0.5
    grid = [0.2, 0.35, 0.5, 0.65, 0.8]
    per_s = 150
    docs, truth = _pairs(grid, per_s=per_s, seed=1)
    sig = dedup.minhash_signatures(docs, bands * rows, k=1, seed=5)
    candidates = {tuple(p) for p in dedup.lsh_candidates(sig, bands, rows).tolist()}
    hit = np.array([(2 * m, 2 * m + 1) in candidates for m in range(len(truth))])
    for s in grid:
        at = np.isclose(truth, s, atol=0.01)
        s_exact = truth[at][0]
        p = float(dedup.candidate_probability(s_exact, bands, rows))
        tolerance = 4 * np.sqrt(p * (1 - p) / at.sum()) + 0.02
        assert abs(hit[at].mean() - p) <= tolerance, (s, hit[at].mean(), p)
    # and no pair across different pairs (disjoint token sets) became a candidate
    assert all(i // 2 == j // 2 for i, j in candidates)


def test_choose_bands_puts_the_curve_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = dedup.choose_bands(128, threshold)
        assert bands * rows == 128
        assert dedup.candidate_probability(threshold + 0.1, bands, rows) > 0.9 or \
            threshold + 0.1 > 1
        assert dedup.candidate_probability(threshold - 0.3, bands, rows) < 0.1
    assert dedup.candidate_probability(np.array([0.0, 1.0]), 8, 16).tolist() == [0.0, 1.0]


def test_lsh_candidates_are_the_pairs_sharing_a_band():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4]],
                   dtype=np.uint64)
    pairs = dedup.lsh_candidates(sig, 2, 2).tolist()
    assert pairs == [[0, 1], [0, 2], [0, 4], [1, 4], [2, 4]]
    assert dedup.lsh_candidates(sig[:1], 2, 2).shape == (0, 2)
    assert dedup.group_pairs(5, pairs).tolist() == [0, 0, 0, 3, 0]
    assert dedup.group_pairs(4, [[2, 3], [1, 3]]).tolist() == [0, 1, 1, 1]   # first kept


# ---- exact and near dedup on Shakespeare --------------------------------------------------
def _passages(text, n, min_chars=300):
    """n speeches of at least min_chars characters, distinct, in corpus order."""
    seen, out = set(), []
    for speech in text.split("\n\n"):
        if len(speech) >= min_chars and speech not in seen:
            seen.add(speech)
            out.append(speech)
        if len(out) == n:
            return out
    raise AssertionError("not enough long speeches")


def _edit(text, n_edits, rng):
    chars = list(text)
    for pos in rng.choice(len(chars), n_edits, replace=False):
        chars[pos] = "#" if chars[pos] != "#" else "%"
    return "".join(chars)


def test_exact_dedup_catches_case_and_whitespace_variants(shakespeare_text):
    docs = _passages(shakespeare_text, 30)
    variants = [docs[3].upper(), "  " + docs[7].replace(" ", "   \t") + "\n\n",
                docs[3], docs[11].replace("\n", " ")]
    corpus = docs + variants
    result = dedup.dedup_exact(corpus)
    assert result.kept.tolist() == list(range(30))
    assert result.groups == [[3, 30, 32], [7, 31], [11, 33]]
    assert result.representative[30:].tolist() == [3, 7, 3, 11]
    assert result.report["n_removed"] == 4 and result.report["mb_per_s"] > 0
    near_miss = dedup.dedup_exact(docs + [docs[5] + "!"])
    assert near_miss.report["n_removed"] == 0            # one character more is not exact


def test_near_dedup_catches_edited_copies_and_merges_nothing_else(shakespeare_text):
    docs = _passages(shakespeare_text, 120)
    rng = np.random.default_rng(0)
    originals = rng.choice(len(docs), 12, replace=False)
    corpus = list(docs)
    for i in originals:                          # 3 edits in 300+ characters: J ~ 0.9
        corpus.append(_edit(docs[i], 3, rng))
    corpus.append(docs[originals[0]].upper())    # a case variant too
    result = dedup.dedup_near(corpus, threshold=0.8)
    expected = sorted([sorted([int(i), 120 + m]) for m, i in enumerate(originals)])
    expected[[g[0] for g in expected].index(int(originals[0]))].append(132)
    assert sorted(result.groups) == expected
    assert result.kept.tolist() == list(range(120))
    assert result.report["bands"] * result.report["rows"] == 128
    assert result.report["kernel"] == "cpu" and result.report["docs_per_s"] > 0
    # the pairs it verified have estimated Jaccard >= 0.8, near their exact Jaccard
    for i, j in result.pairs.tolist():
        assert dedup.exact_jaccard(dedup.normalize(corpus[i]), dedup.normalize(corpus[j])) > 0.7


def test_results_are_the_same_under_a_seed_and_differ_across_seeds(shakespeare_text):
    docs = _passages(shakespeare_text, 40)
    docs.append(_edit(docs[2], 4, np.random.default_rng(1)))
    a = dedup.minhash_signatures(docs, 64, seed=7)
    assert np.array_equal(a, dedup.minhash_signatures(docs, 64, seed=7))
    assert not np.array_equal(a, dedup.minhash_signatures(docs, 64, seed=8))
    first, again = dedup.dedup_near(docs, seed=7), dedup.dedup_near(docs, seed=7)
    assert first.groups == again.groups == [[2, 40]]
    assert np.array_equal(first.pairs, again.pairs)


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, message", [
    (lambda: dedup.dedup_near([]), ValueError, "dedup_near: docs is empty (0 documents)"),
    (lambda: dedup.dedup_exact([]), ValueError, "dedup_exact: docs is empty"),
    (lambda: dedup.dedup_exact("a text"), TypeError, "docs must be a sequence of documents"),
    (lambda: dedup.dedup_exact(["ok", 3]), TypeError, "docs[1] must be a str, got int"),
    (lambda: dedup.dedup_near(["long enough", "abc"]), ValueError,
     "dedup_near: docs[1] after normalize() has 3 characters, fewer than the shingle size k=5"),
    (lambda: dedup.minhash_signatures(["abcdef", "ab"], k=3), ValueError,
     "minhash_signatures: docs[1] has 2 characters, fewer than the shingle size k=3"),
    (lambda: dedup.shingles("abc", 0), ValueError, "shingles: k must be an int >= 1, got 0"),
    (lambda: dedup.dedup_near(["abcdef"], k=0), ValueError, "dedup_near: k must be an int >= 1"),
    (lambda: dedup.dedup_near(["abcdef"], threshold=0), ValueError,
     "dedup_near: threshold must be a number in (0, 1], got 0"),
    (lambda: dedup.dedup_near(["abcdef"], threshold=1.5), ValueError, "got 1.5"),
    (lambda: dedup.dedup_near(["abcdef"], bands=5), ValueError,
     "num_perm=128 is not divisible into bands=5; expected a divisor of num_perm"),
    (lambda: dedup.dedup_near(["abcdef"], bands=10, rows=12), ValueError,
     "bands=10 x rows=12 = 120, expected num_perm=128"),
    (lambda: dedup.dedup_near(["abcdef"], num_perm=0), ValueError,
     "num_perm must be an int >= 1, got 0"),
    (lambda: dedup.lsh_candidates(np.zeros((3, 10), np.uint64), 4, 2), ValueError,
     "bands=4 x rows=2 = 8, expected num_perm=10"),
])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
