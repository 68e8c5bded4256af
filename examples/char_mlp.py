"""A character-level MLP language model (Bengio et al., 2003) on tiny Shakespeare, trained with
tinygrad_llm's autograd and fused kernels. The smallest end-to-end example: embedding, matmul,
layer norm, GELU and cross-entropy forward and backward, and an Adam update written out by hand.
It keeps its own loop on purpose: its parameters are a dict of tensors rather than a Module, and
every line of a training step is in view (the Trainer and optim.AdamW do the same for a model).

    python examples/char_mlp.py [--max_iters=6000] [--context=8] [--hidden=256] [--device=cpu]

Data: $TINYGRAD_LLM_DATA (the tiny Shakespeare input.txt) when set, otherwise a short built-in
passage. Prints a sample, then one JSON object with the headline figures on the last line.
"""
import dataclasses
import json
import os
import sys
import time

import tinygrad_llm as tl  # before NumPy: it sets OpenBLAS's thread timeout (see its docstring)
import tinygrad_llm.nn.functional as F
from tinygrad_llm.train import parse_args, run_main
import numpy as np

BUILT_IN = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause.
"""


@dataclasses.dataclass
class Config:
    max_iters: int = 6000     # Adam steps
    batch_size: int = 64      # examples (context, next character) per step
    context: int = 8          # characters of context
    n_embd: int = 24          # embedding width per character
    hidden: int = 256         # the hidden layer's width
    learning_rate: float = 3e-3   # the first step's; decays linearly to a tenth
    eval_interval: int = 2000     # print train and validation loss every this many steps
    sample_chars: int = 300   # characters sampled at the end
    seed: int = 0             # seeds the weights, the batches and the sample
    device: str = "cpu"       # "cpu" or "cuda"


def load_text():
    path = os.environ.get("TINYGRAD_LLM_DATA")
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    return BUILT_IN * 20, "built-in passage"


def main(argv):
    (cfg,) = parse_args(argv, Config)
    tl.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    text, source = load_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    vocab = len(chars)

    def batch(split_data, size):
        # x: (B, context) ids, y: (B,) the next character
        starts = rng.integers(0, len(split_data) - cfg.context - 1, size)
        x = np.stack([split_data[s:s + cfg.context] for s in starts])
        return x, split_data[starts + cfg.context]

    def param(*shape, scale):
        return tl.Tensor(rng.standard_normal(shape).astype(np.float32) * scale,
                         requires_grad=True, device=cfg.device)

    fan_in = cfg.context * cfg.n_embd
    params = {
        "wte": param(vocab, cfg.n_embd, scale=1.0),
        "w1": param(fan_in, cfg.hidden, scale=fan_in ** -0.5),
        "b1": param(cfg.hidden, scale=0.0),
        "ln_w": tl.ones(cfg.hidden, device=cfg.device, requires_grad=True),
        "ln_b": tl.zeros(cfg.hidden, device=cfg.device, requires_grad=True),
        "w2": param(cfg.hidden, vocab, scale=0.1 * cfg.hidden ** -0.5),
        "b2": param(vocab, scale=0.0),
    }

    def forward(x):
        # x: (B, context) -> logits (B, V)
        e = F.embedding(x, params["wte"]).reshape(x.shape[0], fan_in)     # (B, context * E)
        h = F.layer_norm(e @ params["w1"] + params["b1"], params["ln_w"], params["ln_b"])
        return F.gelu(h) @ params["w2"] + params["b2"]

    # Adam (Kingma & Ba, 2015), written out: m, v running moments, bias-corrected step
    moments = {k: (np.zeros(p.shape, np.float32), np.zeros(p.shape, np.float32))
               for k, p in params.items()}
    beta1, beta2, eps = 0.9, 0.99, 1e-8

    def adam_step(step, lr):
        with tl.no_grad():
            for name, p in params.items():
                m, v = moments[name]
                g = p.grad.numpy()
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                update = lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
                p.sub_(tl.Tensor(update, device=cfg.device))
                p.grad = None

    def evaluate(split_data):
        with tl.no_grad():
            x, y = batch(split_data, 2048)
            return F.cross_entropy(forward(x), y).item()

    print(f"data: {source}, {len(text):,} characters, vocab {vocab}; "
          f"{sum(p.numel() for p in params.values()):,} parameters", file=sys.stderr)
    t0 = time.perf_counter()
    for step in range(1, cfg.max_iters + 1):
        x, y = batch(train, cfg.batch_size)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        lr = cfg.learning_rate * (0.1 + 0.9 * (1 - step / cfg.max_iters))   # linear decay to lr/10
        adam_step(step, lr)
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            print(f"step {step:5d}  train loss {loss.item():.3f}  val loss {evaluate(val):.3f}  "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    wall = time.perf_counter() - t0

    # sample: feed the last `context` characters, draw the next from softmax(logits)
    context = list(data[:cfg.context])
    out = []
    with tl.no_grad():
        for _ in range(cfg.sample_chars):
            probs = F.softmax(forward(np.array([context[-cfg.context:]]))).numpy()[0]
            nxt = int(rng.choice(vocab, p=probs / probs.sum()))
            context.append(nxt)
            out.append(chars[nxt])
    print("".join(out))
    print(json.dumps({"train_loss": round(evaluate(train), 4), "val_loss": round(evaluate(val), 4),
                      "steps": cfg.max_iters, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    run_main(main)
