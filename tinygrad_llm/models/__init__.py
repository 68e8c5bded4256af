"""Models built from the nn layers: GPT (GPT-2 and Llama presets), the bidirectional Encoder
(MLM and classification heads), the LSTM language model, and Hugging Face checkpoint I/O."""
from .encoder import Encoder, mask_tokens
from .gpt import GPT, PRESETS, GPTConfig
from .hf import from_pretrained, save_pretrained
from .lstm import LSTM, LSTMLanguageModel

__all__ = ["GPT", "GPTConfig", "PRESETS", "Encoder", "mask_tokens", "LSTM", "LSTMLanguageModel",
           "from_pretrained", "save_pretrained"]
