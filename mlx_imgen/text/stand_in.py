"""Stand-in prompts for profiling a cross-attention text model without a tokenizer (a
random-weight pipeline has none): fixed token ids, spread over the vocabulary, laid out as the
family's prompting lays out real prompts, so that the text encoder and the transformer do a
real prompt's work. Each family's prompting module defines its own (clip_prompts.CLIPStandIn,
gemma_prompts.GemmaStandIn); a family names it in its `stand_in_text` field."""

import mlx.core as mx


def stand_in_ids(rows: int, length: int, vocab_size: int, first_row: int = 0) -> mx.array:
    """(rows, length) int32 ids, distinct per row, none fixed to a special token's range."""
    row = mx.arange(first_row, first_row + rows, dtype=mx.int32)[:, None] * 7919
    return (row + mx.arange(length, dtype=mx.int32)[None] * 104729) % vocab_size


class StandInText:
    """`batch` stand-in prompts and as many unconditional rows. `encode()` encodes them (each
    profile run anew, inside its conditioning time) into the sampler's CrossAttentionText and
    keeps it as `encoded`. `row_lengths` are the token lengths of the rows one image costs the
    text encoder (its prompt's and its unconditional row's); `context_length` is the number of
    text states the transformer cross-attends to."""

    row_lengths: tuple[int, ...] = ()
    context_length: int = 0

    def __init__(self, text_encoder, batch: int):
        self.text_encoder, self.batch, self.encoded = text_encoder, batch, None

    def encode(self):
        raise NotImplementedError
