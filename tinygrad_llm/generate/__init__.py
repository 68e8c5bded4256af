"""Text generation: the KV-cached decoder (generate.py, kv_cache.py), token selection
(sampling.py), beam search and speculative decoding."""
from ..models.gpt import GPT as _GPT
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


def _generate_method(self, idx, max_new_tokens, **kwargs):
    """model.generate(idx, max_new_tokens, ...): generate(model, ...), as transformers spells it."""
    return generate(self, idx, max_new_tokens, **kwargs)


# Registered from here, not defined in models/gpt.py, so that models/ stays below generate/ (the
# package imports generate at start-up, so every GPT has the method).
_GPT.generate = _generate_method
