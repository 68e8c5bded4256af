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
from tinygrad_llm.tokenizers import tokenizer_from_dict
from tinygrad_llm.train import OptionError, load_model, parse_overrides, split_overrides
from tinygrad_llm.train import run_main


@dataclasses.dataclass
class SampleArgs:
    ckpt: str = "out-shakespeare/ckpt.safetensors"
    prompt: str = "\n"
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int = 40
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"           # "float16" / "bfloat16": autocast's matmuls (device cuda)


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), SampleArgs)
    args = SampleArgs(**kw)
    problem = tl.amp.dtype_problem(args.dtype, args.device)
    if problem:
        raise OptionError(f"--dtype={args.dtype}: {problem}")
    model, record = load_model(args.ckpt)              # float, or quantized by quantize.py
    if "tokenizer" not in record:
        raise ValueError(f"{args.ckpt}: not a train_shakespeare checkpoint (no tokenizer in its "
                         "record)")
    model.to(args.device).eval()
    tokenizer = tokenizer_from_dict(record["tokenizer"])
    prompt = tokenizer.encode(args.prompt)[None]
    with tl.autocast(args.dtype):
        out = generate(model, prompt, args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, seed=args.seed)
    text = tokenizer.decode(out[0].tolist())
    print(text)
    print(json.dumps({"checkpoint": args.ckpt, "step": record.get("step"),
                      "new_tokens": args.max_new_tokens, "temperature": args.temperature,
                      "top_k": args.top_k, "seed": args.seed}))
    return text


if __name__ == "__main__":
    run_main(main)
