"""Chat with a checkpoint in the terminal, keeping the KV cache for the whole conversation.

    python examples/chat.py --ckpt=out-sft/ckpt.safetensors --temperature=0.8 --top_k=40
    python examples/chat.py --ckpt=... --prompt="Who art thou?"        # one answer, then exit

The checkpoint's tokenizer must have the chat special tokens (tokenizers/chat.py,
CHAT_SPECIAL_TOKENS); the model should have been fine-tuned on chats rendered with that template.
One DecodeSession holds the conversation: each user turn feeds only its new tokens,
<|user|>message<|end|><|assistant|>, because the earlier turns, and the previous reply with its
<|end|>, are already in the cache. The reply streams to stdout as it is made and ends at the
template's stop token (or after max_new_tokens, when an <|end|> is fed to close the turn).

--dtype=float16 (or bfloat16; device cuda) runs the prompt's batched forward under tl.autocast
(its matmuls in that dtype over the float32 weights); the batch-1 decode step reads the weights
as stored, in float32.

Commands: /reset clears the conversation, /quit (or end of input) exits. At the end one JSON
line: turns, the replies, tokens generated, decode tokens/s, prefill tokens (total and per turn),
tokens each turn ran through the model (prefill, reply, a closing <|end|>; more after a context
shift). A script can hold a conversation by writing the user's lines to stdin and reading that
line (chat_speedrun.py does).
"""
import dataclasses
import json
import sys
import time

import tinygrad_llm as tl  # (first: it tunes the thread pools before NumPy loads)
from tinygrad_llm.generate import DecodeSession
from tinygrad_llm.tokenizers import ChatTemplate
from tinygrad_llm.train import CheckpointError, OptionError, load_model, parse_args, run_main

REPLACEMENT = "\ufffd"          # what decode gives for the bytes of an unfinished character


@dataclasses.dataclass
class ChatArgs:
    ckpt: str = "out-sft/ckpt.safetensors"   # a chat model (finetune_sft.py, dpo.py, ...)
    prompt: str = None            # one-shot mode: answer this message and exit
    system: str = None            # an optional system message opening the conversation
    max_new_tokens: int = 200     # the longest reply, in tokens
    temperature: float = 0.8      # softmax temperature (0: greedy)
    top_k: int = 40               # draw from the k likeliest tokens (none: all)
    top_p: float = None           # nucleus sampling: the smallest set holding this probability
    seed: int = 0                 # seeds the sampling
    device: str = "cpu"           # "cpu" or "cuda"
    dtype: str = "float32"        # "float16" / "bfloat16": autocast's matmuls (device cuda)


def load(args):
    """(model, tokenizer, template) from the checkpoint; SystemExit if it cannot chat."""
    try:
        model, tokenizer, _ = load_model(args.ckpt)   # float, or quantized by quantize.py
    except CheckpointError as err:
        raise SystemExit(str(err)) from None
    if tokenizer is None:
        raise SystemExit(f"{args.ckpt}: no tokenizer in its record")
    model.to(args.device).eval()
    try:
        template = ChatTemplate(tokenizer)
    except ValueError as err:
        raise SystemExit(f"{args.ckpt}: this checkpoint's tokenizer cannot render chats: "
                         f"{err}") from None
    return model, tokenizer, template


class Chat:
    """A conversation: the session, the template, and the running totals for the JSON line."""

    def __init__(self, model, tokenizer, template, args, out=sys.stdout):
        self.tokenizer, self.template, self.args, self.out = tokenizer, template, args, out
        # context_shift: a long conversation keeps going on its most recent half
        self.session = DecodeSession(model, seed=args.seed, context_shift=True,
                                     temperature=args.temperature, top_k=args.top_k,
                                     top_p=args.top_p)
        self.turns = self.generated = self.resets = self.closing = 0
        self.replies = []                   # the text of each reply
        self.prefill = []                   # tokens fed for each user turn
        self.added = []                     # tokens each turn ran through the model
        self.decode_s = 0.0

    def reset(self):
        self.session.reset()
        self.resets += 1

    def turn(self, message):
        """Feed the user's message, stream the reply; return the reply's text."""
        messages = [{"role": "user", "content": message}]
        if self.args.system and self.session.length == 0:
            messages.insert(0, {"role": "system", "content": self.args.system})
        ids, _ = self.template.render(messages, add_generation_prompt=True)
        start = self.session.tokens_fed
        self.session.feed(ids)
        self.prefill.append(len(ids))
        stops = set(self.template.stop_ids)
        reply, shown = [], ""
        self.out.write("assistant> ")
        self.out.flush()
        t0 = time.perf_counter()
        ended = False
        for token in self.session.generate(self.args.max_new_tokens, stop_ids=stops):
            self.generated += 1
            if token in stops:
                ended = True
                break
            reply.append(token)
            # decode the whole reply (a character may span tokens) and print the new part,
            # holding back a trailing unfinished character until its last byte arrives
            text = self.tokenizer.decode(reply)
            stable = text.rstrip(REPLACEMENT)
            if len(stable) > len(shown) and stable.startswith(shown):
                self.out.write(stable[len(shown):])
                self.out.flush()
                shown = stable
        self.decode_s += time.perf_counter() - t0
        text = self.tokenizer.decode(reply)
        self.out.write(text[len(shown):] + "\n")
        self.out.flush()
        if not ended:                       # cut off: close the turn as the template would
            self.session.feed([self.template.end_id])
            self.closing += 1
        self.added.append(self.session.tokens_fed - start)
        self.replies.append(text)
        self.turns += 1
        return text

    def summary(self):
        return {"turns": self.turns, "replies": self.replies, "tokens_generated": self.generated,
                "tokens_per_s": round(self.generated / self.decode_s, 2) if self.decode_s
                else None,
                "prefill_tokens": sum(self.prefill), "prefill_per_turn": self.prefill,
                "model_tokens_per_turn": self.added,
                "closing_end_tokens": self.closing, "resets": self.resets,
                "context_shifts": self.session.shifts, "cache_length": self.session.length}


def main(argv, stdin=sys.stdin, out=sys.stdout):
    (args,) = parse_args(argv, ChatArgs)
    problem = tl.amp.dtype_problem(args.dtype, args.device)
    if problem:
        raise OptionError(f"--dtype={args.dtype}: {problem}")
    with tl.autocast(args.dtype):               # the weights are cast once, for the whole chat
        return _converse(args, stdin, out)


def _converse(args, stdin, out):
    chat = Chat(*load(args), args, out=out)
    if args.prompt is not None:
        chat.turn(args.prompt)
    else:
        interactive = stdin.isatty()
        while True:
            if interactive:
                out.write("you> ")
                out.flush()
            line = stdin.readline()
            if not line:                    # end of input
                break
            message = line.rstrip("\n")
            if message.strip() == "/quit":
                break
            if message.strip() == "/reset":
                chat.reset()
                out.write("(conversation cleared)\n")
                continue
            if message.strip():
                chat.turn(message)
    summary = chat.summary()
    out.write(json.dumps(summary) + "\n")
    out.flush()
    return summary


if __name__ == "__main__":
    run_main(main)
