"""Text generation: the KV-cached decoder (generate.py, kv_cache.py; long-context caches in
long_caches.py: attention sinks, KIVI int4/int2, H2O eviction), the batch-1 decode step
(decode_step.py), token selection (sampling.py), a session that keeps its caches between calls
(session.py), beam search, speculative decoding, the loss of a long text streamed through
the caches (streaming.py), and many samples per prompt with pass@k, majority vote and best-of-n
(best_of.py). GPT.generate (models/gpt.py) calls generate() from here."""
from .beam import beam_search
from .best_of import best_of_n, majority_vote, pass_at_k, sample_n
from .generate import generate, prepare_prompts, stream
from .kv_cache import CacheList, KVCache, LinearAttentionState, cache_nbytes, make_caches
from .long_caches import H2OCache, QuantizedKVCache, SinkCache
from .sampling import SamplingConfig, apply_penalties, filter_logits, next_tokens, probabilities
from .session import DecodeSession
from .speculative import speculative_generate
from .streaming import recompute_nll, stream_nll

__all__ = ["generate", "stream", "speculative_generate", "beam_search", "prepare_prompts",
           "DecodeSession", "KVCache", "CacheList", "SinkCache", "QuantizedKVCache", "H2OCache",
           "LinearAttentionState", "make_caches", "cache_nbytes", "SamplingConfig",
           "apply_penalties", "filter_logits", "next_tokens", "probabilities", "stream_nll",
           "recompute_nll", "pass_at_k", "majority_vote", "best_of_n", "sample_n"]

