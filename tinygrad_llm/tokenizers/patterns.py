r"""Pre-tokenisation patterns: the regular expressions that cut text into pieces before BPE.

BPE never merges across a piece boundary, so the pattern decides what a token can be: GPT-2's keeps
a leading space with the word (" the"), splits letters from digits and punctuation, and keeps
English contractions ('s 't 're 've 'm 'll 'd) apart. cl100k (GPT-3.5/4) adds case-insensitive
contractions, digit runs of at most 3, and newlines kept with the whitespace before them.

The patterns use \p{L} (any letter), \p{N} (any number) and possessive quantifiers (?+, ++),
which Python's `re` lacks; the `regex` module (a dependency of tiktoken) runs them. Read left to
right, the first alternative that matches at a position wins:

GPT-2:   's|'t|...   contraction | optional space + letters | optional space + digits
         | optional space + other symbols | whitespace not followed by a non-space (so the last
         space of a run joins the next word) | any remaining whitespace
"""

__all__ = ["GPT2_PATTERN", "CL100K_PATTERN", "O200K_PATTERN"]

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

# o200k (GPT-4o): words are split at case changes (a run of upper-case letters, then lower-case),
# contractions stay attached to the word, and digit runs are cut every 3 as in cl100k.
O200K_PATTERN = "|".join([
    (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
     r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""),
    (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
     r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""),
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
