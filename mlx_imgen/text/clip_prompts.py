"""Prompts as a CLIP text tower conditions a cross-attention model (aMUSEd): each prompt padded
to the tokenizer's maximum length (77) with its pad token, no attention mask, as diffusers'
AmusedPipeline tokenizes; the tower's penultimate hidden states are the cross-attention context
and its projected pooled features the pooled condition. A missing negative prompt is "", the
unconditional row diffusers runs when guidance is on."""

import mlx.core as mx

from ..paradigms.masked_token import CrossAttentionText
from .stand_in import StandInText, stand_in_ids
from .tokenizer import PromptTokenizer

# aMUSEd's text states: hidden_states[-2] of CLIPTextModelWithProjection
CONTEXT_LAYER = -2
EMPTY_NEGATIVE = ""


class CLIPPrompts:
    """A CLIP tokenizer folder's prompts as cross-attention text conditions."""

    def __init__(self, tokenizer: PromptTokenizer, layer: int = CONTEXT_LAYER):
        if tokenizer.max_length is None:
            raise ValueError(f"tokenizer folder {tokenizer.folder} names no model_max_length "
                             "(CLIP's is 77); convert the model again")
        self.tokenizer = tokenizer
        self.layer = layer

    @classmethod
    def from_folder(cls, folder) -> "CLIPPrompts":
        return cls(PromptTokenizer.from_folder(folder))

    def ids(self, texts: list[str]) -> mx.array:
        """(R, 77) int32 ids, padded with the pad token; a prompt cut to fit is reported by
        the tokenizer's warning."""
        return mx.array(self.tokenizer(texts, padding="max_length").input_ids)

    def encode(self, text_encoder, texts: list[str]) -> tuple[mx.array, mx.array]:
        """(states (R, 77, D), pooled (R, P)) of `texts`, without an attention mask (aMUSEd
        was trained on the padded rows unmasked)."""
        encoding = text_encoder.encode(self.ids(texts), None, layer=self.layer)
        return encoding.hidden_states, encoding.pooled

    def condition(self, pairs: list[tuple[str, str | None]], images: list[int] | None, *,
                  text_encoder, **_) -> CrossAttentionText:
        """The sampler condition of R distinct (prompt, negative prompt or None) pairs, image i
        taking row images[i] (None: row i). Every distinct text (prompts and negatives) runs
        through the tower once, in one batch."""
        if text_encoder is None:
            raise ValueError("this pipeline has no text encoder (text_encoder/), so it cannot "
                             "read prompts; convert the model again")
        texts = [p for p, _ in pairs] + [EMPTY_NEGATIVE if n is None else n for _, n in pairs]
        distinct = list(dict.fromkeys(texts))
        states, pooled = self.encode(text_encoder, distinct)
        rows = mx.array([distinct.index(t) for t in texts], mx.int32)
        states, pooled = states[rows], pooled[rows]
        r = len(pairs)
        return CrossAttentionText(states[:r], pooled[:r], states[r:], pooled[r:],
                                  images=None if images is None else mx.array(images, mx.int32))


class CLIPStandIn(StandInText):
    """Stand-in prompts for a profile: each row the tower's full length (a CLIP tokenizer pads
    every prompt to it), prompts and unconditional rows encoded in one batch, unmasked."""

    def __init__(self, text_encoder, batch: int, layer: int = CONTEXT_LAYER):
        super().__init__(text_encoder, batch)
        config = text_encoder.config
        self.layer = layer
        self.ids = stand_in_ids(2 * batch, config.max_positions, config.vocab_size)
        self.row_lengths = (config.max_positions, config.max_positions)
        self.context_length = config.max_positions

    def encode(self) -> CrossAttentionText:
        encoding = self.text_encoder.encode(self.ids, layer=self.layer)
        states, pooled, b = encoding.hidden_states, encoding.pooled, self.batch
        self.encoded = CrossAttentionText(states[:b], pooled[:b], states[b:], pooled[b:])
        return self.encoded
