"""Train a character-level GPT on tiny Shakespeare, then write a sample.

    python examples/train_shakespeare.py                     # the default: a few minutes on a CPU
    python examples/train_shakespeare.py --recipe=baseline   # plain GPT-2, AdamW (GGUF-ready)
    python examples/train_shakespeare.py --preset=llama --n_layer=6 --max_iters=3000
    python examples/train_shakespeare.py --resume            # continue from out_dir's checkpoint
    python examples/train_shakespeare.py --tokenizer=bpe --vocab_size=1024   # byte-level BPE
    python examples/train_shakespeare.py --device=cuda --dtype=float16       # mixed precision
    python examples/train_shakespeare.py --device=cuda --tf32                # TF32 matmuls
    python examples/train_shakespeare.py --recipe=baseline --optimizer=muon  # one piece alone
    mpiexec -n 2 python examples/train_shakespeare.py --ddp=true             # 2 ranks (mpi extra)
    mpiexec -n 2 python examples/train_shakespeare.py --ddp=true --zero=true # ZeRO-1 optimizer

Follows nanoGPT's train.py order: configuration, data, model, optimizer, loop (with evaluation
and checkpoints), sample, and a final JSON line with the headline numbers (train_flops: the
training FLOPs as bench/bench_train.py counts them, 6 per parameter per token plus attention's
products, plus Muon's Newton-Schulz products). Every field of RunArgs, TrainConfig and GPTConfig
can be overridden with --key=value (--help lists them), on top of the recipe's values.

The recipe: "speedrun" (the default) lays tinygrad_llm.train.recipes' SPEEDRUN fields under the
options (Muon, warmup-stable-decay, an untied head, RoPE, QK-norm, ReLU^2, soft-capped logits;
issue 27, each piece ablated by examples/speedrun.py) with 1500 steps, 75 of warmup: Muon's
Newton-Schulz products make a step ~1.2x the FLOPs, so 1500 steps cost 4.4e13 against the
baseline's 4.9e13 for 2000, and, at ~1.3x the baseline's step time, less wall time (README:
452 s against 504 s, validation loss 1.497 against 1.554). "baseline" is the plain GPT-2 this
script trained before (AdamW, warmup + cosine, 2000 steps, learned positions, a tied head,
GELU): the model llama.cpp's GGUF, Hugging Face's GPT-2 layout and the fused decoder all take.
"""
import dataclasses
import json
import math
import os
import time

import tinygrad_llm as tl
from tinygrad_llm.data import shakespeare, split
from tinygrad_llm.generate import generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import Muon
from tinygrad_llm.tokenizers import CHAT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer
from tinygrad_llm.train import (OptionError, TrainConfig, Trainer, build_config,
                                load_checkpoint, parse_overrides, run_main, split_overrides)
from tinygrad_llm.train.recipes import SPEEDRUN_MODEL, SPEEDRUN_TRAIN
from tinygrad_llm.train.scaling import train_flops_per_token


@dataclasses.dataclass
class RunArgs:
    preset: str = "gpt2"         # the architecture's defaults: "gpt2" or "llama"
    recipe: str = "speedrun"     # "speedrun" (Muon, WSD, RoPE, QK-norm, ...) or "baseline"
    device: str = "cpu"          # "cpu" or "cuda"
    data: str = None             # path to the text (none: tiny Shakespeare)
    resume: bool = False         # continue from out_dir's checkpoint
    tokenizer: str = "char"      # "char", or "bpe" (trained on the text, cached on disk)
    vocab_size: int = 1024       # the BPE vocabulary (bytes + merges + <|endoftext|>)
    chat_tokens: bool = False    # BPE: also reserve the chat template's special tokens
    tokenizer_file: str = None   # BPE: a saved BPETokenizer (.json) instead of training one
    sample_tokens: int = 500     # the sample written after training (0: none)
    temperature: float = 0.8     # the sample's softmax temperature
    top_k: int = 40              # the sample draws from the k likeliest tokens
    tf32: bool = False           # float32 matmuls on TF32 tensor cores (a GPU; no-op on the CPU)


# The baseline model: a small GPT-2 over characters, sized so that a 2-core CPU trains it in a few
# minutes (validation loss ~1.55); the recipe changes it. Its block_size is the training block.
MODEL_DEFAULTS = dict(n_layer=4, n_head=4, n_embd=192, dropout=0.0, bias=False)
TRAIN_DEFAULTS = dict(batch_size=16, block_size=128, max_iters=2000, eval_interval=500,
                      eval_iters=20, learning_rate=2e-3, min_lr=2e-4, warmup_iters=100,
                      weight_decay=0.1, beta2=0.99, grad_clip=1.0, out_dir="out-shakespeare")
# recipe -> (TrainConfig, GPTConfig) fields over the baseline, under the command line's options
RECIPES = {"speedrun": ({**SPEEDRUN_TRAIN, "max_iters": 1500, "warmup_iters": 75}, SPEEDRUN_MODEL),
           "baseline": ({}, {})}


def main(argv):
    overrides = parse_overrides(argv)
    recipe = overrides.get("recipe") or RunArgs.recipe
    if recipe not in RECIPES:
        raise OptionError(f"--recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}")
    recipe_train, recipe_model = RECIPES[recipe]
    run_kw, train_kw, model_kw = split_overrides(
        overrides, RunArgs, TrainConfig, GPTConfig,
        defaults={TrainConfig: {**TRAIN_DEFAULTS, **recipe_train},
                  GPTConfig: {**MODEL_DEFAULTS, **recipe_model}})
    run = RunArgs(**run_kw)
    train_config = build_config(TrainConfig, **train_kw)
    # --dtype=float16 / bfloat16: matmuls under tl.autocast, float32 master weights (GPU only)
    problem = tl.amp.dtype_problem(train_config.dtype, run.device)
    if problem:
        raise OptionError(f"--dtype={train_config.dtype}: {problem}")
    if run.tf32:
        tl.backend.allow_tf32(True)
    tl.manual_seed(train_config.seed)

    # data: tiny Shakespeare as characters or BPE tokens, 90% train / 10% val
    text = shakespeare(run.data)
    if run.tokenizer == "char":
        tokenizer = CharTokenizer.from_text(text)
    elif run.tokenizer == "bpe" and run.tokenizer_file:
        tokenizer = BPETokenizer.load(run.tokenizer_file)
    elif run.tokenizer == "bpe":
        specials = ("<|endoftext|>",) + (tuple(CHAT_SPECIAL_TOKENS) if run.chat_tokens else ())
        tokenizer = BPETokenizer.cached(text, run.vocab_size, special_tokens=specials)
    else:
        raise ValueError(f"--tokenizer must be 'char' or 'bpe', got {run.tokenizer!r}")
    train_ids, val_ids = split(tokenizer.encode(text), 0.1)
    # loss per token -> bits per character, so char and BPE runs compare
    bits_per_nat_token = len(val_ids) / len(tokenizer.decode(val_ids)) / math.log(2)

    # model
    model_kw = {**model_kw, "block_size": train_config.block_size}
    config = build_config(GPTConfig.preset, run.preset, vocab_size=tokenizer.vocab_size,
                          **model_kw)
    model = GPT(config).to(run.device)

    # optimizer: AdamW with no decay on biases and norm weights (--optimizer=muon: Muon for the
    # blocks' matrices; --embed_lr / --head_lr: those groups' own peak learning rates)
    optimizer, lr_scales = train_config.optimizer_for(model)
    # --ddp=true: the Trainer joins the mpiexec launch's ranks (rank 0's weights everywhere,
    # each rank its rows of every batch); rank 0 alone prints, samples and writes checkpoints
    trainer = Trainer(model, optimizer, train_ids, val_ids, train_config, lr_scales=lr_scales,
                      record={"model_config": config.to_dict(),
                              "tokenizer": tokenizer.to_dict(), "preset": run.preset})
    say = print if trainer.rank == 0 else (lambda *args: None)
    say(f"{run.preset} model: {model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {tokenizer.vocab_size}, device {run.device}"
        + (f", {trainer.world_size} ranks" if train_config.ddp else ""))
    if run.resume:
        _check_resume(trainer.ckpt_path, config)
        trainer.load(trainer.ckpt_path)
        say(f"resumed from {trainer.ckpt_path} at step {trainer.step}")

    # the loop
    start = time.perf_counter()
    last = trainer.fit()
    wall = time.perf_counter() - start
    if trainer.rank != 0:
        return None

    # a sample from the trained model
    prompt = tokenizer.encode("\n")[None]
    with tl.autocast(train_config.dtype):
        out = generate(model, prompt, run.sample_tokens, temperature=run.temperature,
                       top_k=run.top_k, seed=train_config.seed, context_shift=True)
    print("-" * 40)
    print(tokenizer.decode(out[0].tolist()))
    print("-" * 40)
    result = {"val_loss": round(last["val_loss"], 4) if last else None,
              "val_bpc": round(last["val_loss"] * bits_per_nat_token, 4) if last else None,
              "tokenizer": run.tokenizer, "vocab_size": tokenizer.vocab_size,
              "train_loss": round(last["train_loss"], 4) if last else None,
              "steps": trainer.step, "wall_s": round(wall, 1),
              "train_flops": float(f"{train_flops(trainer, config):.4g}"),
              "parameters": model.num_parameters(), "dtype": train_config.dtype,
              "checkpoint": trainer.ckpt_path if train_config.checkpoint else None}
    print(json.dumps(result))
    return result


def train_flops(trainer, config):
    """The training FLOPs of the steps done, as bench_train counts them: per token, 6 per
    parameter and the attention products over the whole block (train_flops_per_token, "full");
    per step, Muon's Newton-Schulz products."""
    per_token = train_flops_per_token(config, config.block_size, context="full")
    per_step = trainer.optimizer.flops_per_step() if isinstance(trainer.optimizer, Muon) else 0
    return per_token * trainer.tokens_seen() + per_step * trainer.step


def _check_resume(path, config):
    """A resume must not silently change the model: fields given on the command line that differ
    from the checkpoint's raise, naming them."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    _, _, record = load_checkpoint(path)
    saved = record.get("model_config", {})
    conflicts = [f"{k} (checkpoint {saved[k]!r}, command line {v!r})"
                 for k, v in config.to_dict().items() if k in saved and saved[k] != v]
    if conflicts:
        raise ValueError("--resume: the command line conflicts with the checkpoint's model "
                         "config: " + "; ".join(conflicts))


if __name__ == "__main__":
    run_main(main)
