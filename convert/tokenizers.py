"""The tokenizer files alone of a text-to-image alias's hub repo: what a random-weight pipeline
needs to read real prompts (`compare --random-weights`). They are fetched into the hub cache
(a few MB), never the weights."""

from pathlib import Path

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
                         "tokenizer to read prompts: connect once, or convert the model")
    return next(iter(found.values())).parent
