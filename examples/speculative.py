"""Speculative decoding with two Shakespeare models: a tiny draft proposes tokens, the larger
target checks them, and the output is what the target alone would produce (token for token when
greedy; in distribution when sampling).

    python examples/speculative.py                      # trains the missing models first
    python examples/speculative.py --target=out-shakespeare/ckpt.safetensors --k=4 --temperature=0

The target is the main job's model (examples/train_shakespeare.py, out-shakespeare/: 4 layers,
192 dims); the draft is a 2-layer, 64-dim model trained on the same characters (out-draft/, about
30 s). Both are trained here when their checkpoints are missing. Prints the acceptance rate,
target passes per token and the wall-clock speed-up over plain cached decoding with the target
(best of `repeats` runs each), then one JSON line.

What limits the speed-up here: speculative decoding pays off when checking k + 1 tokens costs the
target about as much as making one, which holds when a step is bound by reading the weights from
memory (a large model). The main job's model fits in the CPU's caches, so its step is bound by
arithmetic and checking 4 tokens costs ~2.8x one step; the draft is then worth little more than
its acceptance rate pays for.
"""
import dataclasses
import json
import os
import time

import numpy as np

from tinygrad_llm.generate import generate, speculative_generate
from tinygrad_llm.train import ensure_checkpoint, load_model, parse_args, run_main

# trains a missing model: the main job's command line, without its sample
TRAIN = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_shakespeare.py"),
         "--sample_tokens=0", "--progress=false"]


@dataclasses.dataclass
class Args:
    target: str = "out-shakespeare/ckpt.safetensors"   # the large model (trained if missing)
    draft: str = "out-draft/ckpt.safetensors"          # the small model (trained if missing)
    prompt: str = "ROMEO:\n"     # the text both continue
    max_new_tokens: int = 120    # the char models hold 128 positions
    k: int = 3                   # tokens the draft proposes per target pass
    temperature: float = 0.0     # softmax temperature (0: greedy)
    top_k: int = None            # draw from the k likeliest tokens (none: all)
    seed: int = 0                # seeds the sampling
    draft_iters: int = 2000      # when the draft must be trained
    repeats: int = 3             # timed runs of each decoder (the best counts)
    target_iters: int = 2000     # when the target must be trained


def main(argv):
    (args,) = parse_args(argv, Args)
    ensure_checkpoint(args.target, [*TRAIN, f"--max_iters={args.target_iters}"])
    ensure_checkpoint(args.draft, [*TRAIN, "--n_layer=2", "--n_head=2", "--n_embd=64",
                                   f"--max_iters={args.draft_iters}"])
    target, tok, _ = load_model(args.target)
    draft, draft_tok, _ = load_model(args.draft)
    if tok.to_dict() != draft_tok.to_dict():
        raise ValueError(f"{args.target} and {args.draft} use different tokenizers")
    prompt = tok.encode(args.prompt)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, seed=args.seed)

    generate(target, prompt[None], 8, **sampling)                       # warm-up
    speculative_generate(target, draft, prompt, 8, k=args.k, **sampling)
    plain_s = spec_s = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        plain = generate(target, prompt[None], args.max_new_tokens, **sampling)
        plain_s = min(plain_s, time.perf_counter() - t)
        t = time.perf_counter()
        out, stats = speculative_generate(target, draft, prompt, args.max_new_tokens, k=args.k,
                                          **sampling)
        spec_s = min(spec_s, time.perf_counter() - t)
    print(tok.decode(out[0].tolist()))
    print("-" * 40)
    result = {"k": args.k, "temperature": args.temperature,
              "acceptance_rate": round(stats["acceptance_rate"], 3),
              "tokens_per_target_call": round(stats["tokens_per_target_call"], 2),
              "plain_tokens_per_s": round(args.max_new_tokens / plain_s, 1),
              "speculative_tokens_per_s": round((out.shape[1] - len(prompt)) / spec_s, 1),
              "speedup": round(plain_s / spec_s, 2),
              "target_parameters": target.num_parameters(),
              "draft_parameters": draft.num_parameters()}
    if args.temperature == 0:
        result["identical_to_target_greedy"] = bool(np.array_equal(out, plain))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
