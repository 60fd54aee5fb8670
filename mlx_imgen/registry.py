"""Model cards: alias -> family, hub files, license, published figures and sampling defaults."""

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    repo: str
    filename: str
    revision: str | None = None


@dataclass(frozen=True)
class ModelCard:
    alias: str
    family: str
    paradigm: str
    size: str
    image_size: int
    parameters: str
    transformer: Source
    autoencoder: Source
    license: str
    fid: float | None = None
    published: str = ""                 # the settings behind the published FID
    sampling: dict = field(default_factory=dict)
    hints: dict = field(default_factory=dict)  # what shapes cannot tell (heads, image size)


# the tokenizer each family decodes with when a local transformer file comes without one
DEFAULT_AUTOENCODERS: dict[str, "Source"] = {}


LLAMAGEN_REPO = "FoundationVision/LlamaGen"
LLAMAGEN_VQ = Source(LLAMAGEN_REPO, "vq_ds16_c2i.pt")


def _llamagen(size: str, image_size: int, parameters: str, fid: float, fid_cfg: float) -> ModelCard:
    from .families.llamagen import SAMPLING, SIZES

    return ModelCard(
        alias=f"llamagen-c2i-{size.lower()}-{image_size}", family="llamagen",
        paradigm="next-token", size=size, image_size=image_size, parameters=parameters,
        transformer=Source(LLAMAGEN_REPO, f"c2i_{size}_{image_size}.pt"),
        autoencoder=LLAMAGEN_VQ, license="MIT", fid=fid,
        published=f"cfg {fid_cfg}, top-k 0, 50k samples at 256 px",
        sampling=dict(SAMPLING),
        hints={"heads": SIZES[size][2], "image_size": image_size})


DEFAULT_AUTOENCODERS["llamagen"] = LLAMAGEN_VQ

CARDS = {card.alias: card for card in [
    _llamagen("B", 256, "111M", 5.46, 2.0),
    _llamagen("B", 384, "111M", 6.09, 2.0),
    _llamagen("L", 256, "343M", 3.80, 2.0),
    _llamagen("L", 384, "343M", 3.07, 2.0),
    _llamagen("XL", 384, "775M", 2.62, 1.75),
    _llamagen("XXL", 384, "1.4B", 2.34, 1.75),
    _llamagen("3B", 384, "3.1B", 2.18, 1.65),
]}


def get_card(alias: str) -> ModelCard:
    if alias in CARDS:
        return CARDS[alias]
    close = difflib.get_close_matches(alias, CARDS, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else "run `mlx-imgen models` for the list"
    raise ValueError(f"unknown model {alias!r}; {hint}")


def card_for_file(filename: str) -> ModelCard | None:
    """The card whose transformer file has this name (c2i_L_384.pt -> llamagen-c2i-l-384)."""
    for card in CARDS.values():
        if card.transformer.filename == filename:
            return card
    return None
