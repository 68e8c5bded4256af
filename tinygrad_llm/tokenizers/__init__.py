"""Tokenizers: text <-> integer ids.

char.py: one id per character. bpe.py: byte-level BPE (trainer, tiktoken encoding, a reference
encoder); its fast trainer is kernels/cpu/bpe.py. patterns.py: the pre-tokenisation regexes.
chat.py: conversations rendered with role tokens, and the assistant mask for fine-tuning.
"""
from .bpe import ENDOFTEXT, BPETokenizer, bpe_piece
from .char import CharTokenizer
from .chat import CHAT_SPECIAL_TOKENS, ChatTemplate
from .patterns import CL100K_PATTERN, GPT2_PATTERN

__all__ = ["CharTokenizer", "BPETokenizer", "bpe_piece", "ENDOFTEXT", "GPT2_PATTERN",
           "CL100K_PATTERN", "ChatTemplate", "CHAT_SPECIAL_TOKENS", "tokenizer_from_dict"]

_BY_TYPE = {"char": CharTokenizer, "bpe": BPETokenizer}


def tokenizer_from_dict(d):
    """Rebuild a tokenizer from its to_dict() (as stored in a checkpoint's record)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in _BY_TYPE:
        raise ValueError(f"tokenizer dict: type must be one of {sorted(_BY_TYPE)}, got {kind!r}")
    return _BY_TYPE[kind].from_dict(d)
