"""The LSTM baseline: a stacked LSTM layer and a character/token language model around it.

Reading order: LSTMLayer (one layer's weights and its time loop) -> LSTM (the stack, PyTorch's
nn.LSTM with batch_first=True) -> LSTMLanguageModel (embedding -> LSTM -> linear head).

The recurrence is LSTMCellOp (ops/lstm.py: Hochreiter & Schmidhuber, 1997; forget gate of Gers et
al., 2000), one op per time step. Per layer the input projection x W_ih^T + b of all T steps is one
(B*T, In) @ (In, 4H) GEMM before the loop, so the loop holds only the (B, H) @ (H, 4H) recurrent
product and the gate arithmetic. Weights follow PyTorch's layout (gates i, f, g, o stacked in
rows) and its initialisation U(-1/sqrt(H), 1/sqrt(H)); PyTorch's two biases b_ih + b_hh are one
bias b here (their sum is all the cell sees). `forget_bias` optionally sets the forget-gate bias
to a constant, e.g. 1.0 (Gers et al., 2000; Jozefowicz, Zaremba & Sutskever, 2015), so that early
in training the cell keeps its memory by default.
"""
import numpy as np

from .. import backend, stack
from ..nn import functional as F
from ..nn.layers import Dropout, Embedding, Linear, init_parameter
from ..nn.module import Module, ModuleList
from ..ops.lstm import LSTMCellOp
from ..tensor import Tensor

__all__ = ["LSTM", "LSTMLanguageModel", "LSTMLayer"]


class LSTMLayer(Module):
    """One LSTM layer: w_ih (4H, In), w_hh (4H, H), b (4H,), gates in the order i, f, g, o."""

    def __init__(self, input_size, hidden_size, forget_bias=None, device=None, dtype=np.float32):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        bound = 1.0 / np.sqrt(hidden_size)
        self.w_ih = init_parameter((4 * hidden_size, input_size), device, dtype, bound=bound)
        self.w_hh = init_parameter((4 * hidden_size, hidden_size), device, dtype, bound=bound)
        self.b = init_parameter((4 * hidden_size,), device, dtype, bound=bound)
        if forget_bias is not None:
            self.b.data[hidden_size:2 * hidden_size] = forget_bias

    def forward(self, x, h, c):
        """x: (B, T, In), h, c: (B, H) -> outputs (B, T, H), final h (B, H), final c (B, H)."""
        gates_x = F.linear(x, self.w_ih, self.b)            # (B, T, 4H): one GEMM for all steps
        outputs = []
        for t in range(x.shape[1]):
            hc = LSTMCellOp.apply(gates_x[:, t], h, c, self.w_hh)     # (2, B, H)
            h, c = hc[0], hc[1]
            outputs.append(h)
        return stack(outputs, axis=1), h, c

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}"


class LSTM(Module):
    """A stack of LSTM layers over batch-first sequences, shaped like PyTorch's
    nn.LSTM(input_size, hidden_size, num_layers, batch_first=True).

    dropout: applied to each layer's outputs except the last, while training (as PyTorch).
    forget_bias: None keeps the uniform init; a number sets every forget-gate bias to it.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0, forget_bias=None,
                 device=None, dtype=np.float32):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"LSTM: {name} must be a positive int, got {value!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.layers = ModuleList([LSTMLayer(input_size if k == 0 else hidden_size, hidden_size,
                                            forget_bias, device, dtype)
                                  for k in range(num_layers)])
        self.dropout = Dropout(dropout)

    def _initial_state(self, x, state):
        """(h0, c0), each (num_layers, B, H): zeros when state is None."""
        shape = (self.num_layers, x.shape[0], self.hidden_size)
        if state is None:
            zeros = Tensor._wrap(backend.xp_for(x.device).zeros(shape, dtype=x.dtype))
            return zeros, zeros
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"LSTM: state must be a pair (h, c), got {type(state).__name__}")
        h0, c0 = (s if isinstance(s, Tensor) else Tensor(s, device=x.device) for s in state)
        for name, s in (("h", h0), ("c", c0)):
            if tuple(s.shape) != shape:
                raise ValueError(f"LSTM: state {name} has shape {tuple(s.shape)}, expected "
                                 f"(num_layers, B, H) = {shape}")
        return h0, c0

    def forward(self, x, state=None):
        """x: (B, T, In); state: None or (h0, c0), each (num_layers, B, H).

        Returns outputs (B, T, H) (the last layer's h at every step) and the final state
        (h, c), each (num_layers, B, H): pass it back in to continue the sequence (detach it
        first to truncate backpropagation through time).
        """
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"LSTM: input must be (B, T, input_size={self.input_size}), got "
                             f"shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("LSTM: input has T=0 time steps; expected at least 1")
        h0, c0 = self._initial_state(x, state)
        hs, cs = [], []
        for k, layer in enumerate(self.layers):
            if k > 0:
                x = self.dropout(x)
            x, h, c = layer(x, h0[k], c0[k])
            hs.append(h)
            cs.append(c)
        return x, (stack(hs), stack(cs))

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"


class LSTMLanguageModel(Module):
    """Embedding -> LSTM -> Linear head: ids (B, T) -> next-token logits (B, T, V).

    dropout is applied to the embeddings, between LSTM layers and before the head (Zaremba,
    Sutskever & Vinyals, 2014 regularise an LSTM LM this way: on non-recurrent connections only).
    """

    def __init__(self, vocab_size, n_embd, hidden_size, n_layer, dropout=0.0, forget_bias=None,
                 device=None, dtype=np.float32):
        super().__init__()
        self.vocab_size = vocab_size
        self.wte = Embedding(vocab_size, n_embd, device, dtype)
        self.lstm = LSTM(n_embd, hidden_size, n_layer, dropout, forget_bias, device, dtype)
        self.drop = Dropout(dropout)
        self.head = Linear(hidden_size, vocab_size, device=device, dtype=dtype)

    def forward(self, idx, state=None, return_state=False):
        """idx: int (B, T) (Tensor, array or list); state: None or the (h, c) returned before.

        Returns logits (B, T, V), or (logits, (h, c)) with return_state=True.
        """
        x = self.drop(F.embedding(idx, self.wte.weight))    # (B, T, C); the op range-checks ids
        if x.ndim != 3:
            raise ValueError(f"LSTMLanguageModel: idx must be (B, T), got shape "
                             f"{tuple(x.shape[:-1])}")
        out, state = self.lstm(x, state)                    # (B, T, H)
        logits = self.head(self.drop(out))                  # (B, T, V)
        return (logits, state) if return_state else logits
