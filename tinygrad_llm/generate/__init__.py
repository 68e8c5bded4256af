"""Text generation: the KV-cached decoder (generate.py, kv_cache.py), the batch-1 decode step
(decode_step.py), token selection (sampling.py), a session that keeps its caches between calls
(session.py), beam search and speculative decoding. GPT.generate (models/gpt.py) calls generate()
from here."""
from .beam import beam_search
from .generate import generate, prepare_prompts, stream
from .kv_cache import KVCache, LinearAttentionState, cache_nbytes, make_caches
from .sampling import SamplingConfig, apply_penalties, filter_logits, next_tokens, probabilities
from .session import DecodeSession
from .speculative import speculative_generate

__all__ = ["generate", "stream", "speculative_generate", "beam_search", "prepare_prompts",
           "DecodeSession", "KVCache",
           "LinearAttentionState", "make_caches", "cache_nbytes", "SamplingConfig",
           "apply_penalties", "filter_logits", "next_tokens", "probabilities"]

