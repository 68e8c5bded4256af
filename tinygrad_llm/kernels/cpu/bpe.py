"""Byte-pair-encoding training with incremental pair counts (reference: tokenizers/bpe.py,
`learn_merges`).

The reference recounts every adjacent pair of every word after each merge: O(merges x corpus).
Here a merge touches only the words that hold its pair:

    count[p]   occurrences of pair p = (a, b), weighted by word frequency
    words[p]   a linked list of the words where p has occurred (entries may be stale: a word is
               checked again when it is visited, and visiting one twice changes nothing)
    heap       (count, pair) entries, largest count first, smallest pair first on ties. Every
               count change pushes a fresh entry; a popped entry whose count is no longer the
               pair's count is stale and dropped (lazy deletion), so no decrease-key is needed.

Merging (a, b) -> n in one word of frequency f: subtract f from every adjacent pair of the word,
rewrite it left to right (non-overlapping, as the reference does), add f to every adjacent pair
of the new word, and file the word under the pairs that hold n. Words are short (a few symbols),
so re-counting one word is cheaper than tracking neighbours, and it is plainly correct.

Merge i makes token n_base + i. The loop never looks at bytes: ids are enough.
"""
import numpy as np
from numba import njit, types
from numba.typed import Dict

from .. import implements

@njit(cache=True)
def _grow(a, need):
    """a, or a copy with at least `need` entries (doubling), the tail uninitialised."""
    if need <= a.shape[0]:
        return a
    size = max(need, 2 * a.shape[0])
    out = np.empty(size, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


@njit(cache=True)
def _before(c1, k1, c2, k2):
    """Heap order: the larger count first; on equal counts the smaller pair (a, b)."""
    return c1 > c2 or (c1 == c2 and k1 < k2)


@njit(cache=True)
def _heap_push(hc, hk, size, c, k):
    hc = _grow(hc, size + 1)
    hk = _grow(hk, size + 1)
    i = size
    while i > 0:
        parent = (i - 1) // 2
        if not _before(c, k, hc[parent], hk[parent]):
            break
        hc[i], hk[i] = hc[parent], hk[parent]
        i = parent
    hc[i], hk[i] = c, k
    return hc, hk, size + 1


@njit(cache=True)
def _heap_pop(hc, hk, size):
    """Remove the top; the caller reads hc[0], hk[0] first."""
    size -= 1
    c, k = hc[size], hk[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _before(hc[child + 1], hk[child + 1], hc[child], hk[child]):
            child += 1
        if not _before(hc[child], hk[child], c, k):
            break
        hc[i], hk[i] = hc[child], hk[child]
        i = child
    if size > 0:
        hc[i], hk[i] = c, k
    return size


# columns of the pair-slot table
_COUNT, _HEAD, _LAST, _STAMP, _KEY = 0, 1, 2, 3, 4


@njit(cache=True)
def _grow_rows(a, need):
    """A 2-D table, or a copy with at least `need` rows (doubling)."""
    if need <= a.shape[0]:
        return a
    out = np.empty((max(need, 2 * a.shape[0]), a.shape[1]), dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


@njit(cache=True)
def _slot(slot_of, slots, n_slots, key):
    """The slot of pair `key`, made (count 0, empty word list) when new."""
    if key in slot_of:
        return slot_of[key], slots, n_slots
    slots = _grow_rows(slots, n_slots + 1)
    slots[n_slots, _COUNT], slots[n_slots, _HEAD], slots[n_slots, _LAST] = 0, -1, -1
    slots[n_slots, _STAMP], slots[n_slots, _KEY] = -1, key
    slot_of[key] = n_slots
    return n_slots, slots, n_slots + 1


@njit(cache=True)
def _file(slots, slot, nodes, n_nodes, w):
    """File word w under the slot's list (unless it was the last one filed there)."""
    if slots[slot, _LAST] == w:
        return nodes, n_nodes
    slots[slot, _LAST] = w
    nodes = _grow_rows(nodes, n_nodes + 1)
    nodes[n_nodes, 0], nodes[n_nodes, 1] = w, slots[slot, _HEAD]
    slots[slot, _HEAD] = n_nodes
    return nodes, n_nodes + 1


@njit(cache=True)
def _learn_merges(symbols, starts, freqs, n_base, max_tokens, min_frequency):
    n_words = starts.shape[0] - 1
    lengths = starts[1:] - starts[:-1]

    slot_of = Dict.empty(key_type=types.int64, value_type=types.int64)   # pair key -> slot
    slots = np.empty((1024, 5), dtype=np.int64)
    n_slots = 0
    nodes = np.empty((1024, 2), dtype=np.int64)    # word-list nodes: (word, next node or -1)
    n_nodes = 0
    touched = np.empty(1024, dtype=np.int64)
    hc = np.empty(1024, dtype=np.int64)            # heap: counts and pair keys
    hk = np.empty(1024, dtype=np.int64)
    heap_size = 0
    merges = np.empty(2 * max(max_tokens - n_base, 1), dtype=np.int64)   # (a, b) pairs
    n_merges = 0

    for w in range(n_words):
        s = starts[w]
        for i in range(lengths[w] - 1):
            key = (symbols[s + i] << 32) | symbols[s + i + 1]
            slot, slots, n_slots = _slot(slot_of, slots, n_slots, key)
            slots[slot, _COUNT] += freqs[w]
            nodes, n_nodes = _file(slots, slot, nodes, n_nodes, w)
    for slot in range(n_slots):
        hc, hk, heap_size = _heap_push(hc, hk, heap_size, slots[slot, _COUNT], slots[slot, _KEY])

    step = 0
    while n_base + n_merges < max_tokens and heap_size > 0:
        c, key = hc[0], hk[0]
        heap_size = _heap_pop(hc, hk, heap_size)
        slot = slot_of[key]
        if slots[slot, _COUNT] != c:
            continue                                    # stale entry
        if c < min_frequency:
            break
        a, b = key >> 32, key & 0xFFFFFFFF

        new = n_base + n_merges
        merges = _grow(merges, 2 * n_merges + 2)
        merges[2 * n_merges], merges[2 * n_merges + 1] = a, b
        n_merges += 1

        # rewrite every word filed under (a, b); the list empties (no rewritten word holds
        # (a, b) again: left-to-right joining leaves no adjacent a, b)
        n_touched = 0
        node = slots[slot, _HEAD]
        slots[slot, _HEAD], slots[slot, _LAST] = -1, -1
        while node >= 0:
            w, node = nodes[node, 0], nodes[node, 1]
            s, n = starts[w], lengths[w]
            found = False
            for i in range(n - 1):
                if symbols[s + i] == a and symbols[s + i + 1] == b:
                    found = True
                    break
            if not found:
                continue                                # a stale or repeated entry
            for sign in (-1, 1):                        # old pairs out; rewrite; new pairs in
                if sign == 1:
                    out = 0
                    i = 0
                    while i < n:
                        if i + 1 < n and symbols[s + i] == a and symbols[s + i + 1] == b:
                            symbols[s + out] = new
                            i += 2
                        else:
                            symbols[s + out] = symbols[s + i]
                            i += 1
                        out += 1
                    n = out
                    lengths[w] = n
                for i in range(n - 1):
                    x, y = symbols[s + i], symbols[s + i + 1]
                    ps, slots, n_slots = _slot(slot_of, slots, n_slots, (x << 32) | y)
                    slots[ps, _COUNT] += sign * freqs[w]
                    if slots[ps, _STAMP] != step:
                        slots[ps, _STAMP] = step
                        touched = _grow(touched, n_touched + 1)
                        touched[n_touched] = ps
                        n_touched += 1
                    if sign == 1 and (x == new or y == new):
                        nodes, n_nodes = _file(slots, ps, nodes, n_nodes, w)
        for j in range(n_touched):                      # (a, b) itself is now 0: not pushed
            ps = touched[j]
            if slots[ps, _COUNT] > 0:
                hc, hk, heap_size = _heap_push(hc, hk, heap_size, slots[ps, _COUNT],
                                               slots[ps, _KEY])
        step += 1
    return merges[:2 * n_merges].reshape(n_merges, 2).copy()


@implements("bpe_learn_merges", device="cpu")
def learn_merges_cpu(symbols, starts, freqs, n_base, max_tokens, min_frequency):
    symbols = np.array(symbols, dtype=np.int64)        # a copy: the loop rewrites words in place
    return _learn_merges(symbols, np.ascontiguousarray(starts, dtype=np.int64),
                         np.ascontiguousarray(freqs, dtype=np.int64), int(n_base),
                         int(max_tokens), int(min_frequency))
