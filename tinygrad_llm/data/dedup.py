"""Deduplication of a corpus: exact duplicates by a hash of the normalised text, near duplicates
by MinHash signatures and LSH banding (Broder, 1997; Indyk & Motwani, 1998; Leskovec, Rajaraman &
Ullman, Mining of Massive Datasets, ch. 3; Lee et al., 2022, "Deduplicating Training Data Makes
Language Models Better").

Reading order: normalisation and exact hashes; shingles (the k-grams of a document, and their
stable 64-bit hashes); MinHash (the hash family, the NumPy reference beside the Numba loop in
kernels/cpu/dedup.py, the signatures); LSH (the S-curve, the choice of bands and rows, the
candidate pairs); grouping (union-find); the two entry points, dedup_exact and dedup_near.

- Exact: two documents are duplicates when their normalised texts (lowercased, whitespace runs
  collapsed to one space, stripped) have the same blake2b digest. Python's hash() is salted per
  process (PYTHONHASHSEED), so it would give other groups in another run.
- Near: the Jaccard similarity J(A, B) = |A & B| / |A | B| of the documents' sets of k-gram
  shingles (characters of the normalised text, or token ids). A MinHash h_j(A) = min over x in A
  of (a_j x + b_j) mod p, p = 2^61 - 1, over the shingles' 64-bit hashes x, collides for two
  documents with probability ~J; the fraction of the num_perm functions on which two signatures
  agree estimates J with standard error sqrt(J (1 - J) / num_perm).
- LSH: the signature is cut into b bands of r rows; documents whose rows agree on a whole band
  share that band's bucket and become a candidate pair. A pair of similarity s is a candidate with
  probability 1 - (1 - s^r)^b, an S-curve that rises near (1 / b)^(1 / r). Candidates are then
  verified (estimated J >= threshold), the verified pairs are joined into groups by union-find,
  and each group keeps its first document.

A bucket of m documents yields m (m - 1) / 2 candidate pairs: a corpus of many copies of one
document is quadratic in its copies (run dedup_exact first to fold the exact ones).
"""
import dataclasses
import hashlib
import numbers
import re
import time

import numpy as np

from ..kernels import kernel, ran

__all__ = ["normalize", "exact_hash", "shingles", "shingle_hashes", "exact_jaccard",
           "hash_parameters", "minhash", "minhash_signatures", "estimate_jaccard",
           "candidate_probability", "choose_bands", "lsh_candidates", "group_pairs",
           "DedupResult", "dedup_exact", "dedup_near", "MERSENNE_61"]

MERSENNE_61 = (1 << 61) - 1          # p: the hash family's prime modulus


# ---- exact: normalised text, a stable digest ------------------------------------------------
_WHITESPACE = re.compile(r"\s+")


def normalize(text):
    """`text` lowercased, each run of whitespace made one space, stripped."""
    return _WHITESPACE.sub(" ", text.lower()).strip()


def exact_hash(text):
    """The blake2b digest (16 bytes, hex) of normalize(text): equal for documents that differ
    only in case and whitespace, the same in every process."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


# ---- checks shared by the public functions --------------------------------------------------
def _check_docs(docs, owner, allow_ids=False):
    """docs -> a list; an empty corpus or a document of the wrong type is a clear error."""
    if isinstance(docs, (str, bytes)):
        raise TypeError(f"{owner}: docs must be a sequence of documents, got a single "
                        f"{type(docs).__name__}")
    docs = list(docs)
    if not docs:
        raise ValueError(f"{owner}: docs is empty (0 documents); expected at least one document")
    for i, doc in enumerate(docs):
        if isinstance(doc, str):
            continue
        if allow_ids and isinstance(doc, np.ndarray) and doc.ndim == 1 and doc.dtype.kind in "iu":
            continue
        expected = "a str or a 1-D int array of token ids" if allow_ids else "a str"
        raise TypeError(f"{owner}: docs[{i}] must be {expected}, got {type(doc).__name__}")
    return docs


def _check_int(value, name, owner, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_threshold(threshold, owner):
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not 0 < threshold <= 1):
        raise ValueError(f"{owner}: threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


# ---- shingles -------------------------------------------------------------------------------
def _units(doc):
    """A document as one uint64 per unit: a str's Unicode code points, or token ids."""
    if isinstance(doc, str):
        return np.frombuffer(doc.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    ids = np.asarray(doc)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise TypeError(f"expected a str or a 1-D int array of token ids, got {ids.dtype} "
                        f"shape {ids.shape}")
    if ids.size and ids.dtype.kind == "i" and ids.min() < 0:
        raise ValueError(f"token ids must be >= 0, got {ids.min()}")
    return ids.astype(np.uint64)


def _check_k(k, doc, owner, where="the document"):
    k = _check_int(k, "k", owner)
    if k > len(doc):
        unit = "characters" if isinstance(doc, str) else "tokens"
        raise ValueError(f"{owner}: {where} has {len(doc)} {unit}, fewer than the shingle size "
                         f"k={k}; expected documents of at least k units (drop or merge the "
                         "short ones, or lower k)")
    return k


def shingles(doc, k=5):
    """The set of k-grams of `doc`: substrings of k characters of a str, tuples of k ids of a
    token sequence. The readable definition that shingle_hashes hashes."""
    k = _check_k(k, doc, "shingles")
    if isinstance(doc, str):
        return {doc[i:i + k] for i in range(len(doc) - k + 1)}
    ids = [int(t) for t in doc]
    return {tuple(ids[i:i + k]) for i in range(len(ids) - k + 1)}


# a 64-bit polynomial over the k units, then splitmix64's finaliser (Steele et al., 2014) so that
# nearby k-grams land far apart; all of it uint64 arithmetic modulo 2^64
_BASE = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)


def shingle_hashes(doc, k=5):
    """The sorted, distinct 64-bit hashes (uint64) of doc's k-gram shingles: one per element of
    shingles(doc, k) unless two collide (about one pair in 2^64). Stable across processes."""
    k = _check_k(k, doc, "shingle_hashes")
    units = _units(doc)
    n = len(units) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):                        # h = sum_j units[i + j] B^(k-1-j)  (mod 2^64)
        h = h * _BASE + units[j:j + n]
    h ^= h >> _S30
    h *= _MIX1
    h ^= h >> _S27
    h *= _MIX2
    h ^= h >> _S31
    return np.unique(h)


def exact_jaccard(a, b, k=5):
    """|A & B| / |A | B| of the k-gram shingle sets of documents a and b, by brute force: the
    oracle that MinHash estimates."""
    sa, sb = shingles(a, k), shingles(b, k)
    return len(sa & sb) / len(sa | sb)


# ---- MinHash --------------------------------------------------------------------------------
_P61 = np.uint64(MERSENNE_61)
_LOW32, _LOW29 = np.uint64(0xFFFFFFFF), np.uint64((1 << 29) - 1)
_S3, _S29, _S32, _S61 = np.uint64(3), np.uint64(29), np.uint64(32), np.uint64(61)


def hash_parameters(num_perm, seed=0):
    """(a, b): num_perm draws of a in [1, p) and b in [0, p), p = 2^61 - 1, from `seed`: the
    universal family h_j(x) = (a_j x + b_j) mod p (Carter & Wegman, 1979)."""
    num_perm = _check_int(num_perm, "num_perm", "hash_parameters")
    rng = np.random.default_rng([seed, 61])
    a = rng.integers(1, MERSENNE_61, num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE_61, num_perm, dtype=np.uint64)
    return a, b


def _mod61(x):
    """x (uint64, any value) reduced to [0, p): 2^61 = 1 (mod p)."""
    r = (x & _P61) + (x >> _S61)
    return np.where(r >= _P61, r - _P61, r)


def _affine61(a, x, b):
    """(a x + b) mod p for a, x, b in [0, p), elementwise with broadcasting; the 122-bit product
    from 32-bit halves (kernels/cpu/dedup.py writes out the algebra)."""
    a_lo, a_hi = a & _LOW32, a >> _S32
    x_lo, x_hi = x & _LOW32, x >> _S32
    lo = a_lo * x_lo
    mid = a_lo * x_hi + a_hi * x_lo
    r = ((a_hi * x_hi) << _S3) + (mid >> _S29) + ((mid & _LOW29) << _S32) + (lo >> _S61) \
        + (lo & _P61)
    r = (r & _P61) + (r >> _S61)
    return _mod61(r + b)


_REFERENCE_CHUNK = 4096          # shingles per step: a (P, chunk) temporary, not (P, S)


@kernel("minhash")                  # fast version: kernels/cpu/dedup.py
def minhash(hashes, offsets, a, b):
    """(N, P) uint64 MinHash signatures, in NumPy: out[i, j] = min over the hashes x of document
    i (hashes[offsets[i]:offsets[i + 1]], each < p) of (a_j x + b_j) mod p; a document without
    shingles gets p in every column. The readable reference of kernels/cpu/dedup.py's loop."""
    # hashes: (S,) uint64   offsets: (N + 1,) int64   a, b: (P,) uint64
    out = np.full((len(offsets) - 1, len(a)), _P61, dtype=np.uint64)
    for i in range(len(offsets) - 1):
        for start in range(offsets[i], offsets[i + 1], _REFERENCE_CHUNK):
            x = hashes[start:min(start + _REFERENCE_CHUNK, offsets[i + 1])]
            h = _affine61(a[:, None], x[None, :], b[:, None])        # (P, chunk)
            np.minimum(out[i], h.min(axis=1), out=out[i])
    return out


def _signatures(hashes, offsets, a, b):
    """(signatures, which implementation ran: "cpu" for the Numba loop, else "reference")."""
    signatures = minhash(hashes, offsets, a, b)
    return signatures, ran("minhash")


def _corpus_hashes(docs, k, owner):
    """Every document's shingle hashes (reduced below p) back to back, and the offsets."""
    parts = []
    for i, doc in enumerate(docs):
        _check_k(k, doc, owner, where=f"docs[{i}]")
        parts.append(shingle_hashes(doc, k))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return _mod61(np.concatenate(parts)), offsets


def minhash_signatures(docs, num_perm=128, k=5, seed=0, return_kernel=False):
    """(N, num_perm) uint64 MinHash signatures of N documents (str, or 1-D int arrays of token
    ids) over their k-gram shingles, with the hash functions hash_parameters(num_perm, seed).
    Two rows agree in a fraction ~J of columns (estimate_jaccard). return_kernel: also return
    which implementation ran ("cpu": the Numba loop; "reference" under tl.use_kernels(False))."""
    docs = _check_docs(docs, "minhash_signatures", allow_ids=True)
    num_perm = _check_int(num_perm, "num_perm", "minhash_signatures")
    _check_int(k, "k", "minhash_signatures")
    hashes, offsets = _corpus_hashes(docs, k, "minhash_signatures")
    a, b = hash_parameters(num_perm, seed)
    signatures, kernel = _signatures(hashes, offsets, a, b)
    return (signatures, kernel) if return_kernel else signatures


def estimate_jaccard(sig_a, sig_b):
    """The fraction of MinHash columns on which two signatures (or two stacks of them, row by
    row) agree: an unbiased estimate of J with standard error sqrt(J (1 - J) / num_perm)."""
    sig_a, sig_b = np.asarray(sig_a), np.asarray(sig_b)
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"estimate_jaccard: signatures of shapes {sig_a.shape} and "
                         f"{sig_b.shape}; expected one shape")
    return (sig_a == sig_b).mean(axis=-1)


# ---- LSH banding ----------------------------------------------------------------------------
def candidate_probability(s, bands, rows):
    """P(candidate | s) = 1 - (1 - s^rows)^bands: the chance that two documents of Jaccard
    similarity s agree on all rows of at least one of the bands (the S-curve)."""
    s = np.asarray(s, dtype=np.float64)
    return 1.0 - (1.0 - s ** rows) ** bands


def _band_errors(bands, rows, threshold, points=2000):
    """(false-positive area, false-negative area): the S-curve's integral below the threshold and
    1 minus it above, by the midpoint rule."""
    below = (np.arange(points) + 0.5) / points * threshold
    above = threshold + (np.arange(points) + 0.5) / points * (1 - threshold)
    fp = candidate_probability(below, bands, rows).mean() * threshold
    fn = (1 - candidate_probability(above, bands, rows)).mean() * (1 - threshold)
    return float(fp), float(fn)


def choose_bands(num_perm, threshold, fn_weight=0.8):
    """(bands, rows) with bands x rows = num_perm whose S-curve best separates similarities
    below `threshold` from those above: the least fn_weight x (area missed above) +
    (1 - fn_weight) x (area let in below) (datasketch's choice, which weighs both 0.5).
    A false positive costs one verification, a false negative a missed duplicate, hence 0.8:
    at num_perm=128, threshold=0.8, equal weights give 8 x 16 (P(candidate | 0.8) = 0.20),
    0.8 gives 16 x 8 (0.95)."""
    num_perm = _check_int(num_perm, "num_perm", "choose_bands")
    threshold = _check_threshold(threshold, "choose_bands")
    if not 0 <= fn_weight <= 1:
        raise ValueError(f"choose_bands: fn_weight must be in [0, 1], got {fn_weight!r}")
    best, best_cost = None, None
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        fp, fn = _band_errors(num_perm // rows, rows, threshold)
        cost = (1 - fn_weight) * fp + fn_weight * fn
        if best_cost is None or cost < best_cost:
            best, best_cost = (num_perm // rows, rows), cost
    return best


def _check_bands(num_perm, bands, rows, owner):
    """bands and rows for num_perm: both given, one given (the other divides num_perm), or
    neither (the caller chooses)."""
    if bands is None and rows is None:
        return None
    if bands is not None:
        bands = _check_int(bands, "bands", owner)
    if rows is not None:
        rows = _check_int(rows, "rows", owner)
    given = bands if rows is None else rows
    if bands is None or rows is None:
        if num_perm % given:
            name = "bands" if rows is None else "rows"
            raise ValueError(f"{owner}: num_perm={num_perm} is not divisible into {name}="
                             f"{given}; expected a divisor of num_perm")
        bands, rows = (bands, num_perm // bands) if rows is None else (num_perm // rows, rows)
    if bands * rows != num_perm:
        raise ValueError(f"{owner}: bands={bands} x rows={rows} = {bands * rows}, expected "
                         f"num_perm={num_perm} (the signature must divide into the bands)")
    return bands, rows


def lsh_candidates(signatures, bands, rows):
    """Candidate pairs: the (M, 2) int64 array of the (i, j), i < j, sorted, whose signatures
    agree on every row of at least one band (band t is columns t rows .. (t + 1) rows - 1).
    signatures: (N, bands x rows) MinHash signatures."""
    sig = np.asarray(signatures)
    if sig.ndim != 2:
        raise ValueError(f"lsh_candidates: signatures must be 2-D (N, num_perm), got shape "
                         f"{sig.shape}")
    bands = _check_int(bands, "bands", "lsh_candidates")
    rows = _check_int(rows, "rows", "lsh_candidates")
    if bands * rows != sig.shape[1]:
        raise ValueError(f"lsh_candidates: bands={bands} x rows={rows} = {bands * rows}, "
                         f"expected num_perm={sig.shape[1]} (the signatures' columns)")
    n = sig.shape[0]
    codes = [np.zeros(0, dtype=np.int64)]
    for t in range(bands):
        # documents whose band t is the same row of values share a bucket
        _, bucket = np.unique(sig[:, t * rows:(t + 1) * rows], axis=0, return_inverse=True)
        bucket = bucket.ravel()
        order = np.argsort(bucket, kind="stable")            # members ascending in each bucket
        edges = np.flatnonzero(np.diff(bucket[order])) + 1
        for members in np.split(order, edges):
            if len(members) > 1:
                i, j = np.triu_indices(len(members), 1)
                codes.append(members[i].astype(np.int64) * n + members[j])
    codes = np.unique(np.concatenate(codes))
    return np.stack([codes // n, codes % n], axis=1) if n else np.zeros((0, 2), np.int64)


# ---- grouping -------------------------------------------------------------------------------
def group_pairs(n, pairs):
    """Union-find over n documents joined by `pairs` ((M, 2) indices): each document's
    representative, the smallest index of its group (so the first copy is the one kept)."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]          # path halving
            i = parent[i]
        return i
    for i, j in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)      # the smaller index stays the root
    return np.array([root(i) for i in range(n)], dtype=np.int64)


@dataclasses.dataclass
class DedupResult:
    """What a deduplication found. kept: (K,) indices of the documents kept, ascending;
    representative: (N,) the kept document each one folds into (itself when kept); groups: the
    duplicate groups (two or more documents), each ascending with its kept document first;
    pairs: (M, 2) the verified near-duplicate pairs (None for exact); report: counts, settings
    and throughput."""
    kept: np.ndarray
    representative: np.ndarray
    groups: list
    pairs: np.ndarray
    report: dict


def _result(representative, pairs, report, seconds, n_bytes):
    n = len(representative)
    kept = np.flatnonzero(representative == np.arange(n))
    members = {}
    for i, r in enumerate(representative.tolist()):
        members.setdefault(r, []).append(i)
    groups = [g for g in members.values() if len(g) > 1]
    report = dict(n_docs=n, n_kept=len(kept), n_removed=n - len(kept), n_groups=len(groups),
                  **report, megabytes=n_bytes / 1e6, seconds=seconds,
                  docs_per_s=n / seconds if seconds > 0 else None,
                  mb_per_s=n_bytes / 1e6 / seconds if seconds > 0 else None)
    return DedupResult(kept, representative, groups, pairs, report)


# ---- the entry points -----------------------------------------------------------------------
def dedup_exact(docs):
    """Exact deduplication: documents with the same exact_hash (equal after lowercasing and
    collapsing whitespace) form a group, and the first of each is kept. Returns DedupResult."""
    start = time.perf_counter()
    docs = _check_docs(docs, "dedup_exact")
    first = {}
    representative = np.array([first.setdefault(exact_hash(doc), i)
                               for i, doc in enumerate(docs)], dtype=np.int64)
    n_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
    return _result(representative, None, dict(method="exact"), time.perf_counter() - start,
                   n_bytes)


def dedup_near(docs, threshold=0.8, num_perm=128, k=5, bands=None, rows=None, seed=0,
               normalized=True):
    """Near-duplicate deduplication: MinHash signatures of each document's k-gram shingles
    (characters of normalize(doc) when normalized, else of doc as given; or token ids), LSH
    candidates from `bands` bands of `rows` rows (bands x rows = num_perm; by default
    choose_bands(num_perm, threshold)), verified by estimated Jaccard >= threshold, grouped by
    union-find; the first document of each group is kept. Returns DedupResult; its report holds
    the counts, bands, rows, the candidates and verified pairs, which implementation computed
    the signatures, and the throughput (documents and megabytes of input per second)."""
    owner = "dedup_near"
    start = time.perf_counter()
    docs = _check_docs(docs, owner, allow_ids=True)
    threshold = _check_threshold(threshold, owner)
    num_perm = _check_int(num_perm, "num_perm", owner)
    k = _check_int(k, "k", owner)
    bands, rows = _check_bands(num_perm, bands, rows, owner) or choose_bands(num_perm, threshold)
    n_bytes = sum(len(d.encode("utf-8")) if isinstance(d, str) else d.nbytes for d in docs)
    if normalized:
        docs = [normalize(d) if isinstance(d, str) else d for d in docs]
        for i, doc in enumerate(docs):
            _check_k(k, doc, owner, where=f"docs[{i}] after normalize()")
    signatures, kernel = minhash_signatures(docs, num_perm, k, seed, return_kernel=True)
    candidates = lsh_candidates(signatures, bands, rows)
    similarity = estimate_jaccard(signatures[candidates[:, 0]], signatures[candidates[:, 1]])
    pairs = candidates[similarity >= threshold]
    representative = group_pairs(len(docs), pairs)
    report = dict(method="near", threshold=threshold, num_perm=num_perm, k=k, bands=bands,
                  rows=rows, lsh_threshold=(1 / bands) ** (1 / rows),
                  candidates=len(candidates), verified_pairs=len(pairs), kernel=kernel)
    return _result(representative, pairs, report, time.perf_counter() - start, n_bytes)
