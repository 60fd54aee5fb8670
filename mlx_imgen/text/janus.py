"""Janus-Pro's prompt rows, as upstream's generation_inference.py builds them: BOS, the chat
template `<|User|>: {prompt}\\n\\n<|Assistant|>:` with no system prompt, then `<begin_of_image>`.
The unconditional row keeps BOS and `<begin_of_image>` and pads every position between, or holds
a negative prompt's template; rows of different lengths are left-padded and masked."""

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..paradigms.next_token import TextPrefix
from .tokenizer import PromptTokenizer

USER, ASSISTANT = "<|User|>", "<|Assistant|>"
BEGIN_OF_IMAGE = "<begin_of_image>"
PAD = "<｜▁pad▁｜>"  # upstream's pad_tag, which the processor looks up by text


def chat_text(prompt: str) -> str:
    """Upstream's "deepseek" SFT template of one user turn and an empty assistant turn, the
    system prompt empty (so absent), each message stripped, then the image start tag."""
    return f"{USER}: {prompt.strip()}\n\n{ASSISTANT}:{BEGIN_OF_IMAGE}"


@dataclass
class PromptRows:
    """The rows of R distinct (prompt, negative prompt) pairs, left-padded to one length P:
    `ids` and `null_ids` (R, P) int32, `mask` and `null_mask` (R, P) bool marking real tokens,
    None where no row of that side is padded."""
    ids: np.ndarray
    null_ids: np.ndarray
    mask: np.ndarray | None
    null_mask: np.ndarray | None

    @property
    def length(self) -> int:
        return self.ids.shape[1]


class JanusPrompts:
    """Token rows of prompts for a Janus-Pro model, from its tokenizer folder."""

    def __init__(self, tokenizer: PromptTokenizer):
        self.tokenizer = tokenizer
        ids = {name: tokenizer.token_id(token) for name, token in
               (("BOS", tokenizer.specials.get("bos_token")), (BEGIN_OF_IMAGE, BEGIN_OF_IMAGE),
                (PAD, PAD), (USER, USER), (ASSISTANT, ASSISTANT))}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer folder {tokenizer.folder} lacks Janus-Pro's "
                             f"{', '.join(missing)} token; convert the model again")
        self.bos_id, self.begin_of_image_id, self.pad_id = (ids["BOS"], ids[BEGIN_OF_IMAGE],
                                                            ids[PAD])

    @classmethod
    def from_folder(cls, folder) -> "JanusPrompts":
        return cls(PromptTokenizer.from_folder(folder))

    def row(self, prompt: str, what: str = "the prompt") -> list[int]:
        """BOS, then the template around `prompt`, ending in <begin_of_image>."""
        inside = [t for t in self.tokenizer.special_tokens if t in prompt]
        if inside:
            raise ValueError(f"{what} contains the control token {inside[0]!r}, which would "
                             "change Janus-Pro's template; remove it from the text")
        return [self.bos_id, *self.tokenizer.encode(chat_text(prompt))]

    def null_row(self, length: int) -> list[int]:
        """BOS, `length` - 2 pads, <begin_of_image>: the prompt's template with its text gone."""
        return [self.bos_id, *[self.pad_id] * (length - 2), self.begin_of_image_id]

    def rows(self, pairs: list[tuple[str, str | None]], *, max_length: int | None = None,
             names: list[str] | None = None) -> PromptRows:
        """Rows of (prompt, negative prompt or None) pairs; a row longer than `max_length`
        (the model's context less the image tokens) is refused, naming the prompt."""
        names = names or [f"prompt {i + 1}" if len(pairs) > 1 else "the prompt"
                          for i in range(len(pairs))]
        cond, null = [], []
        for (prompt, negative), name in zip(pairs, names):
            row = self.row(prompt, name)
            cond.append(row)
            null.append(self.null_row(len(row)) if negative is None
                        else self.row(negative, f"the negative prompt of {name}"))
            longest = max(len(cond[-1]), len(null[-1]))
            if max_length is not None and longest > max_length:
                which = name if len(cond[-1]) >= len(null[-1]) else f"the negative prompt of {name}"
                raise ValueError(f"{which} is {longest} tokens in Janus-Pro's template, more than "
                                 f"the {max_length} the model's context leaves beside the image "
                                 "tokens; shorten it")
        width = max(len(row) for row in cond + null)
        ids, mask = _left_padded(cond, width, self.pad_id)
        null_ids, null_mask = _left_padded(null, width, self.pad_id)
        return PromptRows(ids, null_ids, mask, null_mask)

    def condition(self, pairs: list[tuple[str, str | None]], images: list[int] | None, *,
                  names: list[str], plan, config, **_) -> TextPrefix:
        """The text prefix of R distinct (prompt, negative prompt) pairs, image i taking row
        images[i] (None: row i): each pair is one row pair, prefilled once for all its images.
        A row must leave the image tokens room in the model's context."""
        context = config.context_length or self.tokenizer.max_length
        rows = self.rows(pairs, max_length=None if context is None else context - plan.num_tokens,
                         names=names)
        as_array = lambda a: None if a is None else mx.array(a)  # noqa: E731
        return TextPrefix(mx.array(rows.ids), mx.array(rows.null_ids), as_array(rows.mask),
                          as_array(rows.null_mask), as_array(images))


def _left_padded(rows: list[list[int]], width: int, pad: int):
    """(R, width) ids with each row at the right end, and its mask (None if no row is short)."""
    ids = np.full((len(rows), width), pad, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = True
    return ids, None if mask.all() else mask
