"""Text generation: the KV-cached decoder (generate.py, kv_cache.py), token selection
(sampling.py), beam search and speculative decoding."""
from .generate import generate, prepare_prompts, stream
from .kv_cache import KVCache, LinearAttentionState, cache_nbytes, make_caches
from .sampling import SamplingConfig, apply_penalties, filter_logits, next_tokens, probabilities
from .speculative import speculative_generate

__all__ = ["generate", "stream", "speculative_generate", "prepare_prompts", "KVCache", "LinearAttentionState",
           "make_caches", "cache_nbytes", "SamplingConfig", "apply_penalties", "filter_logits",
           "next_tokens", "probabilities"]
