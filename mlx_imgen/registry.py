"""Model cards: alias -> family, hub files, license, published figures and sampling defaults."""

import difflib
from dataclasses import dataclass, field

from .families import AMUSED, DIT, JANUS, LLAMAGEN, MASKGIT, SANA, SIT


@dataclass(frozen=True)
class Source:
    repo: str | None                    # None: no hub repo, the user passes the local file
    filename: str
    revision: str | None = None
    config: str | None = None           # a config.json in the same repo that comes along
    fallback: str | None = None         # fetched when the repo lacks `filename` (.bin for .safetensors)


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
    local_files: tuple[str, ...] = ()   # names of the upstream files that users download themselves
    confirmed: bool = True              # False: upstream documents no such file (a guessed name)
    condition: str = "class"            # what an image is asked for by: "class" or "text"
    # published text-to-image scores (benchmark -> score), from the model's own report
    benchmarks: dict = field(default_factory=dict)


# the tokenizer each family decodes with when a local transformer file comes without one
DEFAULT_AUTOENCODERS: dict[str, "Source"] = {}


LLAMAGEN_REPO = "FoundationVision/LlamaGen"
LLAMAGEN_VQ = Source(LLAMAGEN_REPO, "vq_ds16_c2i.pt")


def _llamagen(size: str, image_size: int, parameters: str, fid: float, fid_cfg: float) -> ModelCard:
    return ModelCard(
        alias=f"llamagen-c2i-{size.lower()}-{image_size}", family="llamagen",
        paradigm="next-token", size=size, image_size=image_size, parameters=parameters,
        transformer=Source(LLAMAGEN_REPO, f"c2i_{size}_{image_size}.pt"),
        autoencoder=LLAMAGEN_VQ, license="MIT", fid=fid,
        published=f"cfg {fid_cfg}, top-k 0, 50k samples at 256 px",
        sampling=LLAMAGEN.sampling,
        hints={"heads": LLAMAGEN.sizes[size][2], "image_size": image_size})


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


MASKGIT_REPO = "llvictorll/Halton-MaskGIT"


def _maskgit(size: str, image_size: int, parameters: str, fid: float, fid_w: float) -> ModelCard:
    """Halton-MaskGIT on LlamaGen's VQ-16 codes. Sampling defaults to upstream's published
    example (preset "halton": 32 steps, guidance s 3 = upstream's w 2, temperature 1.0 -> 1.2,
    randomised order); `--sampler halton-config` is its config file (s 4, w 3, no
    randomisation), `halton-eval` its FID script and `confidence` the MaskGIT confidence
    sampler. `--cfg` is s = 1 + w, as for every family."""
    return ModelCard(
        alias=f"maskgit-halton-{size[0]}-{image_size}", family="maskgit", paradigm="masked-token",
        size=size, image_size=image_size, parameters=parameters,
        transformer=Source(MASKGIT_REPO, f"ImageNet_{image_size}_{size}.pth"),
        autoencoder=LLAMAGEN_VQ, license="MIT", fid=fid,
        published=f"Halton sampler, 32 steps, cfg {1 + fid_w:g} (upstream's w {fid_w}, README "
                  "table)",
        sampling=MASKGIT.sampling,
        hints={"heads": MASKGIT.sizes[size][2], "image_size": image_size},
        # upstream's README documents only ImageNet_384_large.pth on the hub
        confirmed=(size, image_size) == ("large", 384))


DEFAULT_AUTOENCODERS["maskgit"] = LLAMAGEN_VQ

CARDS.update({card.alias: card for card in [
    _maskgit("tiny", 256, "23.0M", 10.2, 1.5),
    _maskgit("small", 256, "69.3M", 6.40, 1.0),
    _maskgit("base", 256, "142.2M", 4.17, 0.7),
    _maskgit("small", 384, "69.3M", 6.11, 1.0),
    _maskgit("base", 384, "142.2M", 4.15, 0.7),
    _maskgit("large", 384, "480.0M", 2.59, 0.5),
]})


# The Stable Diffusion VAE that DiT and SiT decode with. Its config.json predates diffusers'
# scaling_factor field; the KL loader applies diffusers' default, DiT's 0.18215.
def _sd_vae(name: str) -> Source:
    return Source(f"stabilityai/{name}", "diffusion_pytorch_model.safetensors", config="config.json",
                  fallback="diffusion_pytorch_model.bin")


# VAEs that `convert --autoencoder NAME` accepts by name
AUTOENCODER_SOURCES = {"sd-vae-ft-mse": _sd_vae("sd-vae-ft-mse"),
                       "sd-vae-ft-ema": _sd_vae("sd-vae-ft-ema")}
SD_VAE = AUTOENCODER_SOURCES["sd-vae-ft-mse"]  # upstream sample.py's default
DEFAULT_AUTOENCODERS["dit"] = DEFAULT_AUTOENCODERS["sit"] = SD_VAE


def _dit(image_size: int, fid: float) -> ModelCard:
    folder = "transformer/diffusion_pytorch_model"
    return ModelCard(
        alias=f"dit-xl-2-{image_size}", family="dit", paradigm="diffusion", size="XL/2",
        image_size=image_size, parameters="675M",
        transformer=Source(f"facebook/DiT-XL-2-{image_size}", f"{folder}.safetensors",
                           config="transformer/config.json", fallback=f"{folder}.bin"),
        autoencoder=SD_VAE, license=DIT.license, fid=fid,
        published="250 DDPM steps, cfg 1.5, sd-vae-ft-ema, 50k samples",
        sampling=DIT.sampling, hints={"image_size": image_size},
        local_files=(f"DiT-XL-2-{image_size}x{image_size}.pt",))


def _sit() -> ModelCard:
    # published only as a .pt behind a link in the SiT README, with no hub repo
    return ModelCard(
        alias="sit-xl-2-256", family="sit", paradigm="diffusion", size="XL/2", image_size=256,
        parameters="675M", transformer=Source(None, "SiT-XL-2-256.pt"), autoencoder=SD_VAE,
        license=SIT.license, fid=2.06, published="SDE (Euler-Maruyama), 250 steps, cfg 1.5",
        sampling=SIT.sampling, hints={"image_size": 256},
        local_files=("SiT-XL-2-256x256.pt",))


CARDS.update({card.alias: card for card in [_dit(256, 2.27), _dit(512, 3.04), _sit()]})


# Janus-Pro (deepseek-ai): the generation path of a multimodal Llama; its VQ-16 tokenizer sits
# in the same checkpoint, so the card's autoencoder is the transformer's own file
JANUS_LICENSE = JANUS.license


def _janus(size: str, parameters: str, weights: str, geneval: float, dpg: float) -> ModelCard:
    repo = Source(f"deepseek-ai/Janus-Pro-{size}", weights, config="config.json")
    return ModelCard(
        alias=f"janus-pro-{size.lower()}", family="janus", paradigm="next-token", size=size,
        image_size=384, parameters=parameters, transformer=repo, autoencoder=repo,
        license=JANUS_LICENSE,
        published="Janus-Pro technical report (published figures): GenEval overall, DPG-Bench",
        # no hints: heads, image size and RoPE come from the repo's config.json
        sampling=JANUS.sampling, condition="text",
        benchmarks={"GenEval": geneval, "DPG-Bench": dpg})


# parameters: the converted generation path (language model, gen_embed/aligner/head) and the
# VQ; the SigLIP tower and lm_head are not converted. 1B: one pytorch_model.bin (bf16); 7B: two
# .bin shards and their index (file names unconfirmed from here: the hub is not reachable)
CARDS.update({card.alias: card for card in [
    _janus("1B", "1.5B+72M VQ", "pytorch_model.bin", 0.73, 82.63),
    _janus("7B", "6.6B+72M VQ", "pytorch_model.bin.index.json", 0.80, 84.19),
]})


# aMUSEd (huggingface): a U-ViT over VQ-GAN codes, conditioned on CLIP-L/14's text tower; the
# hub repo is a diffusers pipeline whose transformer/, vqvae/, text_encoder/ and tokenizer/
# convert together (convert/amused.py), float32 weights or their .fp16 variant
def _amused(image_size: int, parameters: str) -> ModelCard:
    repo = f"amused/amused-{image_size}"

    def component(folder: str) -> Source:
        return Source(repo, f"{folder}/diffusion_pytorch_model.safetensors",
                      config=f"{folder}/config.json",
                      fallback=f"{folder}/diffusion_pytorch_model.fp16.safetensors")

    return ModelCard(
        alias=f"amused-{image_size}", family="amused", paradigm="masked-token",
        size=str(image_size), image_size=image_size, parameters=parameters,
        transformer=component("transformer"), autoencoder=component("vqvae"),
        license=AMUSED.license,
        published="aMUSEd (Patil et al. 2024): 12 steps, cosine schedule, guidance 10",
        sampling=AMUSED.sampling, condition="text")


# parameters: the U-ViT, the VQ-GAN's decoder and CLIP-L/14's text tower, counted on the
# published configs (mlx_imgen.memory.counted_parameters)
CARDS.update({card.alias: card for card in [
    _amused(256, "604M+88M VQ+124M text"),
    _amused(512, "608M+88M VQ+124M text"),
]})


# Sana (NVIDIA and MIT Han Lab): a linear-attention DiT on the 32x DC-AE's latents, conditioned
# on Gemma-2-2B-it; the hub repo is a diffusers pipeline whose transformer/, vae/, text_encoder/
# (sharded), tokenizer/ and scheduler/ convert together (convert/sana.py)
def _sana(size: str, image_size: int, repo_name: str, parameters: str, geneval: float,
          fid: float, clip_score: float) -> ModelCard:
    repo = f"Efficient-Large-Model/{repo_name}"

    def component(folder: str) -> Source:
        return Source(repo, f"{folder}/diffusion_pytorch_model.safetensors",
                      config=f"{folder}/config.json",
                      fallback=f"{folder}/diffusion_pytorch_model.fp16.safetensors")

    return ModelCard(
        alias=f"sana-{size}-{image_size}", family="sana", paradigm="diffusion", size=size,
        image_size=image_size, parameters=parameters, transformer=component("transformer"),
        autoencoder=component("vae"), license=SANA.license,
        published="Sana paper (Xie et al. 2024), its 512/1024 px table: GenEval overall, "
                  "FID and CLIP score on MJHQ-30K; 20 DPM-Solver++ steps, guidance 4.5",
        sampling=SANA.sampling, condition="text",
        benchmarks={"GenEval": geneval, "MJHQ FID": fid, "MJHQ CLIP": clip_score})


# parameters: the transformer, the DC-AE's decoder and Gemma-2-2B, counted on the published
# configs (mlx_imgen.memory.counted_parameters)
CARDS.update({card.alias: card for card in [
    _sana("0.6b", 512, "Sana_600M_512px_diffusers", "592M+159M DC-AE+2.6B text", 0.64, 5.67,
          27.92),
    _sana("1.6b", 1024, "Sana_1600M_1024px_diffusers", "1.6B+159M DC-AE+2.6B text", 0.66,
          5.76, 28.67),
]})


@dataclass(frozen=True)
class ScorerCard:
    """A model that scores images against prompts (CLIP), converted from its hub repo."""
    alias: str
    repo: str
    license: str
    parameters: str
    image_size: int
    kind: str = "clip"


SCORERS = {card.alias: card for card in [
    ScorerCard("clip-vit-large-patch14", "openai/clip-vit-large-patch14", "MIT", "428M", 224),
]}
DEFAULT_SCORER = "clip-vit-large-patch14"


def scorer_for(name: str) -> ScorerCard | None:
    """The scorer an alias or its hub repo id names."""
    return SCORERS.get(name) or next((c for c in SCORERS.values() if c.repo == name), None)


def get_card(alias: str) -> ModelCard:
    if alias in CARDS:
        return CARDS[alias]
    if alias in SCORERS:
        raise ValueError(f"{alias} is a CLIP scorer, not an image generator; use it with "
                         "`mlx-imgen score IMAGES... --prompt TEXT`")
    close = difflib.get_close_matches(alias, CARDS, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else "run `mlx-imgen models` for the list"
    raise ValueError(f"unknown model {alias!r}; {hint}")


def card_for_file(filename: str) -> ModelCard | None:
    """The card whose transformer file has this name (c2i_L_384.pt -> llamagen-c2i-l-384)."""
    for card in CARDS.values():
        if card.transformer.filename == filename or filename in card.local_files:
            return card
    return None
