"""Text generation. generate.py: sampling by recomputing the context each step (the cached
decoder, beam search and speculative decoding arrive with the decoder issue)."""
from .generate import generate

__all__ = ["generate"]
