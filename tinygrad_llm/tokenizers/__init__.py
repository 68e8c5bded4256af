"""Tokenizers: text <-> integer ids. CharTokenizer (one id per character) for now; the
byte-level BPE trainer, the tiktoken adapter and the chat template come later.
"""
from .char import CharTokenizer

__all__ = ["CharTokenizer"]
