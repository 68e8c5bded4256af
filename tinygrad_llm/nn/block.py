"""The transformer block: attention and a feed-forward network, each in a residual branch.

    pre-LN  (GPT-2, Llama; Xiong et al., 2020):  x = x + attn(norm1(x));  x = x + ffn(norm2(x))
    post-LN (the original Transformer's "Add & Norm", Vaswani et al., 2017):
                                                 x = norm1(x + attn(x));  x = norm2(x + ffn(x))

Attention-only blocks (Elhage et al., 2021) pass ffn=None and norm2=None: x = x + attn(norm1(x))
(post-LN: x = norm1(x + attn(x))).

Pre-LN keeps an identity path from the loss to every layer and trains without warmup tricks;
post-LN normalises the residual stream itself and needs a warmup to train deep stacks.
"""
from .module import Module

__all__ = ["TransformerBlock"]


class TransformerBlock(Module):
    """attn: a MultiHeadAttention; ffn: an MLP, SwiGLU or MoE (None: attention only); norm1,
    norm2: LayerNorm or RMSNorm (norm2 None exactly when ffn is None)."""

    def __init__(self, attn, ffn, norm1, norm2, prenorm=True):
        super().__init__()
        if (ffn is None) != (norm2 is None):
            raise ValueError(f"TransformerBlock: ffn and norm2 must both be given or both be "
                             f"None, got ffn={type(ffn).__name__}, norm2={type(norm2).__name__}")
        self.norm1, self.attn, self.norm2, self.ffn = norm1, attn, norm2, ffn
        self.prenorm = prenorm

    def forward(self, x, **attn_args):
        """x: (B, T, C) -> (x, (k, v)); attn_args go to the attention (bias, padding_mask, ...)."""
        if self.prenorm:
            a, kv = self.attn(self.norm1(x), **attn_args)
            x = x + a
            return (x if self.ffn is None else x + self.ffn(self.norm2(x))), kv
        a, kv = self.attn(x, **attn_args)
        x = self.norm1(x + a)
        return (x if self.ffn is None else self.norm2(x + self.ffn(x))), kv

    def extra_repr(self):
        return ("pre-LN" if self.prenorm else "post-LN") + (", attention only"
                                                           if self.ffn is None else "")
