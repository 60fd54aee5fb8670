"""Prompts to token ids as the model was trained: a hub tokenizer folder (tokenizer.json, or
CLIP's vocab.json + merges.txt) run through `tokenizers`, with the folder's special tokens,
maximum length, padding and truncation (cut text reported, as diffusers does)."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's word split (its simple tokenizer's pattern): its two special tokens, English
# contractions, letter runs, single digits, and runs of anything else; whitespace is dropped
CLIP_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
              r"[^\s\p{L}\p{N}]+")
CLIP_SUFFIX = "</w>"
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers writes a huge model_max_length for "no limit"
UNBOUNDED = 10 ** 6
PADDINGS = ("max_length", "longest")


@dataclass
class TokenizedPrompts:
    input_ids: np.ndarray        # (B, L) int32
    attention_mask: np.ndarray   # (B, L) int32: 1 for tokens, 0 for padding
    truncated: list[str]         # for each prompt the text cut off its end, "" where none was


def _read_json(path: Path, folder: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"tokenizer folder {folder}: {path.name} is unreadable "
                         f"({type(err).__name__}: {err}); download the tokenizer again") from None


def _token_text(value) -> str | None:
    """A special token as the config files write it: a string, or an AddedToken's fields."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _settings(folder: Path) -> dict:
    """Special tokens and model_max_length; special_tokens_map.json overrides
    tokenizer_config.json, as transformers reads them."""
    config, specials = {}, {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            data = _read_json(path, folder)
            if not isinstance(data, dict):
                raise ValueError(f"tokenizer folder {folder}: {name} is not a JSON object; "
                                 "download the tokenizer again")
            if name == "tokenizer_config.json":
                config = data
            specials.update({k: _token_text(data[k]) for k in SPECIAL_NAMES if k in data})
    length = config.get("model_max_length")
    valid = isinstance(length, int) and not isinstance(length, bool) and 0 < length < UNBOUNDED
    return {"specials": specials, "max_length": length if valid else None}


def _clip_tokenizer(folder: Path, specials: dict):
    """CLIP's pipeline from vocab.json + merges.txt: NFC, whitespace runs to one space,
    lowercase; CLIP's word split, then bytes to symbols; BPE marking word ends with "</w>";
    start and end tokens around every prompt."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = _read_json(folder / "vocab.json", folder)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"tokenizer folder {folder}: vocab.json is not a token -> id map; "
                         "download the tokenizer again")
    try:
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"tokenizer folder {folder}: merges.txt is unreadable "
                         f"({type(err).__name__}); download the tokenizer again") from None
    # the first line is a "#version" header; blank lines end some files
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    if any(len(pair) != 2 for pair in merges):
        raise ValueError(f"tokenizer folder {folder}: merges.txt has lines that are not two "
                         "symbols separated by a space; download the tokenizer again")
    unk = specials.get("unk_token") or CLIP_EOS
    try:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=CLIP_SUFFIX,
                                         continuing_subword_prefix="", unk_token=unk))
    except Exception as err:  # tokenizers raises a bare Exception for a merge outside the vocab
        raise ValueError(f"tokenizer folder {folder}: vocab.json and merges.txt do not agree "
                         f"({err}); download the tokenizer again") from None
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _wrap_in(tokenizer, folder: Path, bos: str, eos: str) -> None:
    from tokenizers import processors
    ids = {token: tokenizer.token_to_id(token) for token in (bos, eos)}
    missing = [token for token, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer folder {folder}: vocab.json lacks {', '.join(missing)}; "
                         "download the tokenizer again")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, ids[bos]), (eos, ids[eos])])


class PromptTokenizer:
    """A hub tokenizer folder's tokenizer; call it on prompts for padded int32 id arrays."""

    def __init__(self, tokenizer, folder: Path, specials: dict, max_length: int | None):
        self._tokenizer = tokenizer
        self.folder = folder
        self.specials = specials
        self._max_length = max_length

    @classmethod
    def from_folder(cls, folder) -> "PromptTokenizer":
        from tokenizers import AddedToken, Tokenizer

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"tokenizer folder {folder} does not exist; pass a folder holding "
                             "tokenizer.json, or CLIP's vocab.json and merges.txt")
        settings = _settings(folder)
        specials = {k: v for k, v in settings["specials"].items() if v}
        if (folder / "tokenizer.json").is_file():
            try:
                tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as err:  # tokenizers raises a bare Exception on a bad file
                raise ValueError(f"tokenizer folder {folder}: tokenizer.json is not a tokenizer "
                                 f"file ({str(err).splitlines()[0] if str(err) else 'unreadable'}"
                                 "); download the tokenizer again") from None
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            # CLIP's defaults where the config files are silent (openai/clip pads with the end
            # token; Stable Diffusion 2's tokenizer names "!" instead)
            specials = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS,
                        "pad_token": CLIP_EOS, **specials}
            tokenizer = _clip_tokenizer(folder, specials)
            _wrap_in(tokenizer, folder, specials["bos_token"], specials["eos_token"])
        else:
            raise ValueError(f"tokenizer folder {folder} has neither tokenizer.json nor CLIP's "
                             "vocab.json and merges.txt; download the tokenizer again")
        # every named special token is matched whole before normalisation, as transformers does
        # (so Stable Diffusion 2's "!" pad token is never merged with a neighbouring "!")
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                      for t in dict.fromkeys(specials.values())])
        max_length = settings["max_length"]
        if max_length is None and tokenizer.truncation:
            max_length = tokenizer.truncation.get("max_length")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer, folder, specials, max_length)

    def _id(self, name: str) -> int | None:
        token = self.specials.get(name)
        return None if token is None else self._tokenizer.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def pad_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def max_length(self) -> int | None:
        """The most tokens the model takes (CLIP: 77), special tokens included."""
        return self._max_length

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """The ids of `text` alone: no special tokens added, nothing cut (a chat template's
        caller places BOS and the other markers itself)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        """How many tokens `text` takes with the special tokens the tokenizer adds (its BOS),
        uncut: transformers' len(tokenizer.encode(text))."""
        return len(self.encode(text)) + self._tokenizer.num_special_tokens_to_add(False)

    def token_id(self, token: str) -> int | None:
        """The id of one token of the vocabulary (a special token's), None if it has none."""
        return self._tokenizer.token_to_id(token)

    @property
    def special_tokens(self) -> list[str]:
        """Every token the tokenizer matches whole before splitting words (its added special
        tokens): text that holds one would inject a control token."""
        return [t.content for t in self._tokenizer.get_added_tokens_decoder().values()
                if t.special]

    def decode(self, ids) -> str:
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
        suffix = getattr(self._tokenizer.model, "end_of_word_suffix", None)
        return " ".join(text.replace(suffix, " ").split()) if suffix else text

    def __call__(self, prompts, *, max_length: int | None = None,
                 padding: str = "max_length") -> TokenizedPrompts:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        length = max_length or self.max_length
        if length is None and padding == "max_length":
            raise ValueError(f"tokenizer folder {self.folder} names no model_max_length; pass "
                             "max_length, or padding='longest'")
        specials = self._tokenizer.num_special_tokens_to_add(False)
        if length is not None and length <= specials:
            raise ValueError(f"max_length must leave room for a token beside the {specials} "
                             f"special ones, got {length}")
        rows, truncated = [], []
        # special tokens come after the cut, so the end token survives it, as in transformers
        for i, (prompt, encoding) in enumerate(zip(prompts, self._tokenizer.encode_batch(
                prompts, add_special_tokens=False))):
            cut = ""
            if length is not None and len(encoding.ids) > length - specials:
                # the user's own text from the first dropped token on, by its character offset
                cut = prompt[encoding.offsets[length - specials][0]:].strip()
                encoding.truncate(length - specials)
                log.warning("prompt %d was cut to the %d tokens the text encoder takes; "
                            "dropped: %r", i + 1, length, cut)
            rows.append(self._tokenizer.post_process(encoding).ids)
            truncated.append(cut)
        width = length if padding == "max_length" else max((len(row) for row in rows), default=0)
        if any(len(row) < width for row in rows) and self.pad_id is None:
            raise ValueError(f"tokenizer folder {self.folder} names no pad token; pass "
                             "prompts of one length, or add pad_token to special_tokens_map.json")
        input_ids = np.full((len(rows), width), self.pad_id or 0, dtype=np.int32)
        attention_mask = np.zeros((len(rows), width), dtype=np.int32)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = row
            attention_mask[i, :len(row)] = 1
        return TokenizedPrompts(input_ids, attention_mask, truncated)
