"""Tokenizers: text <-> integer ids.

char.py: one id per character. bpe.py: byte-level BPE (trainer, tiktoken encoding, a reference
encoder); its fast trainer is kernels/cpu/bpe.py. patterns.py: the pre-tokenisation regexes.
"""
from .bpe import ENDOFTEXT, BPETokenizer, bpe_piece
from .char import CharTokenizer
from .patterns import CL100K_PATTERN, GPT2_PATTERN

__all__ = ["CharTokenizer", "BPETokenizer", "bpe_piece", "ENDOFTEXT", "GPT2_PATTERN",
           "CL100K_PATTERN"]
