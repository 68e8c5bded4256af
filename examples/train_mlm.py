"""Pre-train a small BERT-style Encoder with masked language modelling on tiny Shakespeare, over a
WordPiece vocabulary trained on the same text.

    python examples/train_mlm.py                          # the default: a few minutes on a CPU
    python examples/train_mlm.py --vocab_size=4000 --max_iters=1000 --n_layer=4

Order: configuration, tokenizer (WordPiece, trained here), data (lines packed into sequences of
block_size tokens: [CLS] line [SEP] line [SEP] ... [PAD]...), model (tinygrad_llm.models.Encoder),
AdamW with warmup and cosine decay, the loop (the Trainer, with a batch function that corrupts
fresh rows each step), and masked-token accuracy on held-out sequences before and after. BERT's
corruption (Devlin et al., 2019): 15% of the real tokens are chosen, of those 80% become [MASK],
10% a random token, 10% stay; the loss is read at the chosen positions. With --out_dir=DIR the
encoder is saved to DIR/ckpt.safetensors (the record holds its config and the WordPiece
vocabulary, so examples/classify.py can rebuild both). The last line of stdout is one JSON
object with the headline numbers.

    python examples/train_mlm.py --out_dir=out-mlm        # keep the encoder
"""
import dataclasses
import json
import os
import time

import numpy as np

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm.data import shakespeare
from tinygrad_llm.models import Encoder, GPTConfig, mask_tokens
from tinygrad_llm.optim import param_groups_for_weight_decay
from tinygrad_llm.tokenizers import WordPieceTokenizer
from tinygrad_llm.train import (TrainConfig, Trainer, build_config, parse_overrides, run_main,
                                save_checkpoint, split_overrides)


@dataclasses.dataclass
class MLMArgs:
    data: str = None              # path to the text (none: tiny Shakespeare)
    text_chars: int = 0           # use only the first text_chars characters (0: all)
    vocab_size: int = 2000        # the WordPiece vocabulary
    # The likelihood score count(ab) / (count(a) count(b)) favours rare pairs that always occur
    # together; with min_frequency=2 a 2000-token vocabulary on this corpus is spent on rare
    # names and common words stay split into letters. 50 keeps merges to pairs seen 50+ times.
    min_frequency: int = 50       # WordPiece merges only pairs seen this often
    mask_prob: float = 0.15       # the fraction of real tokens chosen for corruption
    eval_batches: int = 8         # held-out batches for the masked-token accuracy
    val_fraction: float = 0.1     # the rows held out
    device: str = "cpu"           # "cpu" or "cuda"


MODEL_DEFAULTS = dict(n_layer=2, n_head=4, n_embd=128, dropout=0.0)
# block_size: tokens per packed row; out_dir none: the encoder is not saved
TRAIN_DEFAULTS = dict(block_size=64, batch_size=32, max_iters=1500, learning_rate=1e-3,
                      min_lr=1e-4, warmup_iters=100, weight_decay=0.01, beta2=0.999,
                      grad_clip=1.0, out_dir=None)


def pack_lines(lines_ids, block_size, cls_id, sep_id, pad_id):
    """Greedily pack lines (lists of ids) into rows [CLS] l1 [SEP] l2 [SEP] ... [PAD] ... of
    block_size tokens; a line longer than block_size - 2 is cut. Returns ids (N, T) int64 and
    padding_mask (N, T) bool (True = real token)."""
    rows, row = [], [cls_id]
    for ids in lines_ids:
        ids = ids[:block_size - 2]
        if len(row) + len(ids) + 1 > block_size:
            rows.append(row)
            row = [cls_id]
        row += ids + [sep_id]
    if len(row) > 1:
        rows.append(row)
    out = np.full((len(rows), block_size), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, out != pad_id


def masked_accuracy(model, ids, padding_mask, tokenizer, mask_prob, batch_size, rng):
    """(mean MLM loss, accuracy of the argmax at the corrupted positions) over held-out rows.
    The same rng seed gives the same corruption, so before/after numbers are comparable."""
    losses, hits, total = [], 0, 0
    with tl.no_grad():
        for start in range(0, len(ids), batch_size):
            rows = slice(start, start + batch_size)
            idx, mask = ids[rows], padding_mask[rows]
            inputs, labels = corrupt(idx, tokenizer, mask_prob, rng)
            logits = model.mlm_logits(inputs, mask)               # (B, T, V)
            chosen = labels != -100
            pred = logits.numpy().argmax(axis=-1)
            hits += int((pred[chosen] == labels[chosen]).sum())
            total += int(chosen.sum())
            losses.append(F.cross_entropy(logits, labels).item())
    return float(np.mean(losses)), hits / max(total, 1)


def corrupt(idx, tokenizer, mask_prob, rng):
    return mask_tokens(idx, tokenizer.mask_id, tokenizer.vocab_size, p=mask_prob, rng=rng,
                       special_ids=[tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id])


def main(argv):
    args_kw, train_kw, model_kw = split_overrides(
        parse_overrides(argv), MLMArgs, TrainConfig, GPTConfig,
        defaults={TrainConfig: TRAIN_DEFAULTS, GPTConfig: MODEL_DEFAULTS})
    args, train = build_config(MLMArgs, **args_kw), build_config(TrainConfig, **train_kw)
    tl.manual_seed(train.seed)
    start = time.perf_counter()

    # tokenizer: WordPiece trained on the corpus itself
    text = shakespeare(args.data)
    if args.text_chars:
        text = text[:args.text_chars]
    tokenizer = WordPieceTokenizer.train(text, vocab_size=args.vocab_size,
                                         min_frequency=args.min_frequency)
    tokenizer_s = time.perf_counter() - start

    # data: non-empty lines packed into rows; the last val_fraction of rows held out
    lines = [tokenizer.encode(line) for line in text.split("\n") if line.strip()]
    ids, padding_mask = pack_lines(lines, train.block_size, tokenizer.cls_id, tokenizer.sep_id,
                                   tokenizer.pad_id)
    n_val = max(1, int(len(ids) * args.val_fraction))
    train_ids, train_mask = ids[:-n_val], padding_mask[:-n_val]
    val_ids = ids[-n_val:][:args.eval_batches * train.batch_size]
    val_mask = padding_mask[-n_val:][:args.eval_batches * train.batch_size]
    print(f"WordPiece: {tokenizer.vocab_size} tokens in {tokenizer_s:.1f}s; {len(ids)} rows of "
          f"{train.block_size} tokens ({padding_mask.mean():.0%} real); e.g. "
          f"{tokenizer.tokenize(text[:60])}")

    # model: a small bidirectional encoder
    config = build_config(GPTConfig.preset, "gpt2", vocab_size=tokenizer.vocab_size,
                          block_size=train.block_size, **model_kw)
    model = Encoder(config).to(args.device)
    optimizer = train.adamw(param_groups_for_weight_decay(model, train.weight_decay))
    print(f"Encoder: {model.num_parameters() / 1e6:.2f}M parameters")

    def evaluate():
        return masked_accuracy(model, val_ids, val_mask, tokenizer, args.mask_prob,
                               train.batch_size, np.random.default_rng(train.seed + 1))

    loss_start, acc_start = evaluate()
    print(f"before: held-out MLM loss {loss_start:.3f}, masked accuracy {acc_start:.3f}")

    # the loop: random rows, fresh corruption each step
    def batch_fn(data, rng):
        ids, mask = data
        rows = rng.integers(0, len(ids), train.batch_size)
        inputs, labels = corrupt(ids[rows], tokenizer, args.mask_prob, rng)
        return inputs, labels, mask[rows]

    trainer = Trainer(model, optimizer, (train_ids, train_mask), None, train,
                      loss_fn=lambda model, batch: model.mlm_loss(*batch), batch_fn=batch_fn)
    loop_start = time.perf_counter()
    for step in range(train.max_iters):
        loss = trainer.train_step()
        if step % 50 == 0 or step == train.max_iters - 1:
            print(f"step {step:4d}: train MLM loss {loss:.3f}")
    loop_s = time.perf_counter() - loop_start

    loss_end, acc_end = evaluate()
    print(f"after {train.max_iters} steps: held-out MLM loss {loss_end:.3f}, "
          f"masked accuracy {acc_end:.3f}")
    result = {"mlm_loss_start": round(loss_start, 4), "mlm_loss_end": round(loss_end, 4),
              "masked_acc_start": round(acc_start, 4), "masked_acc": round(acc_end, 4),
              "vocab_size": tokenizer.vocab_size, "steps": train.max_iters,
              "tokenizer_s": round(tokenizer_s, 2), "train_s": round(loop_s, 1),
              "wall_s": round(time.perf_counter() - start, 1)}
    if train.out_dir:
        # "architecture" tells train.load_model to build an Encoder (a GPT by default)
        path = os.path.join(train.out_dir, "ckpt.safetensors")
        save_checkpoint(path, model, record={
            "architecture": "encoder", "model_config": config.to_dict(),
            "tokenizer": tokenizer.to_dict(), "mlm": {"steps": train.max_iters,
                                                      "masked_acc": result["masked_acc"]}})
        result["checkpoint"] = path
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
