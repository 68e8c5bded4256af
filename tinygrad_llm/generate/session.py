"""A decoding session: one sequence whose KV caches live between calls (a chat, a REPL).

`generate()` starts from nothing on every call: it prefills the whole prompt, decodes, and throws
its caches away. A conversation keeps growing, so re-running every earlier turn before each reply
would cost O(history) per turn. A DecodeSession holds the caches (batch 1) instead:

    session = DecodeSession(model, temperature=0.8, top_k=40)
    session.feed(prompt_ids)                  # prefill: only these ids run through the model
    for tok in session.generate(100, stop_ids=[end_id]):
        print(tok)                            # each token is already in the cache when yielded
    session.feed(next_user_turn_ids)          # appended after the reply, no re-feeding

Every token a session yields is fed back before it is yielded (the stop token too), so the cache
always holds exactly the history `tokens`, and the last feed's logits predict what comes next:
generate(10) followed by generate(10) makes the same tokens as generate(20).

The window is the model's max positions (or a smaller `max_len`). A feed that would pass it
raises ValueError, unless the session was made with `context_shift=True`: then the caches are
rebuilt from the most recent half of the window plus the new ids (llama.cpp's context shift, as
generate.py does), which re-runs those kept tokens once and forgets everything older. With
`cache_implementation="sinks"` or `"window"` (generate/long_caches.py) the caches number the
positions themselves and a session goes on forever in bounded memory; "quantized" and "h2o"
compress or evict within the window. A long feed into a bounded cache runs in chunks of the
caches' prefill_chunk.

Sampling is sampling.py's (temperature 0 is greedy), on the model's device from a Philox
generator: only the sampled id comes back to the host. Penalties count the tokens fed since the
last reset or context shift (what the cache holds, for the dense cache).
"""
import numpy as np

from .. import backend
from ..random import Generator
from .decode_step import forward_logits, inference
from .generate import PAST_LIMIT_OPTIONS, check_cache_arguments, sequence_ids
from .kv_cache import make_caches
from .sampling import SamplingConfig, next_ids

__all__ = ["DecodeSession", "SAMPLING_KEYS"]

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                 "frequency_penalty", "presence_penalty")


def _sampling_config(settings):
    unknown = sorted(set(settings) - set(SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"DecodeSession: unknown sampling settings {unknown}; expected some of "
                        f"{list(SAMPLING_KEYS)}")
    return SamplingConfig(**settings)


class DecodeSession:
    """One sequence decoded incrementally with persistent KV caches.

    model: a GPT. max_len: the window in positions (default and maximum: the model's
    max_positions). seed: the sampler's Philox generator (`generator`, kept across generate
    calls; its get_state() / set_state() pair resumes the draws). context_shift:
    when a feed would pass max_len, keep the most recent half of the window instead of raising.
    cache_implementation, cache_config: make_caches' implementation ("sinks", "window",
    "quantized", "h2o"; None is the dense cache) and its arguments, e.g. {"window": 252}.
    **sampling: SamplingConfig's settings (temperature, top_k, top_p, min_p, penalties),
    overridable per generate call."""

    def __init__(self, model, max_len=None, seed=0, context_shift=False,
                 cache_implementation=None, cache_config=None, **sampling):
        limit = model.config.max_positions
        if max_len is None:
            max_len = limit
        if isinstance(max_len, bool) or int(max_len) != max_len or not 1 <= max_len <= limit:
            raise ValueError(f"DecodeSession: max_len must be an int in [1, {limit}] (the "
                             f"model's max positions), got {max_len!r}")
        self.model, self.max_len = model, int(max_len)
        self.context_shift = bool(context_shift)
        self.cache_implementation, self.cache_config = check_cache_arguments(
            "DecodeSession", cache_implementation, cache_config)
        self.sampling = dict(sampling)
        _sampling_config(self.sampling)                      # check the settings now
        self.generator = Generator(model.device, seed)
        self.tokens_fed = 0            # tokens run through the model (re-fed ones included)
        self.shifts = 0                # context shifts so far
        self.reset()

    # ---- state -----------------------------------------------------------------------------
    def reset(self):
        """Forget the sequence (fresh caches); the sampler's generator keeps its state."""
        self.caches = make_caches(self.model, 1, self.max_len,
                                  implementation=self.cache_implementation, **self.cache_config)
        self._tokens = []
        self._logits = None            # (V,) on the model's device

    @property
    def length(self):
        """Positions seen by the caches (the model's next offset; sinks and window hold fewer)."""
        return len(self._tokens)

    @property
    def tokens(self):
        """The ids fed since the last reset or shift, oldest first (an int64 array)."""
        return np.asarray(self._tokens, dtype=np.int64)

    @property
    def logits(self):
        """(V,) float64 host copy of the logits predicting the next token (None before the first
        feed)."""
        return None if self._logits is None else backend.to_numpy(self._logits).astype(np.float64)

    # ---- feeding ---------------------------------------------------------------------------
    def _run(self, ids):
        """Append ids to the caches at the current offset; keep the last position's logits on
        the device."""
        chunk = self.caches.prefill_chunk or len(ids)     # a bounded cache: a chunk at a time
        with inference(self.model):
            for start in range(0, len(ids), chunk):
                logits = forward_logits(self.model, ids[start:start + chunk], self.caches,
                                        len(self._tokens) + start)
        self._tokens += ids
        self.tokens_fed += len(ids)
        self._logits = logits[-1]

    def feed(self, ids):
        """Append ids ((T,) or (1, T) ints) to the sequence, running only them through the
        model. Returns the (V,) float64 logits of the last position (a host copy). ValueError
        when the window would overflow (unless context_shift, which rebuilds from the most recent
        half)."""
        self._feed(sequence_ids("DecodeSession.feed", ids, self.model.config.vocab_size)
                   .tolist())
        return self.logits

    def _feed(self, ids):
        """feed() without the checks and without copying the logits to the host."""
        if self.length + len(ids) > self.max_len and not self.caches.positions_in_cache:
            if not self.context_shift or len(ids) > self.max_len:
                raise ValueError(
                    f"DecodeSession.feed: {self.length} tokens in the cache + {len(ids)} new "
                    f"exceed max_len={self.max_len} (the model's window); call reset(), feed "
                    f"fewer tokens, or make the session with {PAST_LIMIT_OPTIONS}")
            # context shift: keep the most recent half of the window (fewer if ids need room)
            keep = min(self.max_len // 2, self.max_len - len(ids), self.length)
            kept = self._tokens[self.length - keep:]
            self.reset()
            self.shifts += 1
            ids = kept + ids
        self._run(ids)

    # ---- decoding --------------------------------------------------------------------------
    def generate(self, max_new_tokens, stop_ids=(), **sampling):
        """Yield up to max_new_tokens ints, each sampled from the current logits and fed back
        before it is yielded; stops after yielding one of stop_ids. **sampling overrides the
        session's settings for this call. Needs a prior feed (the prompt)."""
        if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens \
                or max_new_tokens < 0:
            raise ValueError(f"DecodeSession.generate: max_new_tokens must be a non-negative "
                             f"int, got {max_new_tokens!r}")
        if self._logits is None:
            raise ValueError("DecodeSession.generate: nothing to continue; feed() a prompt first")
        config = _sampling_config({**self.sampling, **sampling})
        stops = {int(stop_ids)} if np.isscalar(stop_ids) else {int(s) for s in stop_ids}
        return self._decode(int(max_new_tokens), config, stops)

    def _decode(self, max_new_tokens, config, stops):
        # (a separate generator so that generate's argument errors raise at the call)
        vocab = self.model.config.vocab_size
        xp = backend.xp_for(self.model.device)
        for _ in range(max_new_tokens):
            counts = None
            if config.penalised:          # what the cache holds (a context shift forgets)
                tokens = backend.to_device(self.tokens, self.model.device)
                counts = xp.bincount(tokens, minlength=vocab)[None]
            ids = next_ids(self._logits[None], config, self.generator, counts)
            token = int(backend.to_numpy(ids)[0])           # the one read per token
            self._feed([token])
            yield token
            if token in stops:
                return
