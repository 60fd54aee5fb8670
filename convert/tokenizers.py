"""The tokenizer files alone of a text-to-image alias's hub repo: what a random-weight pipeline
needs to read real prompts (`compare --random-weights`). They are fetched into the hub cache
(a few MB), never the weights."""

import json
from pathlib import Path

from mlx_imgen.io import atomic_write_text
from mlx_imgen.registry import get_card

from . import amused, janus, sana
from .hub import download_hint, fetch_optional

# family -> (the tokenizer's folder in the repo, its files, the ones it cannot do without)
TOKENIZERS = {
    "janus": ("", janus.TOKENIZER_FILES, ("tokenizer.json",)),
    "amused": ("tokenizer/", amused.LAYOUT.tokenizer_files, amused.LAYOUT.tokenizer_needs),
    "sana": ("tokenizer/", sana.LAYOUT.tokenizer_files, sana.LAYOUT.tokenizer_needs),
}


def fetch_tokenizer(alias: str, revision: str | None = None) -> Path:
    """The folder holding `alias`'s tokenizer files in the hub cache (fetched on first use)."""
    card = get_card(alias)
    if card.family not in TOKENIZERS:
        raise ValueError(f"{alias} reads no prompts (a {card.family} model); random weights of "
                         "a text-to-image model need its tokenizer")
    folder, names, needs = TOKENIZERS[card.family]
    repo = card.transformer.repo
    hint = download_hint(repo, f"its tokenizer files ({', '.join(needs)})", None)
    found = {n: p for n in names
             if (p := fetch_optional(repo, folder + n, revision or card.transformer.revision,
                                     hint))}
    missing = [n for n in needs if n not in found]
    if missing:
        raise ValueError(f"could not get {folder}{missing[0]} of {repo} (not cached, and the hub "
                         f"could not be reached or lacks it); a random-weight {alias} needs its "
                         "tokenizer to read prompts: connect once, convert the model, or "
                         "pass --stand-in-tokenizers for its cost alone")
    return next(iter(found.values())).parent


# --- stand-in tokenizers ---------------------------------------------------------------------
# For a machine that cannot reach the hub: a random-weight pipeline's images are noise whatever
# the ids, so what a prompt must get right there is its cost, the number of tokens. A stand-in
# reads each word or run of punctuation as one unknown token (real BPE tokenizers give English
# prompts 1 to 1.3 tokens a word) and holds the family's special tokens, so the family's own
# prompting lays the rows out as it lays out real ones (Janus-Pro's chat template, CLIP's 77,
# Gemma's instruction prefix and 300). The special ids are below each model's vocabulary; they
# stand in for the repo's, which cannot be read here.
STAND_IN_UNK = "<unk>"
# family -> (special token name -> (text, id), the id unknown words read as, model_max_length,
# the post-processor's template: special token names around the text, "$A")
STAND_IN_LAYOUTS = {
    "janus": ({"bos_token": ("<｜begin▁of▁sentence｜>", 100000),
               "eos_token": ("<｜end▁of▁sentence｜>", 100001),
               "pad_token": ("<｜▁pad▁｜>", 100015),
               "<|User|>": ("<|User|>", 100016), "<|Assistant|>": ("<|Assistant|>", 100017),
               "<begin_of_image>": ("<begin_of_image>", 100018),
               "<end_of_image>": ("<end_of_image>", 100019),
               "<image_placeholder>": ("<image_placeholder>", 100020)},
              1000, 16384, ("bos_token", "$A")),
    "amused": ({"bos_token": ("<|startoftext|>", 49406), "eos_token": ("<|endoftext|>", 49407),
                "pad_token": ("<|endoftext|>", 49407)},
               1000, 77, ("bos_token", "$A", "eos_token")),
    "sana": ({"pad_token": ("<pad>", 0), "eos_token": ("<eos>", 1), "bos_token": ("<bos>", 2),
              "unk_token": ("<unk>", 3)},
             1000, 1 << 60, ("bos_token", "$A")),
}
SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def write_stand_in_tokenizer(alias: str, folder: Path) -> Path:
    """A stand-in tokenizer folder for `alias` (tokenizer.json and the two config files): one
    token per word, the family's special tokens; see STAND_IN_LAYOUTS."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    card = get_card(alias)
    if card.family not in STAND_IN_LAYOUTS:
        raise ValueError(f"{alias} reads no prompts (a {card.family} model); only a "
                         "text-to-image model has a stand-in tokenizer")
    specials, unk_id, max_length, template = STAND_IN_LAYOUTS[card.family]
    vocab = {text: i for text, i in specials.values()}
    vocab.setdefault(STAND_IN_UNK, unk_id)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=STAND_IN_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False)
                                  for text in dict.fromkeys(t for t, _ in specials.values())])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(specials[n][0] if n in specials else n for n in template),
        special_tokens=[specials[n] for n in template if n in specials])
    folder.mkdir(parents=True, exist_ok=True)
    named = {k: text for k, (text, _) in specials.items() if k in SPECIAL_NAMES}
    config = {**named, "model_max_length": max_length, "stand_in": True,
              "additional_special_tokens": [t for k, (t, _) in specials.items()
                                            if k not in SPECIAL_NAMES]}
    atomic_write_text(folder / "tokenizer.json", tokenizer.to_str())
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(named, ensure_ascii=False))
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, ensure_ascii=False))
    return folder
