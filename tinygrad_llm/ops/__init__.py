"""Differentiable ops, one class each, grouped by family (see each file's docstring for the math).

Reading order: elementwise -> reduce -> shape -> linalg -> softmax (and cross-entropy) -> norm ->
activation (GELU) -> embedding -> dropout -> attention -> rope -> linear_attention -> lstm.
"""
from .elementwise import (AddOp, SubOp, MulOp, DivOp, NegOp, PowOp, PowScalarOp, ExpOp, LogOp,
                          SqrtOp, TanhOp, SigmoidOp, ReluOp, SiluOp, AbsOp, ClampOp, WhereOp,
                          MaskedFillOp, CastOp, ToDeviceOp)
from .reduce import SumOp, MeanOp, MaxOp, VarOp
from .shape import ReshapeOp, PermuteOp, ExpandOp, GetItemOp, CatOp, StackOp, index_data, split
from .linalg import LinearOp, MatMulOp
from .softmax import SoftmaxOp, LogSoftmaxOp, CrossEntropyOp
from .norm import LayerNormOp, RMSNormOp
from .activation import GeluOp
from .embedding import EmbeddingOp
from .dropout import DropoutOp
from .attention import AttentionOp
from .rope import RopeOp
from .linear_attention import LinearAttentionOp
from .lstm import LSTMCellOp
