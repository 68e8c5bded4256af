"""Tokenizer speed: BPE training on tiny Shakespeare (ours: regex pre-tokenisation in Python plus
the Numba merge loop; Hugging Face `tokenizers`, Rust, when installed), and encoding throughput
(tiktoken over our ranks vs the pure-Python reference encoder).

    python bench/bench_tokenizer.py [--vocab_size=4096] [--repeats=3]

Prints one JSON object. Each framework trains in its own process (best of `repeats`), after one
warm-up call that loads Numba's cache, so both are measured warm.
"""
import json
import os
import subprocess
import sys
import time

OURS = r"""
import json, sys, time
from tinygrad_llm.data import shakespeare
from tinygrad_llm.tokenizers import BPETokenizer
text = shakespeare()
V, repeats = int(sys.argv[1]), int(sys.argv[2])
BPETokenizer.train(text[:10000], vocab_size=300)                     # load the compiled loop
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter(); tok = BPETokenizer.train(text, vocab_size=V)
    best = min(best, time.perf_counter() - t)
ids = tok.encode(text)
print(json.dumps({"train_s": round(best, 4), "vocab_size": tok.vocab_size,
                  "chars_per_token": round(len(text) / len(ids), 4)}))
"""

HF = r"""
import json, sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tinygrad_llm.data import shakespeare
text = shakespeare()
V, repeats = int(sys.argv[1]), int(sys.argv[2])
best = float("inf")
for _ in range(repeats + 1):                                         # the first is a warm-up
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=V, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t = time.perf_counter(); tok.train_from_iterator([text], trainer=trainer)
    best = min(best, time.perf_counter() - t)
ids = tok.encode(text).ids
print(json.dumps({"train_s": round(best, 4), "vocab_size": tok.get_vocab_size(),
                  "chars_per_token": round(len(text) / len(ids), 4)}))
"""


def child(code, *args):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=os.environ)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def encode_throughput(vocab_size):
    from tinygrad_llm.data import shakespeare
    from tinygrad_llm.tokenizers import BPETokenizer
    text = shakespeare()
    tok = BPETokenizer.train(text, vocab_size=vocab_size)
    out = {}
    for name, fn in (("tiktoken", tok.encode), ("reference", tok.encode_reference)):
        fn(text[:1000])
        t = time.perf_counter()
        fn(text)
        out[f"{name}_MB_per_s"] = round(len(text.encode()) / (time.perf_counter() - t) / 1e6, 2)
    return out


def main(argv):
    opts = dict(a[2:].split("=", 1) for a in argv)
    vocab_size, repeats = int(opts.get("vocab_size", 4096)), int(opts.get("repeats", 3))
    ours = child(OURS, vocab_size, repeats)
    result = {"vocab_size": vocab_size, "ours": ours}
    try:
        import tokenizers  # noqa: F401
        result["hf_tokenizers"] = hf = child(HF, vocab_size, repeats)
        if "train_s" in hf and "train_s" in ours:
            result["train_speedup_vs_hf"] = round(hf["train_s"] / ours["train_s"], 2)
    except ImportError:
        result["hf_tokenizers"] = "not installed"
    result["encode"] = encode_throughput(vocab_size)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
