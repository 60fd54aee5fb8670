"""What a text encoder is to the rest of mlx-imgen: token ids and an attention mask in, the
hidden states of a chosen layer (and a pooled vector where the model has one) out.

CLIP's text tower implements it here; a language-model encoder (Gemma-2 for Sana, the Llama
model inside Janus-Pro) implements the same method, so a text-to-image family only names its
encoder, its layer and its tokenizer settings.
"""

from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx


@dataclass
class TextEncoding:
    hidden_states: mx.array              # (B, L, D) of the requested layer
    attention_mask: mx.array | None      # (B, L), 1 for tokens and 0 for padding
    pooled: mx.array | None = None       # (B, P): CLIP's projected end-of-text features


class TextEncoder(Protocol):
    def encode(self, input_ids: mx.array, attention_mask: mx.array | None = None, *,
               layer: int | None = None) -> TextEncoding:
        """`layer` None: the final output, after the final norm. An int indexes the hidden
        states as `transformers` returns them (0 the embeddings, i the output of block i,
        negative from the end; -2 is aMUSEd's penultimate layer), before the final norm."""
        ...
