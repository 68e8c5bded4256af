"""Chat template: a conversation (a list of {"role", "content"} messages) as one id sequence.

Each message is its role's special token, the content's ids and an end-of-turn token:

    <|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>

A chat model is a language model trained on such sequences. Fine-tuning (SFT) reads the loss only
where the assistant speaks, so `render` also returns a mask that is True on each assistant
message's content and its <|end|> (the model must learn when to stop) and False on everything the
model is given (system and user turns, and the role markers). For generation, `render(...,
add_generation_prompt=True)` ends with <|assistant|>: the model writes the reply and stops by
emitting <|end|> (`stop_ids`).

Content is encoded with `encode_ordinary`, so a user who types "<|assistant|>" gets the letters,
not the role token: role tokens come only from the template.
"""
import numpy as np

__all__ = ["ChatTemplate", "CHAT_SPECIAL_TOKENS", "ROLES"]

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_TOKEN = "<|end|>"
# what a tokenizer trained for chat should reserve (BPETokenizer.train(special_tokens=...))
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", *ROLE_TOKENS.values(), END_TOKEN)


class ChatTemplate:
    """Renders conversations with a tokenizer that has the role and end special tokens."""

    def __init__(self, tokenizer, role_tokens=None, end_token=END_TOKEN):
        role_tokens = dict(ROLE_TOKENS if role_tokens is None else role_tokens)
        specials = getattr(tokenizer, "special_tokens", {})
        needed = [*role_tokens.values(), end_token]
        missing = [t for t in needed if t not in specials]
        if missing:
            raise ValueError(f"ChatTemplate: the tokenizer lacks the special tokens {missing} "
                             f"(it has {sorted(specials)}); train it with special_tokens="
                             f"CHAT_SPECIAL_TOKENS")
        self.tokenizer = tokenizer
        self.role_tokens, self.end_token = role_tokens, end_token
        self.role_ids = {r: specials[t] for r, t in role_tokens.items()}
        self.end_id = specials[end_token]

    @property
    def stop_ids(self):
        """Ids that end an assistant turn (for generate's stop tokens)."""
        return [self.end_id]

    def _check(self, messages):
        if not isinstance(messages, (list, tuple)):
            raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', "
                                 f"got {m!r}")
            if m["role"] not in self.role_ids:
                raise ValueError(f"messages[{i}]['role'] = {m['role']!r}; expected one of "
                                 f"{sorted(self.role_ids)}")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}]['content'] must be a str, got "
                                 f"{type(m.get('content')).__name__}")

    def render(self, messages, add_generation_prompt=False):
        """messages -> (ids, assistant_mask): (N,) int64 ids and (N,) bool, True on the tokens
        an SFT loss should learn (assistant content and its end token)."""
        self._check(messages)
        ids, mask = [], []
        for m in messages:
            content = [int(t) for t in self.tokenizer.encode_ordinary(m["content"])]
            learn = m["role"] == "assistant"
            ids += [self.role_ids[m["role"]], *content, self.end_id]
            mask += [False] + [learn] * (len(content) + 1)
        if add_generation_prompt:
            ids.append(self.role_ids["assistant"])
            mask.append(False)
        return np.array(ids, dtype=np.int64), np.array(mask, dtype=bool)

    def render_text(self, messages, add_generation_prompt=False):
        """The same sequence as text (what `render`'s ids decode to)."""
        self._check(messages)
        text = "".join(f"{self.role_tokens[m['role']]}{m['content']}{self.end_token}"
                       for m in messages)
        return text + (self.role_tokens["assistant"] if add_generation_prompt else "")

    def __repr__(self):
        return f"ChatTemplate(roles={sorted(self.role_ids)}, end={self.end_token!r})"
