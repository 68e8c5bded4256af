"""Quantization: weights stored in 8 or 4 bits and used without expanding them.

formats.py   the schemes (int8 per channel; llama.cpp's Q8_0, Q4_0, Q4_1; NF4), each a readable
             quantize / dequantize pair, and ggml's raw block bytes
linear.py    QuantLinear (forward through the quant_matmul kernel), QuantEmbedding, quantize(model)
gguf_io.py   save_gguf / load_gguf: llama.cpp's files (the `gguf` package, an optional extra)
gptq.py      GPTQ: column-by-column quantization with Hessian-weighted error compensation
"""
from .formats import GGML_TYPES, SCHEMES, dequantize_weight, nf4_codebook, quantize_weight
from .gguf_io import load_gguf, save_gguf
from .gptq import gptq, gptq_quantize
from .linear import QuantEmbedding, QuantLinear, quant_matmul, quantize, quantized_layers

__all__ = ["SCHEMES", "GGML_TYPES", "quantize_weight", "dequantize_weight", "nf4_codebook",
           "QuantLinear", "QuantEmbedding", "quantize", "quant_matmul", "quantized_layers",
           "save_gguf", "load_gguf", "gptq", "gptq_quantize"]
