"""WordPiece: BERT's subword tokenizer (Schuster & Nakajima, 2012; Wu et al., 2016; Devlin et al.,
2019), its trainer, and the pre-tokenizer that cuts text into words.

Reading order:
1. Pre-tokenization (plain functions): `clean_text` drops control characters and turns
   whitespace into spaces; lowercasing and `strip_accent_marks` (NFD, then drop combining marks);
   `pre_tokenize` splits on whitespace and around every punctuation character and CJK ideograph,
   as BERT's BasicTokenizer does. `normalize` is the text a decode gives back ("Round trip").
2. `WordPieceTokenizer.train`: from single characters, merge the adjacent pair with the highest
   likelihood score count(ab) / (count(a) count(b)) until the vocabulary is full.
3. Encoding: greedy longest-match-first within each word, continuation pieces prefixed "##"; a word
   with no full segmentation becomes one [UNK].
4. Decoding, serialisation (JSON, and BERT's vocab.txt).

Special tokens: [PAD] [UNK] [CLS] [SEP] [MASK]. A trained vocabulary holds them at ids 0..4; a
vocabulary read from a file keeps the file's ids (BERT's vocab.txt: 0, 100, 101, 102, 103). They
are recognised inside text, case-sensitively, before any normalisation ("a[MASK]b" -> a [MASK] b),
and are never split.

Round trip: for text without special tokens whose words all encode without [UNK] (any text over
the training alphabet, for a trained tokenizer),

    decode(encode(s)) == normalize(s)

where normalize(s) is, in order: control characters (and U+0000, U+FFFD) removed; lowercased (if
`lowercase`); accents stripped (if `strip_accents`); split into words at whitespace and around
each punctuation character and CJK ideograph; the words joined by one space; then the spacing
rule: the space before each of . , ! ? ; : is removed, and " ' " becomes "'" (so "don't" comes
back as "don't", not "don ' t"). Leading and trailing whitespace is not kept.
"""
import json
import re
import unicodedata
from pathlib import Path

import numpy as np

from ..data.files import atomic_write
from ._common import check_dict, merge_pair

__all__ = ["WordPieceTokenizer", "SPECIAL_TOKENS", "pre_tokenize", "normalize", "clean_text",
           "strip_accent_marks", "is_punctuation", "is_cjk"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PREFIX = "##"                      # marks a piece that continues a word
_TYPE = "wordpiece"
_VERSION = 1


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# ---- 1. pre-tokenization -------------------------------------------------------------------------
# BERT's CJK block list: the "CJK Unified Ideographs" blocks and their compatibility blocks.
# Hiragana, Katakana and Hangul are written with spaces and are left to the whitespace split.
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def is_cjk(ch):
    """True for a CJK ideograph, which BERT treats as a word of its own."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def is_punctuation(ch):
    """Unicode punctuation (categories P*), plus every non-alphanumeric printable ASCII character
    ($ + < = > ^ ` | ~ are symbols, S*, in Unicode), as BERT does."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    # \t \n \r are category Cc too, but they separate words: whitespace, not control
    return ch in "\x00\ufffd" or (ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf"))


def clean_text(text):
    """Remove control and format characters (and U+0000, U+FFFD); whitespace becomes " "."""
    table = {}
    for ch in set(text):            # classify each distinct character once, then translate
        if _is_control(ch):
            table[ord(ch)] = None
        elif _is_whitespace(ch):
            table[ord(ch)] = " "
    return text.translate(table)


def strip_accent_marks(text):
    """Canonical decomposition (NFD), then drop the combining marks (category Mn): "é" -> "e"."""
    text = unicodedata.normalize("NFD", text)
    return text.translate({ord(ch): None for ch in set(text)
                           if unicodedata.category(ch) == "Mn"})


def pre_tokenize(text, lowercase=True, strip_accents=True):
    """str -> list of words: cleaned, optionally lowercased and accent-stripped, split at
    whitespace, and with each punctuation character and CJK ideograph a word of its own.

    Punctuation is found after NFD because decomposition can create it (U+037E, the Greek
    question mark, decomposes to ";")."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = clean_text(text)
    if lowercase:
        text = text.lower()
    if strip_accents:
        text = strip_accent_marks(text)
    spaced = {ord(ch): f" {ch} " for ch in set(text) if is_punctuation(ch) or is_cjk(ch)}
    return text.translate(spaced).split()


_SPACE_BEFORE = re.compile(r" ([.,!?;:])")


def _tidy_spacing(text):
    """The spacing rule of decode (module docstring): no space before . , ! ? ; : and
    " ' " -> "'"."""
    return _SPACE_BEFORE.sub(r"\1", text).replace(" ' ", "'")


def normalize(text, lowercase=True, strip_accents=True, special_tokens=SPECIAL_TOKENS):
    """The text that decode(encode(text)) gives back when every word is in the vocabulary:
    the words of `text` (special tokens kept whole) joined by single spaces, then the spacing
    rule. See the module docstring."""
    return _tidy_spacing(" ".join(_words(text, lowercase, strip_accents,
                                         _special_pattern(special_tokens))))


def _special_pattern(special_tokens):
    # longest first, so that one special token that is a prefix of another cannot cut it short
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")


def _words(text, lowercase, strip_accents, special_pattern):
    """Pre-tokenized words, with special tokens cut out of the raw text first (so lowercasing
    and punctuation splitting never touch them)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = []
    # re.split with a capturing group alternates: plain text, special, plain text, ...
    for i, part in enumerate(special_pattern.split(text)):
        if i % 2:
            words.append(part)
        elif part:
            words += pre_tokenize(part, lowercase, strip_accents)
    return words


# ---- 2. training ---------------------------------------------------------------------------------
# WordPiece (Schuster & Nakajima, 2012) adds the unit that most increases the likelihood of the
# training data under a unigram model of the units. Merging the adjacent pair (a, b) into ab
# changes the log-likelihood by about count(ab) * log(p(ab) / (p(a) p(b))), where p(x) =
# count(x) / N; the usual reading of it (the Hugging Face course's WordPiece trainer) ranks pairs by
#
#     score(a, b) = count(ab) / (count(a) * count(b))   ( = p(ab) / (p(a) p(b)) / N )
#
# N is the same for every pair of one step, so this is the ratio by which the pair occurs more
# often together than two independent units would. Unlike BPE's count(ab), it prefers pairs whose
# parts rarely occur apart, so a frequent but "loose" pair ("##e" "##s") waits while parts that
# always co-occur merge first.
#
# Ties (equal scores are exactly equal floats: integer counts below 2^53 and one correctly rounded
# division per score) go to the larger count(ab), then to the pair whose (a, b) strings come first
# in code-point order. Nothing depends on dict or hash order, so training is deterministic.

def _initial_alphabet(word_counts):
    """Word-initial characters as themselves; the "##" form of every character that can continue
    a word (punctuation and CJK ideographs are always one-character words, so they need none).
    With both forms present, any word over the alphabet has a segmentation."""
    chars = sorted({ch for word in word_counts for ch in word})
    inner = [PREFIX + ch for ch in chars if not (is_punctuation(ch) or is_cjk(ch))]
    return chars + inner


class _PairStats:
    """Counts of symbols and of adjacent symbol pairs over a corpus of (word, frequency) entries,
    kept up to date as words are rewritten. Pair counts live in growing NumPy arrays so that one
    vectorised pass scores every pair at each step; `where` maps a pair to the words that held it
    (entries may be stale: a merge re-checks the word)."""

    def __init__(self, n_symbols):
        self.symbol_count = np.zeros(n_symbols, dtype=np.float64)   # (V,) weighted occurrences
        self.index = {}                                             # (a, b) -> row
        self.a = np.zeros(1024, dtype=np.int64)                     # (P,) rows: left symbol
        self.b = np.zeros(1024, dtype=np.int64)                     # (P,) right symbol
        self.count = np.zeros(1024, dtype=np.float64)               # (P,) weighted occurrences
        self.where = []                                             # row -> set of word ids
        self.n = 0

    def _row(self, pair):
        row = self.index.get(pair)
        if row is None:
            if self.n == len(self.count):                           # grow by doubling
                for name in ("a", "b", "count"):
                    old = getattr(self, name)
                    setattr(self, name, np.concatenate([old, np.zeros_like(old)]))
            row = self.index[pair] = self.n
            self.a[row], self.b[row] = pair
            self.where.append(set())
            self.n += 1
        return row

    def grow_symbols(self, n_symbols):
        if n_symbols > len(self.symbol_count):
            extra = np.zeros(max(n_symbols, 2 * len(self.symbol_count)) - len(self.symbol_count))
            self.symbol_count = np.concatenate([self.symbol_count, extra])

    def add_word(self, word_id, symbols, freq, sign=1):
        """Add (sign=1) or remove (sign=-1) the word's contribution to every count."""
        for s in symbols:
            self.symbol_count[s] += sign * freq
        for pair in zip(symbols, symbols[1:]):
            row = self._row(pair)
            self.count[row] += sign * freq
            if sign > 0:
                self.where[row].add(word_id)

    def best_pair(self, min_frequency, vocab):
        """The row to merge next (see the score and tie rules above), or None."""
        count = self.count[:self.n]
        allowed = count >= min_frequency
        if not allowed.any():
            return None
        denom = self.symbol_count[self.a[:self.n]] * self.symbol_count[self.b[:self.n]]
        score = np.where(allowed, count / np.maximum(denom, 1.0), -1.0)
        rows = np.flatnonzero(score == score.max())
        return min(rows.tolist(), key=lambda r: (-count[r], vocab[self.a[r]], vocab[self.b[r]]))


def _train_vocab(word_counts, vocab_size, min_frequency):
    """{word: count} -> vocabulary list (specials, alphabet, then merged tokens in merge order)."""
    vocab = list(SPECIAL_TOKENS) + _initial_alphabet(word_counts)
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(SPECIAL_TOKENS)} "
                         f"special tokens plus the corpus alphabet of "
                         f"{len(vocab) - len(SPECIAL_TOKENS)} characters ({len(vocab)}); "
                         f"expected vocab_size >= {len(vocab)}")
    token_to_id = {t: i for i, t in enumerate(vocab)}
    words = sorted(word_counts)                                  # a fixed order: determinism
    freqs = [word_counts[w] for w in words]
    symbols = [[token_to_id[w[0]]] + [token_to_id[PREFIX + ch] for ch in w[1:]] for w in words]
    stats = _PairStats(len(vocab))
    for word_id, (syms, freq) in enumerate(zip(symbols, freqs)):
        stats.add_word(word_id, syms, freq)

    while len(vocab) < vocab_size:
        row = stats.best_pair(min_frequency, vocab)
        if row is None:
            break                                  # no pair occurs min_frequency times
        a, b = int(stats.a[row]), int(stats.b[row])
        token = vocab[a] + vocab[b][len(PREFIX):]
        merged = token_to_id.get(token)
        if merged is None:                         # "##a"+"##bc" and "##ab"+"##c" are one token
            merged = token_to_id[token] = len(vocab)
            vocab.append(token)
            stats.grow_symbols(len(vocab))
        for word_id in sorted(stats.where[row]):
            old = symbols[word_id]
            new = merge_pair(old, a, b, merged)
            if len(new) == len(old):               # a stale entry: the pair left this word
                continue
            stats.add_word(word_id, old, freqs[word_id], sign=-1)
            stats.add_word(word_id, new, freqs[word_id])
            symbols[word_id] = new
        stats.where[row] = set()
    return vocab


# ---- the tokenizer -------------------------------------------------------------------------------
class WordPieceTokenizer:
    """A WordPiece vocabulary with BERT's pre-tokenizer.

    vocab: the tokens in id order (list of str, no repeats), holding the five SPECIAL_TOKENS;
    word-continuation pieces start with "##". lowercase / strip_accents: the normalisation applied
    before the vocabulary is looked up. max_chars_per_word: longer words become one [UNK].
    """

    def __init__(self, vocab, lowercase=True, strip_accents=True, max_chars_per_word=100):
        vocab = list(vocab)
        token_to_id = {}
        for i, t in enumerate(vocab):
            if not isinstance(t, str) or not t or any(ch.isspace() for ch in t):
                raise ValueError(f"vocab[{i}] must be a non-empty str without whitespace, "
                                 f"got {t!r}")
            if t in token_to_id:
                raise ValueError(f"vocab must not repeat: {t!r} is at {token_to_id[t]} and {i}")
            token_to_id[t] = i
        missing = [t for t in SPECIAL_TOKENS if t not in token_to_id]
        if missing:
            raise ValueError(f"vocab must hold the special tokens {list(SPECIAL_TOKENS)}; "
                             f"missing {missing}")
        for name, flag in (("lowercase", lowercase), ("strip_accents", strip_accents)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        _check_positive_int("max_chars_per_word", max_chars_per_word)
        self._vocab = vocab
        self._token_to_id = token_to_id
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.max_chars_per_word = max_chars_per_word
        self._special_ids = frozenset(token_to_id[t] for t in SPECIAL_TOKENS)
        self._special_pattern = _special_pattern(SPECIAL_TOKENS)
        # the longest piece, without its "##": the greedy search never tries longer
        self._longest = max(len(t) - (len(PREFIX) if t.startswith(PREFIX) else 0) for t in vocab)
        self._cache = {}                           # word -> piece ids (corpora repeat words)

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def train(cls, text, vocab_size=8000, min_frequency=2, lowercase=True, strip_accents=True,
              max_chars_per_word=100):
        """Learn a vocabulary of up to `vocab_size` tokens from `text` (a str or a list of str).

        The vocabulary is the special tokens (ids 0..4), the alphabet (each character word-initial,
        and as a "##" continuation), then merged pieces in merge order. A pair is merged only if it
        occurs at least min_frequency times; training stops early when none does. Words longer
        than max_chars_per_word are left out (they encode as [UNK] anyway)."""
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        _check_positive_int("vocab_size", vocab_size)
        _check_positive_int("min_frequency", min_frequency)
        _check_positive_int("max_chars_per_word", max_chars_per_word)
        pattern = _special_pattern(SPECIAL_TOKENS)
        word_counts = {}
        for t in texts:
            for w in _words(t, lowercase, strip_accents, pattern):
                if w not in SPECIAL_TOKENS and len(w) <= max_chars_per_word:
                    word_counts[w] = word_counts.get(w, 0) + 1
        vocab = _train_vocab(word_counts, vocab_size, min_frequency)
        return cls(vocab, lowercase, strip_accents, max_chars_per_word)

    @classmethod
    def from_vocab_file(cls, path, lowercase=True, strip_accents=True, max_chars_per_word=100):
        """Read BERT's vocab.txt: one token per line, the line number (from 0) is its id."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocab file {str(path)!r} not found (expected a BERT "
                                    f"vocab.txt with one token per line)")
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()                            # the final newline
        vocab = [line.rstrip("\r") for line in lines]
        try:
            return cls(vocab, lowercase, strip_accents, max_chars_per_word)
        except ValueError as err:
            raise ValueError(f"vocab file {str(path)!r}: {err} (vocab[i] is line i + 1)") from err

    # ---- the vocabulary --------------------------------------------------------------------------
    @property
    def vocab(self):
        """The tokens in id order (a copy)."""
        return list(self._vocab)

    @property
    def vocab_size(self):
        return len(self._vocab)

    @property
    def token_to_id(self):
        """{token: id} (a copy)."""
        return dict(self._token_to_id)

    pad_id = property(lambda self: self._token_to_id["[PAD]"])
    unk_id = property(lambda self: self._token_to_id["[UNK]"])
    cls_id = property(lambda self: self._token_to_id["[CLS]"])
    sep_id = property(lambda self: self._token_to_id["[SEP]"])
    mask_id = property(lambda self: self._token_to_id["[MASK]"])

    @property
    def special_ids(self):
        """The ids of the five special tokens, in SPECIAL_TOKENS order."""
        return [self._token_to_id[t] for t in SPECIAL_TOKENS]

    # ---- encoding --------------------------------------------------------------------------------
    def _word_ids(self, word):
        """One word -> piece ids, greedy longest-match-first (Wu et al., 2016): at each position
        take the longest vocabulary piece ("##"-prefixed after the first), else the whole word is
        [UNK]. Greedy is not the fewest pieces, but it is what BERT's vocabularies assume."""
        if len(word) > self.max_chars_per_word:
            return (self.unk_id,)
        ids, start = [], 0
        while start < len(word):
            for end in range(min(len(word), start + self._longest), start, -1):
                piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                found = self._token_to_id.get(piece)
                if found is not None:
                    break
            else:
                return (self.unk_id,)
            ids.append(found)
            start = end
        return tuple(ids)

    def _ids(self, text):
        ids = []
        for word in _words(text, self.lowercase, self.strip_accents, self._special_pattern):
            if word in SPECIAL_TOKENS:
                ids.append(self._token_to_id[word])
                continue
            pieces = self._cache.get(word)
            if pieces is None:
                if len(self._cache) >= 1 << 18:    # bound the memory of odd corpora
                    self._cache.clear()
                pieces = self._cache[word] = self._word_ids(word)
            ids += pieces
        return ids

    def encode(self, text, add_special_tokens=False):
        """str -> list of ids; add_special_tokens wraps them as [CLS] ... [SEP]."""
        ids = self._ids(text)
        return [self.cls_id] + ids + [self.sep_id] if add_special_tokens else ids

    def encode_pair(self, text_a, text_b):
        """BERT's sentence-pair input: [CLS] a [SEP] b [SEP] (list of ids)."""
        return [self.cls_id] + self._ids(text_a) + [self.sep_id] + self._ids(text_b) + [
            self.sep_id]

    def tokenize(self, text):
        """str -> list of piece strings (the tokens of encode)."""
        return [self._vocab[i] for i in self._ids(text)]

    def normalize(self, text):
        """What decode(encode(text)) gives back for in-vocabulary text (module docstring)."""
        return normalize(text, self.lowercase, self.strip_accents)

    # ---- decoding --------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens=True):
        """ids (list or 1-D int array) -> str: "##" pieces glued to the piece before, words
        separated by one space, then the spacing rule (module docstring).

        skip_special_tokens drops [PAD] [CLS] [SEP] [MASK]; [UNK] is kept, since it stands for a
        word of the text (dropping it would silently join its neighbours). A "##" piece with no
        word before it starts a word, without its "##"."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return ""
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"ids[{i}] = {int(ids[i])} is outside the vocabulary "
                             f"[0, {self.vocab_size})")
        words = []
        for i in ids.tolist():
            if skip_special_tokens and i in self._special_ids and i != self.unk_id:
                continue
            token = self._vocab[i]
            if token.startswith(PREFIX):
                if words and words[-1] not in SPECIAL_TOKENS:
                    words[-1] += token[len(PREFIX):]
                    continue
                token = token[len(PREFIX):]
            words.append(token)
        return _tidy_spacing(" ".join(words))

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self):
        return {"type": _TYPE, "version": _VERSION, "vocab": list(self._vocab),
                "lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "max_chars_per_word": self.max_chars_per_word}

    @classmethod
    def from_dict(cls, d):
        check_dict(d, _TYPE, _VERSION, "WordPieceTokenizer")
        if not isinstance(d.get("vocab"), list):
            raise ValueError(f"WordPieceTokenizer dict: vocab must be a list, got "
                             f"{type(d.get('vocab')).__name__}")
        return cls(d["vocab"], d.get("lowercase", True), d.get("strip_accents", True),
                   d.get("max_chars_per_word", 100))

    def save(self, path):
        """Write the tokenizer as JSON, atomically (temporary file, fsync, rename)."""
        path = Path(path)
        with atomic_write(path, "w", encoding="ascii") as f:
            f.write(json.dumps(self.to_dict()))    # ASCII: non-ASCII characters are escaped
        return path

    @classmethod
    def load(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save_vocab_file(self, path):
        """Write BERT's vocab.txt (one token per line, in id order), atomically."""
        path = Path(path)
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in self._vocab))
        return path

    def __eq__(self, other):
        return isinstance(other, WordPieceTokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"strip_accents={self.strip_accents})")
