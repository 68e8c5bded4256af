"""Passkey retrieval (Mohtashami & Jaggi, 2023, "Landmark Attention"): a random 5-digit key hidden
at some depth in a long run of repeated filler, asked for at the end. A model that has learned to
copy the key at its training length shows, at longer lengths, whether its positions and its KV
cache still let it reach back that far.

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize
    them. I will quiz you about the important information there. The grass is green. The sky is
    blue. ... The pass key is 48213. Remember it. 48213 is the pass key. ... There and back
    again. What is the pass key? The pass key is

The key sentence goes between two filler sentences, at sentence index round(depth * S) of the S
filler sentences (depth 0: right after the introduction; 1: right before the question). The
landmark code cuts the filler at a character count instead; a sentence boundary keeps every
filler sentence whole, so a tokenizer that holds a sentence in one token sees the same tokens at
every depth.

PASSKEY_PATTERN is a pre-tokenisation regex for such a tokenizer (tokenizers/bpe.py takes it):
every digit is its own piece, and text between digits is cut into sentences (a leading space, up
to a "." or "?", never ending in a space). BPE trained on passkey texts then learns one token per
filler sentence, so a training window of a few hundred tokens holds dozens of filler sentences,
and the answer is " " followed by five single-digit tokens.

Reading order: the texts (INTRO, FILLER, KEY_SENTENCE, QUESTION), passkey_text, filler_for_length
(a length in tokens -> how much filler), passkey_training_text and passkey_batch (what a model
trains on), key_matches / passkey_accuracy (the score).
"""
import numbers

import numpy as np

__all__ = ["passkey_text", "filler_for_length", "passkey_training_text", "passkey_batch",
           "key_matches", "passkey_accuracy", "PASSKEY_PATTERN", "INTRO", "FILLER",
           "KEY_SENTENCE", "QUESTION"]

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize them. I will quiz you about the important information there.")
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.")
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5

# a digit | a sentence: optional space, then text up to "." or "?" (not ending in a space, so
# "The pass key is" before " 48213" is the same piece as at the end of the prompt) | spaces
PASSKEY_PATTERN = r"""\p{N}| ?[^\s\p{N}](?:[^\p{N}.?]*[^\s\p{N}.?])?[.?]?|\s+"""

_SENTENCES = [s.strip() + "." for s in FILLER.split(".") if s.strip()]


def _check_int(value, name, low, high=None):
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def passkey_text(rng, n_filler, depth, key=None):
    """(prompt, key): the landmark-attention prompt with `n_filler` repetitions of FILLER (5
    sentences each) and the key sentence at relative `depth` in [0, 1] among them; `key` a
    5-digit string drawn from `rng` (a np.random.Generator) unless given. The prompt ends with
    "The pass key is"; the answer a model should continue with is " " + key."""
    _check_rng(rng)
    n_filler = _check_int(n_filler, "n_filler", 0)
    if (isinstance(depth, bool) or not isinstance(depth, numbers.Real)
            or not 0.0 <= depth <= 1.0):
        raise ValueError(f"depth must be a number in [0, 1], got {depth!r}")
    if key is None:
        key = str(int(rng.integers(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS)))
    elif not (isinstance(key, str) and len(key) == KEY_DIGITS and key.isdigit()):
        raise ValueError(f"key must be a string of {KEY_DIGITS} digits, got {key!r}")
    sentences = _SENTENCES * n_filler
    at = int(round(depth * len(sentences)))
    parts = [INTRO, *sentences[:at], KEY_SENTENCE.format(key=key), *sentences[at:], QUESTION]
    return " ".join(parts), key


def _text_length(tokenizer, n_filler):
    """Tokens in the longest text (prompt + " " + key) with n_filler repetitions."""
    prompt, key = passkey_text(np.random.default_rng(0), n_filler, 0.5, key="9" * KEY_DIGITS)
    return len(tokenizer.encode(prompt + " " + key))


def filler_for_length(tokenizer, n_tokens):
    """The largest n_filler whose whole text (prompt + " " + key) encodes to at most `n_tokens`
    tokens under `tokenizer` (anything with encode(str) -> ids). The count is taken at depth 0.5
    with the key 99999; the depth and the key move it by a token or two at most under tokenizers
    that merge across sentences or digits (none under PASSKEY_PATTERN or characters)."""
    n_tokens = _check_int(n_tokens, "n_tokens", 1)
    shortest = _text_length(tokenizer, 0)
    if shortest > n_tokens:
        raise ValueError(f"n_tokens={n_tokens} is shorter than a passkey text without filler "
                         f"({shortest} tokens under this tokenizer)")
    per_filler = max(1, _text_length(tokenizer, 1) - shortest)
    low, high = 0, (n_tokens - shortest) // per_filler + 1      # low fits; search up to high
    while _text_length(tokenizer, high) <= n_tokens:
        low, high = high, 2 * high
    while high - low > 1:                                       # low fits, high does not
        mid = (low + high) // 2
        low, high = (mid, high) if _text_length(tokenizer, mid) <= n_tokens else (low, mid)
    return low


def passkey_training_text(rng, max_filler, min_filler=0):
    """prompt + " " + key for training: n_filler uniform in [min_filler, max_filler] and depth
    uniform in [0, 1], both from `rng`."""
    max_filler = _check_int(max_filler, "max_filler", 0)
    min_filler = _check_int(min_filler, "min_filler", 0, max_filler)
    n_filler = int(rng.integers(min_filler, max_filler + 1))
    prompt, key = passkey_text(rng, n_filler, float(rng.random()))
    return prompt + " " + key


def passkey_batch(rng, tokenizer, batch_size, block_size, max_filler, min_filler=0,
                  targets="all"):
    """x, y: (B, T) int64 NumPy arrays of training texts, one text per row, padded at the end;
    y is x shifted by one, -100 (ignored by cross_entropy) on the padding. Each text must fit in
    block_size + 1 tokens (filler_for_length(tokenizer, block_size + 1) gives max_filler).
    targets="all": every next token is a target; "answer": only the answer's (" " and the key
    after the question), all others -100. Padding uses id 0 (never a target)."""
    batch_size = _check_int(batch_size, "batch_size", 1)
    block_size = _check_int(block_size, "block_size", 1)
    if targets not in ("all", "answer"):
        raise ValueError(f"targets must be 'all' or 'answer', got {targets!r}")
    x = np.zeros((batch_size, block_size), dtype=np.int64)
    y = np.full((batch_size, block_size), -100, dtype=np.int64)
    for b in range(batch_size):
        text = passkey_training_text(rng, max_filler, min_filler)
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        if len(ids) > block_size + 1:
            raise ValueError(f"a training text of {len(ids)} tokens does not fit block_size="
                             f"{block_size} + 1; max_filler={max_filler} is too large (use "
                             f"filler_for_length(tokenizer, {block_size + 1}))")
        n = len(ids) - 1
        x[b, :n] = ids[:-1]
        if targets == "all":
            y[b, :n] = ids[1:]
        else:
            n_answer = len(tokenizer.encode(text[text.rindex(QUESTION) + len(QUESTION):]))
            y[b, n - n_answer:n] = ids[-n_answer:]
    return x, y


def key_matches(generated, key):
    """True when the first 5 digits in `generated` (the decoded continuation) are `key`."""
    digits = [c for c in generated if c.isdigit()][:KEY_DIGITS]
    return "".join(digits) == key


def passkey_accuracy(generated, keys):
    """The fraction of continuations whose first 5 digits are their key."""
    generated, keys = list(generated), list(keys)
    if len(generated) != len(keys) or not keys:
        raise ValueError(f"generated and keys must be non-empty and of equal length, got "
                         f"{len(generated)} and {len(keys)}")
    return sum(key_matches(g, k) for g, k in zip(generated, keys)) / len(keys)
