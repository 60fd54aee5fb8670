"""The text side: tokenizers, text encoders (CLIP's text tower; language models later) and the
interface every text-conditioned family uses."""

from .encoder import TextEncoder, TextEncoding

__all__ = ["TextEncoder", "TextEncoding"]
