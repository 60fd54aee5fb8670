"""Load a converted pipeline folder (or an alias, converted on first use) and generate images."""

import json
import os
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np
from PIL import Image

from . import families
from .autoencoders import AUTOENCODERS
from .backbone import BackboneConfig, Transformer
from . import paradigms
from .registry import CARDS, get_card

INDEX_FILE = "model_index.json"
WEIGHTS_FILE = "model.safetensors"


def cache_root() -> Path:
    if os.environ.get("MLX_IMGEN_CACHE"):
        return Path(os.environ["MLX_IMGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlx-imgen" / "models"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is missing or not valid JSON ({err}); convert the model again")


def _load_weights(module, folder: Path) -> None:
    weights = mx.load(str(folder / WEIGHTS_FILE))
    module.load_weights(list(weights.items()), strict=True)
    mx.eval(module.parameters())


class Pipeline:
    """Transformer + autoencoder + the paradigm's sampler, with the model's sampling defaults."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = read_json(self.folder / INDEX_FILE)
        self.family = families.get(self.index["family"])
        t_config = read_json(self.folder / "transformer" / "config.json")
        self.config = BackboneConfig.from_dict(t_config["backbone"])
        self.transformer = Transformer(self.config)
        _load_weights(self.transformer, self.folder / "transformer")
        ae_config = read_json(self.folder / "autoencoder" / "config.json")
        self.autoencoder_kind = AUTOENCODERS[ae_config["kind"]]
        self.autoencoder_config = self.autoencoder_kind.config.from_dict(ae_config["config"])
        self.autoencoder = self.autoencoder_kind.model(self.autoencoder_config)
        _load_weights(self.autoencoder, self.folder / "autoencoder")

    @property
    def paradigm(self) -> str:
        return self.index["paradigm"]

    @property
    def image_size(self) -> int:
        return self.config.grid_size * self.autoencoder_config.downsample

    def plan(self, **overrides):
        sampling = {**self.index["sampling"], **{k: v for k, v in overrides.items() if v is not None}}
        return self.family.make_plan(self.config, sampling), sampling

    def check_classes(self, classes: list[int]) -> None:
        bad = [c for c in classes if not 0 <= c < self.config.num_classes]
        if bad:
            raise ValueError(f"class id {bad[0]} is outside 0..{self.config.num_classes - 1}; "
                             "pass an ImageNet class index")

    def sample(self, labels: mx.array, plan, *, seed: int = 0,
               on_step: Callable[[int, int], None] | None = None) -> mx.array:
        """Codes (B, N) or latents (B, H, W, C) for `labels`, reporting progress per step."""
        return paradigms.generate(self.transformer, labels, plan, seed=seed, on_step=on_step)

    def decode(self, samples: mx.array) -> np.ndarray:
        """uint8 images (B, H, W, 3) from sampled codes."""
        if samples.ndim == 2:
            g = self.config.grid_size
            images = self.autoencoder.decode_codes(samples.reshape(-1, g, g))
        else:
            images = self.autoencoder.decode(samples)
        images = mx.clip((images.astype(mx.float32) + 1) * 127.5 + 0.5, 0, 255).astype(mx.uint8)
        return np.array(images)

    def generate(self, classes: list[int], *, seed: int = 0, batch_size: int | None = None,
                 on_step: Callable[[int, int], None] | None = None, **overrides) -> list[Image.Image]:
        self.check_classes(classes)
        plan, _ = self.plan(**overrides)
        batch_size = batch_size or len(classes)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        images = []
        for start in range(0, len(classes), batch_size):
            labels = mx.array(classes[start:start + batch_size], dtype=mx.int32)
            samples = self.sample(labels, plan, seed=seed + start, on_step=on_step)
            images += [Image.fromarray(a) for a in self.decode(samples)]
        return images


def resolve(model: str, *, dtype: str | None = None, revision: str | None = None) -> Path:
    """A pipeline folder for `model`: the folder itself, or the cached conversion of an alias."""
    path = Path(model)
    if (path / INDEX_FILE).is_file():
        return path
    if path.is_dir():
        raise ValueError(f"{path} is not a converted pipeline folder (no {INDEX_FILE}); "
                         "create one with `mlx-imgen convert`")
    if model not in CARDS:
        get_card(model)  # raises with suggestions
    from .convert.converter import convert, resolve_dtype

    folder = cache_root() / f"{model}-{resolve_dtype(dtype)}"
    if not (folder / INDEX_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        convert(model, folder, dtype=dtype, revision=revision, force=folder.exists())
    return folder


def load(model: str, *, dtype: str | None = None, revision: str | None = None) -> Pipeline:
    """`mlx_imgen.load("llamagen-c2i-l-384")` or `load("path/to/converted")`."""
    return Pipeline(resolve(model, dtype=dtype, revision=revision))
