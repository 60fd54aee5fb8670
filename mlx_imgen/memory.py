"""A memory estimate for a generation or a profile batch, checked before any model is loaded.

The estimate is deliberately simple, an upper-end figure rather than a measurement:

    total = weights + max(sampling, decoding) + kept

- weights: the pipeline folder's weight files (transformer, autoencoder, a text encoder); for
  an alias not converted yet, the transformer's parameters from its architecture (counted on
  the model's structure where it is not the backbone's) and a text encoder's, times the
  dtype's bytes, plus the autoencoder's parameters in float32.
- sampling, for a batch of B images, guided (2B rows through the transformer) with width D,
  MLP width F, H heads, depth L, T tokens of a forward pass, b bytes per activation value:
    next-token:   KV cache 2 * L * 2B * T * D * b, plus one token's activations and logits
                  (a text model's T is its prompt, TEXT_PREFIX_TOKENS unless known, plus
                  the image tokens: 576 for Janus-Pro at 384 px)
    masked-token: 2B * T * (8D + 2F) * b + 2B * H * T^2 * 4 (attention scores, float32)
                  + 2B * T * V * 4 (float32 logits over the V codes)
    diffusion:    as masked-token with the patch outputs instead of the logits
- decoding, for a decode batch Bd of S x S images: Bd * M * C * S^2 * 4, M float32 feature
  maps of the decoder's C full-resolution channels (128 for the autoencoders here): M = 8 on a
  GPU; M = 16 on MLX's CPU backend, whose convolutions unfold every 3x3 window (im2col) of a
  map first, in bands of rows (nn.BandedConv2d; measured: aMUSEd's VQ-GAN peaked at 0.62 GB an
  image at 256 px and 1.98 GB at 512, against 2.4 and 8.5 GB unbanded).
- kept: every image stays in memory until written, count * (2 * 3 S^2) bytes (the array and
  the PIL image), plus the sampled codes or latents.

The available memory is the accelerator's memory where MLX reports it, else the machine's
physical memory (os.sysconf).
"""

import os
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DECODER_FEATURE_MAPS = 8
DECODER_FEATURE_MAPS_CPU = 16
DECODER_CHANNELS = 128


@dataclass
class Estimate:
    weights: float
    sampling: float
    decoding: float
    kept: float

    @property
    def total(self) -> float:
        return self.weights + max(self.sampling, self.decoding) + self.kept

    def describe(self) -> str:
        return (f"about {self.total / GB:.1f} GB (weights {self.weights / GB:.1f}, sampling "
                f"{self.sampling / GB:.1f}, decoding {self.decoding / GB:.1f}, images kept "
                f"{self.kept / GB:.1f})")


def available_bytes() -> int:
    """The memory MLX can allocate: the GPU's where reported, else physical memory."""
    try:
        import mlx.core as mx

        if mx.default_device().type == mx.gpu:
            info = mx.device_info()
            for key in ("memory_size", "total_memory", "max_recommended_working_set_size"):
                if info.get(key):
                    return int(info[key])
    except (ImportError, AttributeError, RuntimeError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def counted_parameters(module) -> int:
    """Parameters of a module built but never evaluated: MLX initialises them lazily, so
    counting them computes nothing."""
    from mlx.utils import tree_flatten

    return sum(v.size for _, v in tree_flatten(module.parameters()))


def model_parameters(cfg, model_class=None) -> int:
    """Parameters of a family's transformer config: a BackboneConfig's from its shapes, another
    model's (aMUSEd's U-ViT) counted on its structure."""
    from .backbone import BackboneConfig

    if isinstance(cfg, BackboneConfig):
        return transformer_parameters(cfg)
    return counted_parameters(model_class(cfg))


def transformer_parameters(cfg) -> int:
    """Parameters of a BackboneConfig from its shapes (embeddings, blocks, head)."""
    d, f = cfg.width, cfg.hidden
    attention = 4 * d * d
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
    adaln = 6 * d * d if cfg.conditioning == "adaln" else 0
    if cfg.input == "tokens" and cfg.token_embed_dim:  # narrow codes and their aligner MLP
        e = cfg.token_embed_dim
        inputs = (cfg.vocab_size + 1) * e + e * d + d * d
    elif cfg.input == "tokens":
        inputs = (cfg.vocab_size + 1) * d
    else:
        inputs = cfg.patch_size ** 2 * cfg.in_channels * d
    condition = cfg.text_vocab_size * d if cfg.conditioning == "text" else \
        (cfg.num_classes + 1) * d
    head = d * cfg.head_hidden + cfg.head_hidden * cfg.output_dims if cfg.head_hidden else \
        d * cfg.output_dims
    return cfg.depth * (attention + mlp + adaln) + inputs + condition + head + cfg.num_tokens * d


# the prompt length a text model's estimate assumes when the caller knows no better: the
# template and BOS (about 12 tokens) and a long prompt
TEXT_PREFIX_TOKENS = 256


def sampling_bytes(cfg, paradigm: str, batch: int, activation_bytes: int,
                   prompt_tokens: int | None = None) -> float:
    """`prompt_tokens`: a text model's longest prompt in tokens (template included), which its
    KV cache holds beside the image tokens; TEXT_PREFIX_TOKENS where not given."""
    from .backbone import BackboneConfig

    # a model with its own config (aMUSEd's U-ViT): its transformer layers, and its logits
    layers = cfg if isinstance(cfg, BackboneConfig) else cfg.backbone()
    scores = cfg.output_dims if hasattr(cfg, "output_dims") else cfg.vocab_size
    rows, t, d, b = 2 * batch, layers.seq_len, layers.width, activation_bytes
    if layers.conditioning == "text":
        t += TEXT_PREFIX_TOKENS if prompt_tokens is None else prompt_tokens
    if paradigm == "next-token":
        kv_cache = 2 * layers.depth * rows * t * d * b
        return kv_cache + rows * ((8 * d + 2 * layers.hidden) * b + scores * 4)
    forward = rows * t * (8 * d + 2 * layers.hidden) * b + rows * layers.heads * t * t * 4
    return forward + rows * cfg.num_tokens * scores * 4


def decoding_bytes(image_size: int, decode_batch: int) -> float:
    from .devices import on_cpu

    maps = DECODER_FEATURE_MAPS_CPU if on_cpu() else DECODER_FEATURE_MAPS
    return decode_batch * maps * DECODER_CHANNELS * image_size ** 2 * 4



def kept_bytes(cfg, count: int, image_size: int) -> float:
    per_sample = cfg.num_tokens * 4 if cfg.input == "tokens" else \
        cfg.num_tokens * cfg.patch_size ** 2 * cfg.in_channels * 4
    return count * (2 * 3 * image_size ** 2 + per_sample)


@dataclass
class ModelShape:
    """What the estimate needs of a model, read without loading any weights."""
    config: object          # BackboneConfig
    paradigm: str
    image_size: int
    weight_bytes: float
    activation_bytes: int


def _folder_shape(folder: Path) -> ModelShape:
    from . import families
    from .autoencoders import AUTOENCODERS
    from .pipeline import refuse_unconverted
    from .weights.jsonfile import read_json
    from .weights.shards import weight_files

    index = read_json(folder / "model_index.json")
    refuse_unconverted(folder, index)
    try:
        t_config = read_json(folder / "transformer" / "config.json")
        ae_config = read_json(folder / "autoencoder" / "config.json")
        cfg = families.get(index["family"]).config_class.from_dict(t_config["backbone"])
        ae = AUTOENCODERS[ae_config["kind"]].config.from_dict(ae_config["config"])
        paradigm = index["paradigm"]
        dtype = t_config.get("dtype") or index.get("dtype") or "float32"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{folder} is not a complete pipeline folder ({type(err).__name__}: "
                         f"{err}); convert the model again") from None
    side = cfg.grid_size * cfg.patch_size if cfg.input == "patches" else cfg.grid_size
    weights = sum(f.stat().st_size for name in ("transformer", "autoencoder", "text_encoder")
                  if (folder / name).is_dir() for f in weight_files(folder / name))
    return ModelShape(cfg, paradigm, side * ae.downsample, weights, DTYPE_BYTES.get(dtype, 4))


def _autoencoder_bytes(kind: str) -> float:
    from mlx.utils import tree_flatten

    from .autoencoders import AUTOENCODERS

    auto = AUTOENCODERS[kind]
    model = auto.model(auto.config())  # lazy parameters: nothing is computed here
    return sum(v.size * 4 for _, v in tree_flatten(model.parameters()))


def _card_shape(alias: str, dtype: str) -> ModelShape:
    from . import families
    from .registry import get_card

    card = get_card(alias)
    family = families.get(card.family)
    cfg = family.config_for(card.size, card.image_size)
    weights = model_parameters(cfg, family.model_class) * DTYPE_BYTES[dtype] + \
        _autoencoder_bytes(family.autoencoder)
    if family.text_encoder is not None:  # a text tower of its own, in the same dtype
        from .text.stored import build_encoder

        weights += counted_parameters(build_encoder(*family.text_encoder)) * DTYPE_BYTES[dtype]
    return ModelShape(cfg, card.paradigm, card.image_size, weights, DTYPE_BYTES[dtype])


def model_shape(model: str, dtype: str) -> ModelShape:
    """The shape of a converted folder, of an alias's cached conversion, or of an alias."""
    from .loading import cache_root
    from .pipeline import INDEX_FILE

    path = Path(model)
    if (path / INDEX_FILE).is_file():
        return _folder_shape(path)
    cached = cache_root() / f"{model}-{dtype}"
    if not path.is_dir() and (cached / INDEX_FILE).is_file():
        return _folder_shape(cached)
    return _card_shape(model, dtype)


def generation_estimate(shape: ModelShape, count: int, batch: int, decode_batch: int,
                        prompt_tokens: int | None = None) -> Estimate:
    return Estimate(weights=shape.weight_bytes,
                    sampling=sampling_bytes(shape.config, shape.paradigm, batch,
                                            shape.activation_bytes, prompt_tokens),
                    decoding=decoding_bytes(shape.image_size, decode_batch),
                    kept=kept_bytes(shape.config, count, shape.image_size))


def grid_estimate(cfg, paradigm: str, batch: int) -> Estimate:
    """A controlled-grid workload in float32: transformer only, nothing decoded or kept."""
    return Estimate(weights=transformer_parameters(cfg) * 4,
                    sampling=sampling_bytes(cfg, paradigm, batch, 4), decoding=0, kept=0)


def refuse_if_too_big(estimate: Estimate, what: str, fix: str) -> None:
    available = available_bytes()
    if estimate.total > available:
        raise ValueError(f"{what} needs {estimate.describe()}, more than the "
                         f"{available / GB:.1f} GB of memory here; {fix}")
