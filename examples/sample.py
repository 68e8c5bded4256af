"""Generate text from a checkpoint written by train_shakespeare.py.

    python examples/sample.py --ckpt=out-shakespeare/ckpt.safetensors --prompt="ROMEO:" \\
        --max_new_tokens=300 --temperature=0.8 --top_k=40 --seed=1

Rebuilds the model from the config stored in the checkpoint, loads its weights and tokenizer,
and prints the prompt with its continuation, then one JSON line with the settings used.
--dtype=float16 (or bfloat16; device cuda) runs the model's batched forward, the prompt's,
under tl.autocast: its matmuls in that dtype over the float32 weights. The batch-1 decode step
(generate/decode_step.py) reads the weights as they are stored, in float32.
"""
import dataclasses
import json

import tinygrad_llm as tl  # (first: it tunes the thread pools before NumPy loads)
from tinygrad_llm.generate import generate
from tinygrad_llm.train import OptionError, load_model, parse_args, run_main


@dataclasses.dataclass
class SampleArgs:
    ckpt: str = "out-shakespeare/ckpt.safetensors"   # the checkpoint to sample from
    prompt: str = "\n"               # the text the sample continues
    max_new_tokens: int = 500        # tokens to generate
    temperature: float = 0.8         # softmax temperature (0: greedy)
    top_k: int = 40                  # draw from the k likeliest tokens (none: all)
    seed: int = 0                    # seeds the sampling
    device: str = "cpu"              # "cpu" or "cuda"
    dtype: str = "float32"           # "float16" / "bfloat16": autocast's matmuls (device cuda)


def main(argv):
    (args,) = parse_args(argv, SampleArgs)
    problem = tl.amp.dtype_problem(args.dtype, args.device)
    if problem:
        raise OptionError(f"--dtype={args.dtype}: {problem}")
    model, tokenizer, record = load_model(args.ckpt)   # float, or quantized by quantize.py
    if tokenizer is None:
        raise ValueError(f"{args.ckpt}: not a train_shakespeare checkpoint (no tokenizer in its "
                         "record)")
    model.to(args.device).eval()
    prompt = tokenizer.encode(args.prompt)[None]
    with tl.autocast(args.dtype):
        out = generate(model, prompt, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, seed=args.seed, context_shift=True)
    text = tokenizer.decode(out[0].tolist())
    print(text)
    print(json.dumps({"checkpoint": args.ckpt, "step": record.get("step"),
                      "new_tokens": args.max_new_tokens, "temperature": args.temperature,
                      "top_k": args.top_k, "seed": args.seed}))
    return text


if __name__ == "__main__":
    run_main(main)
