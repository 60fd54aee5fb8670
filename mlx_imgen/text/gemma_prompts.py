"""Prompts as Sana's Gemma-2 encoder conditions its transformer, as diffusers' SanaPipeline
encodes them (see Sana's paper, section 3.1, "complex human instruction"):

- every text is lowercased and stripped;
- a prompt is prefixed by the instruction lines below (joined by newlines, the prompt glued to
  the final "User Prompt: "), padded on the right to the prefix's length (with BOS) + 300 - 2
  tokens and cut to it; after encoding only BOS and the last 299 positions are kept, so the
  condition is 300 states with their attention mask;
- the negative prompt ("" by default) has no prefix: padded and cut to 300 tokens, all kept.
"""

import mlx.core as mx
import numpy as np

from ..paradigms.conditions import CrossAttentionText
from .tokenizer import PromptTokenizer

# Sana's instruction prefix: model input data, as SanaPipeline's default lists it
INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual "
    "descriptions suitable for image generation. Evaluate the level of detail in the user "
    "prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, "
    "textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly "
    "without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round "
    "shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red "
    "flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, "
    "featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a "
    "double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including "
    "any additional commentary or evaluations:",
    "User Prompt: ",
)
MAX_TOKENS = 300
EMPTY_NEGATIVE = ""


class GemmaPrompts:
    """A Gemma tokenizer folder's prompts as Sana's cross-attention text conditions."""

    def __init__(self, tokenizer: PromptTokenizer, *, instruction: tuple[str, ...] = INSTRUCTION,
                 max_tokens: int = MAX_TOKENS):
        if tokenizer.pad_id is None:
            raise ValueError(f"tokenizer folder {tokenizer.folder} names no pad token (Gemma's "
                             "is <pad>); download the tokenizer again")
        if max_tokens < 2:
            raise ValueError(f"max_tokens must keep BOS and a token, got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.prefix = "\n".join(instruction)
        # the pipeline counts the prefix with its BOS and gives the prompt max_tokens - 2 more
        self.instructed_length = (tokenizer.count(self.prefix) + max_tokens - 2 if self.prefix
                                  else max_tokens)

    @classmethod
    def from_folder(cls, folder, **settings) -> "GemmaPrompts":
        return cls(PromptTokenizer.from_folder(folder), **settings)

    @property
    def kept(self) -> np.ndarray:
        """The positions kept of an instructed row: BOS, then the last max_tokens - 1."""
        length = self.instructed_length
        return np.array([0, *range(length - self.max_tokens + 1, length)], dtype=np.int32)

    def tokenize(self, texts: list[str], *, instructed: bool):
        """The padded ids and mask of `texts` (TokenizedPrompts); a text cut to fit is reported
        by the tokenizer's warning."""
        texts = [t.lower().strip() for t in texts]
        if instructed and self.prefix:
            return self.tokenizer([self.prefix + t for t in texts],
                                  max_length=self.instructed_length, padding="max_length")
        return self.tokenizer(texts, max_length=self.max_tokens, padding="max_length")

    def encode(self, text_encoder, texts: list[str], *,
               instructed: bool) -> tuple[mx.array, mx.array]:
        """(states (R, max_tokens, D), mask (R, max_tokens) int32) of `texts`."""
        tokens = self.tokenize(texts, instructed=instructed)
        mask = mx.array(tokens.attention_mask)
        states = text_encoder.encode(mx.array(tokens.input_ids), mask).hidden_states
        if instructed and self.prefix:
            kept = mx.array(self.kept)
            states, mask = states[:, kept], mask[:, kept]
        return states, mask

    def condition(self, pairs: list[tuple[str, str | None]], images: list[int] | None, *,
                  text_encoder, **_) -> CrossAttentionText:
        """The sampler condition of R distinct (prompt, negative prompt or None) pairs, image i
        taking row images[i] (None: row i). Each distinct prompt is encoded once (instructed),
        each distinct negative once (without the prefix); no pooled vector."""
        if text_encoder is None:
            raise ValueError("this pipeline has no text encoder (text_encoder/), so it cannot "
                             "read prompts; convert the model again")
        prompts = list(dict.fromkeys(p for p, _ in pairs))
        negatives = list(dict.fromkeys(EMPTY_NEGATIVE if n is None else n for _, n in pairs))
        states, mask = self.encode(text_encoder, prompts, instructed=True)
        null_states, null_mask = self.encode(text_encoder, negatives, instructed=False)
        rows = mx.array([prompts.index(p) for p, _ in pairs], mx.int32)
        null_rows = mx.array([negatives.index(EMPTY_NEGATIVE if n is None else n)
                              for _, n in pairs], mx.int32)
        return CrossAttentionText(states[rows], None, null_states[null_rows], None,
                                  images=None if images is None else mx.array(images, mx.int32),
                                  mask=mask[rows], null_mask=null_mask[null_rows])
