"""Quantize a checkpoint: the size / perplexity / speed table, a sample from the quantized model,
and optionally a llama.cpp GGUF file.

    python examples/quantize.py                                   # the main job's model, q4_0
    python examples/quantize.py --scheme=q8_0 --gguf=out-quant/model-q8_0.gguf
    python examples/quantize.py --scheme=q4_0 --gptq=true          # GPTQ for the blocks

Reads a train_shakespeare.py checkpoint, measures the float model, quantizes every Linear, the
head and the token embeddings (`scheme`: int8, q8_0, q4_0, q4_1 or nf4; `gptq` calibrates the
blocks' layers on `calib_windows` windows of the training split first), measures again, prints
both rows, generates `max_new_tokens` from the quantized model, and writes it to `out`: a
checkpoint whose record says how it was quantized, so sample.py and chat.py load it. One JSON
line at the end.
"""
import dataclasses
import json
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm.data import shakespeare  # noqa: E402
from tinygrad_llm.data.batches import split  # noqa: E402
from tinygrad_llm.generate import generate  # noqa: E402
from tinygrad_llm.quant import gptq, quantize, save_gguf  # noqa: E402
from tinygrad_llm.tokenizers import tokenizer_from_dict  # noqa: E402
from tinygrad_llm.train import (load_model, parse_overrides, save_checkpoint,  # noqa: E402
                                split_overrides)
from tinygrad_llm.train import run_main  # noqa: E402


@dataclasses.dataclass
class QuantizeArgs:
    ckpt: str = "out-shakespeare/ckpt.safetensors"
    scheme: str = "q4_0"
    group_size: int = 64          # NF4's group (32 / 64 / 128)
    gptq: bool = False
    calib_windows: int = 32
    eval_windows: int = 160
    out: str = "out-quant/ckpt.safetensors"
    gguf: str = ""                # also write a llama.cpp file here (q8_0 / q4_0 / q4_1 / f32)
    prompt: str = "ROMEO:\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 40
    seed: int = 0


def windows(ids, n, length, seed):
    starts = np.random.default_rng(seed).integers(0, len(ids) - length - 1, n)
    return np.stack([ids[s:s + length + 1] for s in starts])


def perplexity(model, data):
    """exp of the mean next-token cross-entropy over the windows."""
    total = 0.0
    with tl.no_grad():
        for i in range(0, len(data), 16):
            x, y = data[i:i + 16, :-1], data[i:i + 16, 1:]
            _, loss = model(x, targets=y)
            total += float(loss.numpy()) * len(x)
    return float(np.exp(total / len(data)))


def decode_speed(model, tokens=64):
    prompt = np.arange(1, 9)[None] % model.config.vocab_size
    generate(model, prompt, 4, temperature=0)                           # compile and warm up
    t = time.perf_counter()
    generate(model, prompt, tokens, temperature=0)
    return tokens / (time.perf_counter() - t)


def row(name, model, path, data):
    save_checkpoint(path, model)
    return {"model": name, "file_mb": round(os.path.getsize(path) / 1e6, 3),
            "val_ppl": round(perplexity(model, data), 4),
            "tokens_per_s": round(decode_speed(model), 1)}


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), QuantizeArgs)
    args = QuantizeArgs(**kw)
    model, record = load_model(args.ckpt)
    tok = tokenizer_from_dict(record["tokenizer"])
    train_ids, val_ids = (np.asarray(a) for a in split(tok.encode(shakespeare()), 0.1))
    block = model.config.block_size
    val = windows(val_ids, args.eval_windows, block, seed=1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    float_row = row("float32", model, args.out, val)
    if args.gptq:
        gptq(model, windows(train_ids, args.calib_windows, block, seed=2)[:, :-1], args.scheme,
             group_size=args.group_size)
    quantization = {"scheme": args.scheme, "group_size": args.group_size, "include_head": True,
                    "include_embeddings": True}
    quantize(model, **quantization)
    quant_row = row(args.scheme + (" (GPTQ)" if args.gptq else ""), model, args.out, val)
    save_checkpoint(args.out, model, record={**record, "quantization": quantization})
    print(f"{'model':<16}{'file MB':>10}{'val ppl':>10}{'tokens/s':>10}")
    for r in (float_row, quant_row):
        print(f"{r['model']:<16}{r['file_mb']:>10}{r['val_ppl']:>10}{r['tokens_per_s']:>10}")
    out = generate(model, tok.encode(args.prompt)[None], args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print("-" * 40)
    print(tok.decode(out[0].tolist()))
    print("-" * 40)
    result = {"scheme": args.scheme, "gptq": args.gptq, "float32": float_row,
              "quantized": quant_row,
              "ppl_change_pct": round(100 * (quant_row["val_ppl"] / float_row["val_ppl"] - 1), 2),
              "size_ratio": round(quant_row["file_mb"] / float_row["file_mb"], 3),
              "checkpoint": args.out}
    if args.gguf:
        save_gguf(model, args.gguf, dtype=args.scheme, tokenizer=tok if hasattr(tok, "ranks")
                  else None)
        result["gguf"] = args.gguf
        result["gguf_mb"] = round(os.path.getsize(args.gguf) / 1e6, 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
