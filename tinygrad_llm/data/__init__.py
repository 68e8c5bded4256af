"""Data: corpora (tiny Shakespeare), memory-mapped token files, the train/val split and random
language-model batches.

Reading order: corpus.py (find, download, verify the text) -> tokens.py (ids on disk) ->
batches.py (split, get_batch, Batcher) -> streams.py (StreamBatcher: consecutive segments for
a model with memory); files.py holds the atomic-write helpers they share. passkey.py: the
passkey-retrieval texts (Mohtashami & Jaggi, 2023) that long-context studies score. dedup.py:
exact and near-duplicate (MinHash + LSH) deduplication of a corpus of documents.
"""
from .batches import Batcher, get_batch, get_rng_state, set_rng_state, split
from .corpus import (CACHE_ENV, DATA_ENV, SHAKESPEARE_SHA256, SHAKESPEARE_SIZE, SHAKESPEARE_URL,
                     default_cache_dir, download_file, read_text, sha256_file, shakespeare,
                     shakespeare_path)
from .dedup import (DedupResult, candidate_probability, choose_bands, dedup_exact, dedup_near,
                    estimate_jaccard, exact_hash, exact_jaccard, lsh_candidates,
                    minhash_signatures, shingle_hashes, shingles)
from .passkey import (FILLER, INTRO, KEY_SENTENCE, PASSKEY_PATTERN, QUESTION, filler_for_length,
                      key_matches, passkey_accuracy, passkey_batch, passkey_text,
                      passkey_training_text)
from .streams import StreamBatcher
from .tokens import TokenWriter, read_tokens, sidecar_path, token_file_info, write_tokens

__all__ = ["shakespeare", "shakespeare_path", "download_file", "read_text", "sha256_file",
           "default_cache_dir", "SHAKESPEARE_URL", "SHAKESPEARE_SHA256", "SHAKESPEARE_SIZE",
           "DATA_ENV", "CACHE_ENV",
           "write_tokens", "read_tokens", "TokenWriter", "token_file_info", "sidecar_path",
           "split", "get_batch", "Batcher", "get_rng_state", "set_rng_state", "StreamBatcher",
           "passkey_text", "filler_for_length", "passkey_training_text", "passkey_batch",
           "key_matches", "passkey_accuracy", "PASSKEY_PATTERN", "INTRO", "FILLER",
           "KEY_SENTENCE", "QUESTION",
           "dedup_exact", "dedup_near", "DedupResult", "exact_hash", "shingles",
           "shingle_hashes", "exact_jaccard", "minhash_signatures", "estimate_jaccard",
           "candidate_probability", "choose_bands", "lsh_candidates"]
