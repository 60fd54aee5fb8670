"""CLIP score, as torchmetrics defines it: 100 x the cosine of the L2-normalised image and text
features of each image-prompt pair, and their mean clamped at 0 (per-image values are left
unclamped, so a negative pair stays visible).

`CLIPScorer.load("clip-vit-large-patch14")` converts the alias into the model cache on first use
(as `mlx_imgen.load` does for image models) and reuses it after that; a converted CLIP folder
loads as it is."""

import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from PIL import Image

from .convert import clip as clip_convert
from .convert import converter
from .io import exclusive_target
from .loading import cache_root
from .pipeline import INDEX_FILE
from .prompts import check_prompt
from .registry import DEFAULT_SCORER, SCORERS, scorer_for
from .text.clip import CLIPModel
from .text.clip_images import preprocess
from .text.stored import load_image_encoder, load_text_encoder
from .text.tokenizer import PromptTokenizer
from .weights.dtypes import resolve_dtype
from .weights.jsonfile import read_json

DEFAULT_BATCH_SIZE = 16


@dataclass
class ScoreResult:
    per_image: list[float]      # 100 x cosine of each pair, unclamped
    mean: float                 # the mean over the pairs, clamped at 0
    truncated: list[str]        # each prompt's text cut off its end ("" where none)


def clip_score(image_features: mx.array, text_features: mx.array) -> tuple[list[float], float]:
    """(per-pair scores, clamped mean) of matching rows of image and text features."""
    image = image_features / mx.linalg.norm(image_features, axis=-1, keepdims=True)
    text = text_features / mx.linalg.norm(text_features, axis=-1, keepdims=True)
    per_image = (100 * mx.sum(image.astype(mx.float32) * text.astype(mx.float32), axis=-1)).tolist()
    mean = max(float(np.mean(per_image)), 0.0) if per_image else 0.0
    return per_image, mean


def open_image(image: "Image.Image | str | os.PathLike") -> Image.Image:
    """An image fully decoded (PIL reads lazily: a truncated file fails here, not later), in
    its own mode (the preprocessing composites transparency over white, as CLIP's does); a
    path that is not a readable image raises ValueError naming it."""
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"{path} {what}; pass the path of an image file")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()  # the copy outlives the file
    except Image.DecompressionBombError:
        raise ValueError(f"{path} is too large an image for PIL to open safely; pass a smaller "
                         "image") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path} is not a readable image ({err}); pass a PNG, JPEG or other "
                         "image file that is complete") from None


def resolve_scorer(name: str, *, dtype: str | None = None, revision: str | None = None) -> Path:
    """A converted CLIP folder for `name`: the folder itself, or the cached conversion of the
    scorer alias (or of a CLIP hub repo id)."""
    path = Path(name)
    if (path / INDEX_FILE).is_file():
        index = read_json(path / INDEX_FILE)
        if index.get("kind") != clip_convert.KIND:
            raise ValueError(f"{path} is an image-generator folder, not a CLIP scorer; pass a "
                             f"folder converted from a CLIP repo, or {DEFAULT_SCORER}")
        if dtype is not None and resolve_dtype(dtype) != index.get("dtype"):
            raise ValueError(f"{path} holds {index.get('dtype')} weights; a dtype applies to a "
                             "scorer converted on first use: leave it out, or convert the folder "
                             f"again with --dtype {dtype}")
        return path
    if path.is_dir():
        if clip_convert.is_clip_folder(path):
            raise ValueError(f"{path} is a CLIP repo folder; convert it first with "
                             f"`mlx-imgen convert {path} --out DIR`, then pass DIR")
        raise ValueError(f"{path} is not a converted CLIP folder (no {INDEX_FILE}); create one "
                         f"with `mlx-imgen convert {DEFAULT_SCORER} --out DIR`")
    if name not in SCORERS and not clip_convert.is_clip_source(name):
        raise ValueError(f"unknown scorer {name!r}; use {' or '.join(SCORERS)}, a CLIP hub repo "
                         "id, or a converted CLIP folder")
    card = scorer_for(name)  # the alias and its repo id share one cached conversion
    if card is not None:
        name = card.alias
    folder = cache_root() / f"{name.replace('/', '--')}-{resolve_dtype(dtype)}"
    if not (folder / INDEX_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # a second process asking for the same scorer waits for the first one's conversion
        with exclusive_target(folder, wait=True):
            if not (folder / INDEX_FILE).is_file():
                converter.convert(name, folder, dtype=dtype, revision=revision,
                                  force=folder.exists())
    return folder


class CLIPScorer:
    """CLIP's two towers, its tokenizer and its image preprocessing, scoring image-prompt pairs."""

    def __init__(self, folder: Path, model: CLIPModel, tokenizer: PromptTokenizer,
                 processor: dict):
        self.folder = Path(folder)
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor

    @classmethod
    def load(cls, name_or_folder: str | os.PathLike = DEFAULT_SCORER, *,
             dtype: str | None = None, revision: str | None = None) -> "CLIPScorer":
        """The scorer alias (converted into the model cache on first use), a CLIP hub repo id,
        or a converted CLIP folder."""
        folder = resolve_scorer(str(name_or_folder), dtype=dtype, revision=revision)
        model = CLIPModel.from_towers(load_text_encoder(folder / "text_encoder"),
                                      load_image_encoder(folder / "image_encoder"))
        processor = read_json(folder / "image_processor" / clip_convert.PROCESSOR_FILE)
        return cls(folder, model, PromptTokenizer.from_folder(folder / "tokenizer"), processor)

    def score(self, images: list, prompts: list[str],
              batch_size: int = DEFAULT_BATCH_SIZE) -> ScoreResult:
        """CLIP score of image i against prompt i (a single prompt scores every image). A prompt
        longer than the text tower takes is truncated, with the tokenizer's warning."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for i, prompt in enumerate(prompts):
            check_prompt(prompt, f"prompt {i + 1}" if len(prompts) > 1 else "the prompt")
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images and {len(prompts)} prompts: give one prompt "
                             "for every image, or a single prompt for all of them")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        # each distinct prompt encoded once: one warning per long prompt, not per image
        unique = list(dict.fromkeys(prompts))
        text, truncated = self._encode_texts(unique)
        row = {prompt: i for i, prompt in enumerate(unique)}
        rows = [row[prompt] for prompt in prompts]
        per_image, mean = clip_score(self.image_features(images, batch_size=batch_size),
                                     text[mx.array(rows)] if rows else text)
        return ScoreResult(per_image, mean, [truncated[i] for i in rows])

    def image_features(self, images: list, batch_size: int = DEFAULT_BATCH_SIZE) -> mx.array:
        """The L2-normalised float32 CLIP features (N, D) of images (PIL images or paths),
        preprocessed and encoded `batch_size` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        features = []
        for start in range(0, len(images), batch_size):
            pixels = preprocess([open_image(image) for image in images[start:start + batch_size]],
                                self.processor)
            features.append(self.model.image_features(pixels))
            mx.eval(features[-1])  # one batch's activations alive at a time
        if not features:
            return mx.zeros((0, self.model.vision.config.projection_dim), mx.float32)
        return mx.concatenate(features, axis=0)

    def text_features(self, texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE) -> mx.array:
        """The L2-normalised float32 CLIP features (M, D) of texts, row i for text i; a text
        longer than the text tower takes is truncated, with the tokenizer's warning."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(texts):
            check_prompt(text, f"text {i + 1}" if len(texts) > 1 else "the text")
        return self._encode_texts(texts, batch_size)[0]

    def _encode_texts(self, texts: list[str],
                      batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[mx.array, list[str]]:
        """(features (M, D), each text's truncated end) of already-checked texts."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if not texts:
            return mx.zeros((0, self.model.text.config.projection_dim), mx.float32), []
        # a tokenizer folder that names no model_max_length: the text tower's positions
        tokens = self.tokenizer(texts, max_length=self.tokenizer.max_length
                                or self.model.text.config.max_positions)
        features = []
        for start in range(0, len(texts), batch_size):
            features.append(self.model.text_features(
                mx.array(tokens.input_ids[start:start + batch_size]),
                mx.array(tokens.attention_mask[start:start + batch_size])))
            mx.eval(features[-1])
        return mx.concatenate(features, axis=0), list(tokens.truncated)
