"""Quantize a checkpoint: the size / perplexity / speed table, a sample from the quantized model,
and optionally a llama.cpp GGUF file.

    python examples/quantize.py                                   # the main job's model, q4_0
    python examples/quantize.py --ckpt=out-baseline/ckpt.safetensors --gguf=out-quant/m.gguf
    python examples/quantize.py --scheme=q4_0 --gptq               # GPTQ for the blocks

Reads a train_shakespeare.py checkpoint, measures the float model, quantizes every Linear, the
head and the token embeddings (`scheme`: int8, q8_0, q4_0, q4_1 or nf4; `gptq` calibrates the
blocks' layers on `calib_windows` windows of the training split first), measures again, prints
both rows, generates `max_new_tokens` from the quantized model, and writes it to
out_dir/ckpt.safetensors: a checkpoint whose record says how it was quantized, so sample.py and
chat.py load it. Perplexity and bits per byte are measured by the evaluation harness
(eval.loglikelihood_rolling) on the same held-out text for both: the first `eval_windows` blocks
of the validation split, read in windows of the block that advance by `eval_stride` tokens,
every token scored once; the perplexity's standard error is a bootstrap over those windows
(eval.bootstrap_stderr). One JSON line at the end.
"""
import dataclasses
import json
import os
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm.data import shakespeare, split  # noqa: E402
from tinygrad_llm.eval import bootstrap_stderr, loglikelihood_rolling  # noqa: E402
from tinygrad_llm.finetune import windows  # noqa: E402
from tinygrad_llm.generate import generate  # noqa: E402
from tinygrad_llm.quant import gptq, quantize, save_gguf  # noqa: E402
from tinygrad_llm.train import (OptionError, load_model, parse_args, run_main,  # noqa: E402
                                save_checkpoint)


@dataclasses.dataclass
class QuantizeArgs:
    ckpt: str = "out-shakespeare/ckpt.safetensors"   # the float model (train_shakespeare.py)
    scheme: str = "q4_0"          # int8, q8_0, q4_0, q4_1 or nf4
    group_size: int = 64          # NF4's group (32 / 64 / 128)
    gptq: bool = False            # calibrate the blocks' layers with GPTQ first
    calib_windows: int = 32       # GPTQ: windows of the training split to calibrate on
    eval_windows: int = 160       # held-out text: this many blocks of the validation split
    eval_stride: int = 0          # tokens each window adds (0: the block; less: more context)
    out_dir: str = "out-quant"    # where the quantized checkpoint (ckpt.safetensors) goes
    gguf: str = ""                # also write a llama.cpp file here (q8_0 / q4_0 / q4_1 / f32;
    #                               llama.cpp takes train_shakespeare.py --recipe=baseline models)
    prompt: str = "ROMEO:\n"      # the sample's prompt
    max_new_tokens: int = 200     # the sample's length, in tokens
    temperature: float = 0.8      # the sample's softmax temperature
    top_k: int = 40               # the sample draws from the k likeliest tokens
    seed: int = 0                 # seeds the sample


def decode_speed(model, tokens=64):
    prompt = np.arange(1, 9)[None] % model.config.vocab_size
    generate(model, prompt, 4, temperature=0)                           # compile and warm up
    t = time.perf_counter()
    generate(model, prompt, tokens, temperature=0, context_shift=True)
    return tokens / (time.perf_counter() - t)


def held_out_figures(model, tok, text, stride):
    """Perplexity, its bootstrap standard error over the rolling windows, and bits per byte."""
    r = loglikelihood_rolling(model, tok, text, stride=stride or None)
    nll, tokens = (np.array(c, dtype=np.float64) for c in zip(*r["windows"]))   # (W,) each
    stderr = bootstrap_stderr((nll, tokens), lambda a, t: np.exp(a.sum() / t.sum()))
    return {"val_ppl": round(r["perplexity"], 4), "val_ppl_stderr": round(stderr, 4),
            "val_bits_per_byte": round(r["bits_per_byte"], 4)}


def row(name, model, path, tok, text, stride):
    save_checkpoint(path, model)
    return {"model": name, "file_mb": round(os.path.getsize(path) / 1e6, 3),
            **held_out_figures(model, tok, text, stride),
            "tokens_per_s": round(decode_speed(model), 1)}


def main(argv):
    (args,) = parse_args(argv, QuantizeArgs)
    model, tok, record = load_model(args.ckpt)
    train_ids, val_ids = (np.asarray(a) for a in split(tok.encode(shakespeare()), 0.1))
    block = model.config.block_size
    if args.eval_windows < 1 or not 0 <= args.eval_stride <= block:
        raise OptionError(f"--eval_windows must be >= 1 and --eval_stride in [0, block_size="
                         f"{block}], got eval_windows={args.eval_windows}, "
                         f"eval_stride={args.eval_stride}")
    # the held-out text as text: the harness tokenises it itself and counts its bytes
    val_text = tok.decode([int(i) for i in val_ids[:args.eval_windows * block + 1]])
    out = os.path.join(args.out_dir, "ckpt.safetensors")
    float_row = row("float32", model, out, tok, val_text, args.eval_stride)
    if args.gptq:
        gptq(model, windows(train_ids, args.calib_windows, block, seed=2)[:, :-1], args.scheme,
             group_size=args.group_size)
    quantization = {"scheme": args.scheme, "group_size": args.group_size, "include_head": True,
                    "include_embeddings": True}
    quantize(model, **quantization)
    quant_row = row(args.scheme + (" (GPTQ)" if args.gptq else ""), model, out, tok, val_text,
                    args.eval_stride)
    save_checkpoint(out, model, record={**record, "quantization": quantization})
    print(f"{'model':<16}{'file MB':>10}{'val ppl':>10}{'± se':>8}{'bits/B':>8}{'tokens/s':>10}")
    for r in (float_row, quant_row):
        print(f"{r['model']:<16}{r['file_mb']:>10}{r['val_ppl']:>10}{r['val_ppl_stderr']:>8}"
              f"{r['val_bits_per_byte']:>8}{r['tokens_per_s']:>10}")
    sample = generate(model, tok.encode(args.prompt)[None], args.max_new_tokens,
                      temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                      context_shift=True)
    print("-" * 40)
    print(tok.decode(sample[0].tolist()))
    print("-" * 40)
    result = {"scheme": args.scheme, "gptq": args.gptq, "float32": float_row,
              "quantized": quant_row,
              "ppl_change_pct": round(100 * (quant_row["val_ppl"] / float_row["val_ppl"] - 1), 2),
              "size_ratio": round(quant_row["file_mb"] / float_row["file_mb"], 3),
              "checkpoint": out}
    if args.gguf:
        save_gguf(model, args.gguf, dtype=args.scheme, tokenizer=tok if hasattr(tok, "ranks")
                  else None)
        result["gguf"] = args.gguf
        result["gguf_mb"] = round(os.path.getsize(args.gguf) / 1e6, 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
