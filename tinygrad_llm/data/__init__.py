"""Data: corpora (tiny Shakespeare), memory-mapped token files, the train/val split and random
language-model batches.

Reading order: corpus.py (find, download, verify the text) -> tokens.py (ids on disk) ->
batches.py (split, get_batch, Batcher); files.py holds the atomic-write helpers they share.
"""
from .batches import Batcher, get_batch, get_rng_state, set_rng_state, split
from .corpus import (CACHE_ENV, DATA_ENV, SHAKESPEARE_SHA256, SHAKESPEARE_SIZE, SHAKESPEARE_URL,
                     default_cache_dir, download_file, read_text, sha256_file, shakespeare,
                     shakespeare_path)
from .tokens import TokenWriter, read_tokens, sidecar_path, token_file_info, write_tokens

__all__ = ["shakespeare", "shakespeare_path", "download_file", "read_text", "sha256_file",
           "default_cache_dir", "SHAKESPEARE_URL", "SHAKESPEARE_SHA256", "SHAKESPEARE_SIZE",
           "DATA_ENV", "CACHE_ENV",
           "write_tokens", "read_tokens", "TokenWriter", "token_file_info", "sidecar_path",
           "split", "get_batch", "Batcher", "get_rng_state", "set_rng_state"]
