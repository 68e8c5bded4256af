"""Named presets: TrainConfig and GPTConfig fields that go together, for a script to lay under
its command-line overrides (split_overrides' defaults).

SPEEDRUN: the pieces of modded-nanogpt's record history (Jordan et al., 2024) that lowered the main
job's validation loss at equal training FLOPs here (examples/speedrun.py ablates each piece at
equal wall time; examples/train_shakespeare.py --recipe=speedrun runs them together):
    Muon on the blocks' matrices (AdamW for the rest)      optimizer="muon"
    warmup-stable-decay, the last 40% decaying to 1% of    lr_schedule="wsd", decay_frac=0.4,
      the peak (from the baseline's cosine to 10%)          min_lr=2e-5
    an untied head, embeddings at 5x and the head at 0.5x  tie_embeddings=False, embed_lr, head_lr
      the peak learning rate 2e-3 (written as rates: set them again with another learning_rate)
    rotary positions instead of a learned table            pos="rope"
    RMS-normalised q and k per head                        qk_norm=True
    a squared-ReLU feed-forward (So et al., 2021)          mlp="relu2"
    logits soft-capped at 15, c tanh(z / c)                logit_softcap=15.0
The architecture pieces cost little time: QK-norm and RoPE run as one pass over the packed qkv
projection (ops/rope.py's PackedQKNormRopeOp), the squared ReLU as one op (Relu2Op), each with
its Numba kernel. They cost portability: llama.cpp's GGUF, Hugging Face's plain GPT-2 layout and
the fused decoder (generate's decode_step) cannot express them, so such a model is saved in this
library's own layout and decodes through its forward pass (train_shakespeare.py --recipe=baseline
trains the plain GPT-2 that all three take). Steps are not part of a recipe: Muon's
Newton-Schulz products add FLOPs per step (optim.newton_schulz_flops; the Gram form on the wide
matrices keeps them to ~20% of the main job's step), so a run at equal compute takes fewer steps
(the main job's recipe runs 1500 where the baseline runs 2000: 4.4e13 FLOPs against 4.9e13, and
less wall time).
"""

SPEEDRUN_TRAIN = dict(optimizer="muon", lr_schedule="wsd", decay_frac=0.4, min_lr=2e-5,
                      embed_lr=1e-2, head_lr=1e-3)
SPEEDRUN_MODEL = dict(tie_embeddings=False, pos="rope", qk_norm=True, mlp="relu2",
                      logit_softcap=15.0)

__all__ = ["SPEEDRUN_TRAIN", "SPEEDRUN_MODEL"]
