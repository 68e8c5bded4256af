"""The same GPT in PyTorch, for side-by-side timings in the bench scripts (never imported by the
library; needs `pip install torch==2.13.0`). Weights are copied from a tinygrad_llm GPT, so both
models compute the same function (tests/ref compares them; here only speed matters).
"""
import numpy as np
import torch
import torch.nn.functional as TF

__all__ = ["TorchGPT"]


class TorchGPT(torch.nn.Module):
    """A GPT-2 or Llama-shaped decoder matching models/gpt.py's parameter names and layout."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.c = c
        self.params = torch.nn.ParameterDict()

    @classmethod
    def from_ours(cls, model):
        m = cls(model.config)
        for name, p in model.state_dict().items():
            m.params[name.replace(".", "__")] = torch.nn.Parameter(
                torch.from_numpy(np.array(p.numpy())))
        if model.config.tie_embeddings:
            m.params["head__weight"] = m.params["tok_emb__weight"]
        m._rope_cache = None
        return m

    def p(self, name):
        return self.params[name.replace(".", "__")]

    def _norm(self, x, prefix):
        c = self.c
        if c.norm == "rmsnorm":
            return TF.rms_norm(x, (x.shape[-1],), self.p(prefix + ".weight"), c.norm_eps)
        bias = self.p(prefix + ".bias") if c.bias else None
        return TF.layer_norm(x, (x.shape[-1],), self.p(prefix + ".weight"), bias, c.norm_eps)

    def _linear(self, x, prefix):
        bias = self.p(prefix + ".bias") if self.c.bias else None
        return TF.linear(x, self.p(prefix + ".weight"), bias)

    def _rope(self, x):
        t, d = x.shape[-2], x.shape[-1]
        if self._rope_cache is None or self._rope_cache[0].shape[0] < t:
            inv = 1.0 / (self.c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
            ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
            ang = torch.cat([ang, ang], dim=-1)
            # built on the host in float64, kept on x's device (a GPU run: --device=cuda)
            self._rope_cache = (ang.cos().float().to(x.device), ang.sin().float().to(x.device))
        cos, sin = self._rope_cache[0][:t], self._rope_cache[1][:t]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def forward(self, idx, targets=None):
        c = self.c
        b, t = idx.shape
        x = TF.embedding(idx, self.p("tok_emb.weight"))
        if c.pos == "learned":
            x = x + self.p("pos_emb.weight")[:t]
        h, hkv, d = c.n_head, c.n_kv_head, c.head_dim
        for i in range(c.n_layer):
            pre = f"blocks.{i}."
            a = self._norm(x, pre + "norm1")
            qkv = self._linear(a, pre + "attn.qkv").view(b, t, h + 2 * hkv, d)
            q = qkv[:, :, :h].transpose(1, 2)
            k = qkv[:, :, h:h + hkv].transpose(1, 2)
            v = qkv[:, :, h + hkv:].transpose(1, 2)
            if c.pos == "rope":
                q, k = self._rope(q), self._rope(k)
            o = TF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hkv != h)
            x = x + self._linear(o.transpose(1, 2).reshape(b, t, h * d), pre + "attn.proj")
            a = self._norm(x, pre + "norm2")
            if c.mlp == "swiglu":
                f = TF.silu(self._linear(a, pre + "ffn.gate")) * self._linear(a, pre + "ffn.up")
            else:
                approx = "tanh" if c.mlp == "gelu_tanh" else "none"
                f = TF.gelu(self._linear(a, pre + "ffn.up"), approximate=approx)
            x = x + self._linear(f, pre + "ffn.down")
        logits = TF.linear(self._norm(x, "norm"), self.p("head.weight"))
        if targets is None:
            return logits
        return logits, TF.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
