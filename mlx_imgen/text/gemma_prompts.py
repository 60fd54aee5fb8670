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
from .stand_in import StandInText, stand_in_ids
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
# Gemma's token count of the instruction prefix, BOS included, for a profile without the
# tokenizer: an estimate (its 1,057 characters are 198 words and punctuation marks and 7
# newlines; a few rare words split in two). A profile's Gemma FLOPs move by 2 x 26 layers of
# one token's work per token it is off, under 0.3% of a pass per token.
INSTRUCTION_TOKENS = 210
# the stand-in prompt's own tokens after the prefix (a one-sentence prompt)
STAND_IN_PROMPT_TOKENS = 20


def instructed_length(prefix_tokens: int, max_tokens: int = MAX_TOKENS) -> int:
    """An instructed row's padded length: the prefix with its BOS, then max_tokens - 2 more
    (SanaPipeline's arithmetic)."""
    return prefix_tokens + max_tokens - 2


def kept_positions(length: int, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """The positions kept of an instructed row of `length`: BOS, then the last max_tokens - 1."""
    return np.array([0, *range(length - max_tokens + 1, length)], dtype=np.int32)


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
        self.instructed_length = (instructed_length(tokenizer.count(self.prefix), max_tokens)
                                  if self.prefix else max_tokens)

    @classmethod
    def from_folder(cls, folder, **settings) -> "GemmaPrompts":
        return cls(PromptTokenizer.from_folder(folder), **settings)

    @property
    def kept(self) -> np.ndarray:
        """The positions kept of an instructed row: BOS, then the last max_tokens - 1."""
        return kept_positions(self.instructed_length, self.max_tokens)

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


class GemmaStandIn(StandInText):
    """Stand-in prompts for a profile, laid out as GemmaPrompts lays out real ones: each prompt
    row the instructed length (INSTRUCTION_TOKENS of prefix, STAND_IN_PROMPT_TOKENS of prompt,
    then padding), of whose states BOS and the last MAX_TOKENS - 1 are kept; each
    unconditional row the empty negative prompt (BOS, then padding) at MAX_TOKENS. Both
    carry their attention masks to the transformer."""

    def __init__(self, text_encoder, batch: int, *, prefix_tokens: int = INSTRUCTION_TOKENS,
                 max_tokens: int = MAX_TOKENS):
        super().__init__(text_encoder, batch)
        vocab = text_encoder.config.vocab_size
        length = instructed_length(prefix_tokens, max_tokens)
        self.kept = mx.array(kept_positions(length, max_tokens))
        self.ids = stand_in_ids(batch, length, vocab)
        tokens = min(length, prefix_tokens + STAND_IN_PROMPT_TOKENS)
        self.mask = mx.broadcast_to((mx.arange(length) < tokens).astype(mx.int32),
                                    (batch, length))
        self.null_ids = stand_in_ids(batch, max_tokens, vocab, first_row=batch)
        self.null_mask = mx.broadcast_to((mx.arange(max_tokens) < 1).astype(mx.int32),
                                         (batch, max_tokens))
        self.row_lengths = (length, max_tokens)
        self.context_length = max_tokens

    def encode(self) -> CrossAttentionText:
        states = self.text_encoder.encode(self.ids, self.mask).hidden_states
        null_states = self.text_encoder.encode(self.null_ids, self.null_mask).hidden_states
        self.encoded = CrossAttentionText(states[:, self.kept], None, null_states, None,
                                          mask=self.mask[:, self.kept], null_mask=self.null_mask)
        return self.encoded
