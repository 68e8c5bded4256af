"""Models built from the nn layers: GPT (GPT-2 and Llama presets), the bidirectional Encoder
(MLM and classification heads), the LSTM language model, Transformer-XL (segment-level
recurrence with relative positions), and Hugging Face checkpoint I/O."""
from .encoder import Encoder, mask_tokens
from .gpt import GPT, PRESETS, GPTConfig
from .hf import from_pretrained, save_pretrained
from .lstm import LSTM, LSTMLanguageModel
from .transformer_xl import TransformerXL, TransformerXLConfig

__all__ = ["GPT", "GPTConfig", "PRESETS", "Encoder", "mask_tokens", "LSTM", "LSTMLanguageModel",
           "from_pretrained", "save_pretrained", "TransformerXL", "TransformerXLConfig"]
