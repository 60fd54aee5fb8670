"""A converted pipeline folder, loaded: transformer, autoencoder and the paradigm's sampler with
the model's sampling defaults (`mlx_imgen.load` converts an alias into such a folder first)."""

import dataclasses
import random
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np
from PIL import Image

from . import families, paradigms
from .autoencoders import AUTOENCODERS
from .devices import on_cpu
from .paradigms.keys import keys_of
from .prompts import Prompt, as_prompts, check_condition, image_seeds
from .quantize import apply_structure, quantization_record, quantize_model
from .registry import get_card
from .text.stored import build_encoder, load_text_encoder
from .text.stored import quantizable_layers as encoder_layers
from .version import __version__
from .weights.dtypes import DTYPES
from .weights.jsonfile import read_json
from .weights.shards import load_weights

INDEX_FILE = "model_index.json"
TOKENIZER_FOLDER = "tokenizer"
TEXT_ENCODER_FOLDER = "text_encoder"


def refuse_unconverted(path: Path, index: dict) -> None:
    """A folder with a model_index.json that is no image generator of ours: a diffusers
    pipeline (an aMUSEd repo as downloaded) or a CLIP scorer."""
    if "_class_name" in index:
        raise ValueError(f"{path} is a diffusers folder; convert it first with "
                         f"`mlx-imgen convert {path} --out DIR`")
    if index.get("kind") == "clip":
        raise ValueError(f"{path} is a CLIP scorer folder, not an image generator; use it "
                         "with `mlx-imgen score` (mlx_imgen.scoring.CLIPScorer)")


def _quoted(text: str, limit: int = 40) -> str:
    """A prompt as a message quotes it: its start, where it is long."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


class _RecordedReads(dict):
    """Sampling options that remember which keys a preset table's plan builder looked at."""

    def __init__(self, values: dict):
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def option_flag(key: str) -> str:
    """A sampling option as the CLI spells it: top_k -> --top-k."""
    return "--" + key.replace("_", "-")


def default_decode_batch(batch: int, requested: int | None = None,
                         low_memory: bool = False) -> int:
    """Images decoded together unless asked: one on the CPU (a batch decodes no faster there,
    and each image holds its unfolded convolution windows) or in low-memory mode, else the
    sampling batch."""
    if low_memory:
        return 1
    return requested or (1 if on_cpu() else batch)


def random_classes(seed: int, count: int, num_classes: int, first: int = 0) -> list[int]:
    """Classes of images `first`, ..., `first + count - 1` of a run without given classes.

    One generator seeded with `seed` shuffles every class into a round of `num_classes`
    images, then the next round: images in one round have distinct classes, and image i's
    class depends on (seed, i) alone, as its random numbers do.
    """
    rng, drawn = random.Random(seed), []
    skipped = first // num_classes * num_classes
    for start in range(0, first + count, num_classes):
        round_ = list(range(num_classes))
        rng.shuffle(round_)
        if start >= skipped:
            drawn += round_
    return drawn[first - skipped:first - skipped + count]


def _load_weights(module, folder: Path, quantization: dict | None = None) -> None:
    if quantization:
        apply_structure(module, quantization)  # the saved layers are already quantized
    module.load_weights(list(load_weights(folder).items()), strict=True)
    mx.eval(module.parameters())


class Pipeline:
    """Transformer + autoencoder + the paradigm's sampler, with the model's sampling defaults."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = read_json(self.folder / INDEX_FILE)
        self.family = families.get(self.index["family"])
        t_config = read_json(self.folder / "transformer" / "config.json")
        self.config = self.family.config_class.from_dict(t_config["backbone"])
        self.sources = {"transformer": t_config.get("source")}
        self.transformer = self.family.model_class(self.config)
        _load_weights(self.transformer, self.folder / "transformer", t_config.get("quantization"))
        ae_config = read_json(self.folder / "autoencoder" / "config.json")
        self.autoencoder_kind = AUTOENCODERS[ae_config["kind"]]
        self.sources["autoencoder"] = ae_config.get("source")
        self.autoencoder_config = self.autoencoder_kind.config.from_dict(ae_config["config"])
        self.autoencoder = self.autoencoder_kind.model(self.autoencoder_config)
        _load_weights(self.autoencoder, self.folder / "autoencoder")
        self.text_encoder = None  # a family with a text tower of its own (aMUSEd's CLIP)
        self.tokenizer_folder = self.folder / TOKENIZER_FOLDER
        if (self.folder / TEXT_ENCODER_FOLDER).is_dir():
            encoder_config = read_json(self.folder / TEXT_ENCODER_FOLDER / "config.json")
            self.sources[TEXT_ENCODER_FOLDER] = encoder_config.get("source")
            self.text_encoder = load_text_encoder(self.folder / TEXT_ENCODER_FOLDER)

    @classmethod
    def random(cls, alias: str, dtype: str = "float32", bits: int | None = None, *,
               text_bits: int | None = None, group_size: int = 64,
               tokenizer: Path | None = None) -> "Pipeline":
        """The alias's architecture with random weights, to profile a model without a download;
        with `bits`, its transformer quantized before any weight is computed, so that no float
        copy of it is ever held (Janus-Pro-7B in float32 would need 30 GB); `text_bits` does
        the same for a family's own text encoder (Sana's Gemma). `tokenizer`, a tokenizer
        folder, lets a text family's random pipeline read prompts."""
        card = get_card(alias)
        pipe = cls.__new__(cls)
        pipe.folder = None
        pipe.index = {"family": card.family, "paradigm": card.paradigm, "alias": card.alias,
                      "sampling": dict(card.sampling), "dtype": dtype, "quantization": None,
                      "random_weights": True}
        pipe.family = families.get(card.family)
        pipe.sources = {"transformer": None, "autoencoder": None}
        pipe.config = pipe.family.config_for(card.size, card.image_size)
        pipe.transformer = pipe.family.model_class(pipe.config)
        pipe.transformer.set_dtype(DTYPES[dtype])
        pipe.tokenizer_folder = None if tokenizer is None else Path(tokenizer)
        if bits:
            pipe.quantize(bits, group_size)
        pipe.autoencoder_kind = AUTOENCODERS[pipe.family.autoencoder]
        pipe.autoencoder_config = pipe.autoencoder_kind.config()
        pipe.autoencoder = pipe.autoencoder_kind.model(pipe.autoencoder_config)
        pipe.text_encoder = None  # a family's own text tower, at its published size
        if pipe.family.text_encoder is not None:
            pipe.text_encoder = build_encoder(*pipe.family.text_encoder)
            pipe.text_encoder.set_dtype(DTYPES[dtype])
            if text_bits:
                apply_structure(pipe.text_encoder, quantization_record(
                    text_bits, group_size, encoder_layers(pipe.text_encoder, group_size)))
            mx.eval(pipe.text_encoder.parameters())
        mx.eval(pipe.transformer.parameters(), pipe.autoencoder.parameters())
        return pipe

    def quantize(self, bits: int, group_size: int = 64) -> None:
        """Quantize the transformer in memory; the autoencoder stays in float."""
        if self.index.get("quantization"):
            raise ValueError(f"{self.folder} is already quantized "
                             f"({self.index['quantization']['bits']}-bit); load it without "
                             "--quantize")
        modules = quantize_model(self.transformer, bits, group_size)
        self.index = {**self.index, "quantization": quantization_record(bits, group_size, modules)}

    @property
    def paradigm(self) -> str:
        return self.index["paradigm"]

    @property
    def latent_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of a diffusion model's latents; None for a token model."""
        if self.config.input != "patches":
            return None
        side = self.config.grid_size * self.config.patch_size
        return (side, side, self.config.in_channels)

    @property
    def image_size(self) -> int:
        side = self.latent_shape[0] if self.latent_shape else self.config.grid_size
        return side * self.autoencoder_config.downsample

    def sample_shape(self, width: int | None = None, height: int | None = None):
        """The latent shape (H, W, C) of a `width` x `height` px image (None: the model's
        size). Only a model without position embeddings (Sana) samples other sizes; those must
        be multiples of the autoencoder's stride times the patch size."""
        if width is None and height is None:
            return self.latent_shape
        width, height = width or self.image_size, height or self.image_size
        if (width, height) == (self.image_size, self.image_size):
            return self.latent_shape
        if self.latent_shape is None or not getattr(self.config, "any_size", False):
            raise ValueError(f"{self.name} generates {self.image_size} x {self.image_size} px "
                             f"images only, not {width} x {height}; leave out --width and "
                             "--height")
        stride = self.autoencoder_config.downsample * self.config.patch_size
        for flag, value in (("--width", width), ("--height", height)):
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not whole or value < stride or value % stride:
                nearest = max(stride, round(value / stride) * stride) if whole else \
                    self.image_size
                raise ValueError(f"{flag} {value} is not a multiple of {stride} px (the "
                                 f"autoencoder's {self.autoencoder_config.downsample} px cells "
                                 f"times the patch size); pass one such as {nearest}")
        return (height // stride * self.config.patch_size, width // stride * self.config.patch_size,
                self.config.in_channels)

    def plan(self, **overrides):
        """The sampling plan of the model's defaults with `overrides` (None: the default), and
        the options it was made from. An override the family's plan never reads (a sampler
        for a model with one, top-p for a diffusion model) is refused, not ignored."""
        given = {k: v for k, v in overrides.items() if v is not None}
        sampling = _RecordedReads({**self.index["sampling"], **given})
        plan = self.family.make_plan(self.config, sampling)
        unused = [key for key in given if key not in sampling.read]
        if unused:
            raise ValueError(f"{option_flag(unused[0])} does not apply to "
                             f"{self.index['family']} ({self.paradigm}) models; leave it out")
        return plan, dict(sampling)

    @property
    def name(self) -> str:
        """How messages name the model: its alias, else its folder."""
        return self.index.get("alias") or str(self.folder or self.family.name)

    def provenance(self, plan, sampling: dict, *, seed: int,
                   prompts: list[Prompt] | None = None) -> dict:
        """What regenerates a run's images, JSON-ready: the model's files (source and sha256),
        dtype, quantization, the software's versions, the seed, the sampling options and the
        plan they made, and a text model's prompts. Image i of the run is regenerated alone by
        `generate([its class], seed=seed, first_index=i, **sampling)`."""
        quant = self.index.get("quantization")
        text = {"prompts": [p.record() for p in prompts]} if prompts is not None else {}
        return {**text,
            "family": self.index["family"], "paradigm": self.paradigm,
            "alias": self.index.get("alias"),
            "transformer_source": self.sources.get("transformer"),
            "autoencoder_source": self.sources.get("autoencoder"),
            **({"text_encoder_source": self.sources[TEXT_ENCODER_FOLDER]}
               if TEXT_ENCODER_FOLDER in self.sources else {}),
            "random_weights": bool(self.index.get("random_weights")),
            "dtype": self.index.get("dtype"),
            "quantization": {"bits": quant["bits"], "group_size": quant["group_size"],
                             "mode": quant.get("mode", "affine")} if quant else None,
            "converted_with": self.index.get("mlx_imgen_version"),
            "mlx_imgen_version": __version__, "mlx_version": mx.__version__,
            "seed": seed, "sampling": dict(sampling), "plan": dataclasses.asdict(plan),
        }

    def random_classes(self, count: int, *, seed: int, first: int = 0) -> list[int]:
        """Classes for images `first`, ... of a run with `seed` (see `random_classes`)."""
        return random_classes(seed, count, self.config.num_classes, first)

    def check_classes(self, classes: list[int]) -> None:
        bad = [c for c in classes if not 0 <= c < self.config.num_classes]
        if bad:
            raise ValueError(f"class id {bad[0]} is outside 0..{self.config.num_classes - 1}; "
                             "pass an ImageNet class index")

    def sample(self, labels: mx.array, plan, *, seed: int = 0, first_index: int = 0,
               on_step: Callable[[int, int], None] | None = None,
               noise: mx.array | None = None) -> mx.array:
        """Codes (B, N) or latents (B, H, W, C) for `labels`, the images `first_index`, ... of
        the run with `seed`, reporting progress per step. Each image's random numbers come
        from (seed, its index) alone (`paradigms.keys`). Diffusion starts from `noise`, or from
        noise of the latent shape drawn so."""
        extra = {}
        if self.paradigm == "diffusion":
            extra = {"latent_shape": self.latent_shape, "noise": noise}
        return paradigms.generate(self.transformer, labels, plan, seed=seed,
                                  first_index=first_index, on_step=on_step, **extra)

    @property
    def prompting(self):
        """The family's prompt rows from the folder's tokenizer, read on first use."""
        if getattr(self, "_prompting", None) is None:
            folder = self.tokenizer_folder
            if folder is None or not folder.is_dir():
                where = f"{self.folder} has no {TOKENIZER_FOLDER}/ folder" if self.folder else \
                    "a random-weight pipeline has no tokenizer"
                raise ValueError(f"{where}, so it cannot read prompts; convert the model again "
                                 "(conversion copies the repo's tokenizer)")
            self._prompting = self.family.prompting(folder)
        return self._prompting

    def text_condition(self, entries: list[Prompt], plan):
        """The sampler condition of a batch of images, one Prompt each, built by the family's
        prompting from the pipeline's parts (Janus-Pro: a text prefix; aMUSEd: CLIP text
        states for cross-attention). Every distinct (prompt, negative prompt) pair is one row
        pair, computed once for all its images."""
        pairs = list(dict.fromkeys((p.text, p.negative) for p in entries))
        images = [pairs.index((p.text, p.negative)) for p in entries]
        return self.prompting.condition(
            pairs, None if images == list(range(len(pairs))) else images,
            names=[f"the prompt {_quoted(text)}" for text, _ in pairs], plan=plan,
            config=self.config, text_encoder=self.text_encoder)

    def check_noise(self, noise: mx.array, count: int, shape=None) -> None:
        expected = (count, *(shape or self.latent_shape))
        if tuple(noise.shape) == expected:
            return
        p = self.config.patch_size
        if noise.ndim == 4 and (noise.shape[1] % p or noise.shape[2] % p):
            raise ValueError(f"the noise's latent size {noise.shape[1]}x{noise.shape[2]} is not "
                             f"a multiple of the patch size {p}; this model takes "
                             f"{expected[1]}x{expected[2]} latents")
        raise ValueError(f"the noise has shape {tuple(noise.shape)}, but this model samples "
                         f"{expected} for {count} images of "
                         f"{expected[2] * self.autoencoder_config.downsample} x "
                         f"{expected[1] * self.autoencoder_config.downsample} px")

    def decode_samples(self, samples: mx.array) -> mx.array:
        """Images (B, H, W, 3) in [-1, 1] from sampled codes (B, N) or latents (B, H, W, C)."""
        if samples.ndim == 2:
            g = self.config.grid_size
            return self.autoencoder.decode_codes(samples.reshape(-1, g, g))
        if self.paradigm == "diffusion":  # samplers work on scaled latents
            return self.autoencoder.decode_latents(samples)
        return self.autoencoder.decode(samples)

    def decode_flops_per_image(self) -> float:
        g = self.latent_shape[0] if self.latent_shape else self.config.grid_size
        return self.autoencoder_kind.decode_flops(self.autoencoder_config, g, g)

    def decode(self, samples: mx.array) -> np.ndarray:
        """uint8 images (B, H, W, 3) from sampled codes or latents."""
        images = self.decode_samples(samples).astype(mx.float32)
        return np.array(mx.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(mx.uint8))

    def generate(self, classes: list[int] | None = None, *,
                 prompts: list[str | Prompt] | None = None, negative_prompt: str | None = None,
                 seed: int = 0, first_index: int = 0, batch_size: int | None = None,
                 on_step: Callable[[int, int], None] | None = None, low_memory: bool = False,
                 noise: mx.array | None = None, image_size: int | None = None,
                 decode_batch_size: int | None = None, plan=None, width: int | None = None,
                 height: int | None = None, **overrides) -> list[Image.Image]:
        """Sample and decode one image per class id, the images `first_index`, ... of the run
        with `seed`: image i draws its random numbers from (seed, i) alone, so `batch_size`
        does not change the images and `first_index` regenerates one alone. `low_memory` frees
        the text encoder once the prompts are encoded and the transformer before decoding (the
        pipeline cannot sample again), decodes one image at a time and keeps MLX's buffer
        cache small. Diffusion takes explicit initial `noise` (one latent per
        class); `image_size` only confirms the model's; `decode_batch_size` sets how many
        images decode together (default: the sampling batch). `plan` (from `self.plan`) replaces
        the overrides, so a caller can keep the plan it ran (dopri5 records its steps there).
        A text-to-image family takes `prompts` (one image each; a Prompt's own seed and
        negative prompt win over `seed` and `negative_prompt`) instead of `classes`. `width`
        and `height` (px) ask a model without position embeddings (Sana) for another size."""
        check_condition(self.name, self.family.condition, classes=classes, prompts=prompts,
                        negative=negative_prompt)
        entries = None
        if self.family.condition == "text":
            entries = as_prompts(prompts or [], negative_prompt)
            if self.family.prompting is None:
                raise ValueError(f"{self.name}: {self.family.title} has no text-to-image "
                                 f"sampler in mlx-imgen {__version__}")
        elif classes is None:
            raise ValueError(f"{self.name} is a class-conditional model: pass classes "
                             "(ImageNet ids)")
        else:
            self.check_classes(classes)
        count = len(entries if entries is not None else classes)
        if first_index < 0:
            raise ValueError(f"the first image's index must be 0 or more, got {first_index}")
        if image_size is not None and image_size != self.image_size:
            raise ValueError(f"this model generates {self.image_size} px images, not "
                             f"{image_size} px; use the model trained at {image_size} px")
        shape = self.sample_shape(width, height)
        if noise is not None:
            if self.paradigm != "diffusion":
                raise ValueError(f"{self.paradigm} sampling starts from no noise; pass a seed")
            self.check_noise(noise, count, shape)
        if decode_batch_size is not None and decode_batch_size < 1:
            raise ValueError(f"decode batch size must be at least 1, got {decode_batch_size}")
        plan = plan or self.plan(**overrides)[0]
        batch_size = batch_size or count
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if self.transformer is None:
            raise ValueError("this pipeline released its transformer (low-memory mode); load "
                             "it again to generate more images")
        batches = range(0, count, batch_size)
        if entries is not None:
            # every prompt is tokenized and checked before the first image is sampled
            conditions = [self.text_condition(entries[start:start + batch_size], plan)
                          for start in batches]
            keys = image_seeds(entries, seed=seed, first_index=first_index)
        if low_memory:
            mx.set_cache_limit(256 * 1024 ** 2)
            if entries is not None and self.text_encoder is not None:
                # every prompt is encoded: sampling and decoding get the encoder's memory
                mx.eval([c.arguments(self.transformer, False) for c in conditions])
                self.text_encoder = None
                mx.clear_cache()
        samples = []
        for n, start in enumerate(batches):
            if entries is not None:
                extra = {} if shape is None else {
                    "latent_shape": shape,
                    "noise": None if noise is None else noise[start:start + batch_size]}
                batch = paradigms.generate(self.transformer, conditions[n], plan,
                                           key=keys_of(keys[start:start + batch_size]),
                                           on_step=on_step, **extra)
            else:
                labels = mx.array(classes[start:start + batch_size], dtype=mx.int32)
                batch = self.sample(labels, plan, seed=seed, first_index=first_index + start,
                                    on_step=on_step,
                                    noise=None if noise is None else noise[start:start + batch_size])
            mx.eval(batch)
            samples.append(batch)
        if low_memory:
            self.transformer = None
            mx.clear_cache()
        decode_batch = default_decode_batch(batch_size, decode_batch_size, low_memory)
        images = []
        for batch in samples:
            for start in range(0, batch.shape[0], decode_batch):
                images += [Image.fromarray(a) for a in self.decode(batch[start:start + decode_batch])]
        return images
