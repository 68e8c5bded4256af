"""Generate text from a checkpoint written by train_shakespeare.py.

    python examples/sample.py --ckpt=out-shakespeare/ckpt.safetensors --prompt="ROMEO:" \\
        --max_new_tokens=300 --temperature=0.8 --top_k=40 --seed=1

Rebuilds the model from the config stored in the checkpoint, loads its weights and tokenizer,
and prints the prompt with its continuation, then one JSON line with the settings used.
"""
import dataclasses
import json

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
from tinygrad_llm.generate import generate
from tinygrad_llm.tokenizers import tokenizer_from_dict
from tinygrad_llm.train import load_model, parse_overrides, split_overrides
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


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), SampleArgs)
    args = SampleArgs(**kw)
    model, record = load_model(args.ckpt)              # float, or quantized by quantize.py
    if "tokenizer" not in record:
        raise ValueError(f"{args.ckpt}: not a train_shakespeare checkpoint (no tokenizer in its "
                         "record)")
    model.to(args.device).eval()
    tokenizer = tokenizer_from_dict(record["tokenizer"])
    prompt = tokenizer.encode(args.prompt)[None]
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
