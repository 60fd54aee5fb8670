"""CLIP's text and image towers on the shared backbone's Block: the text tower serves aMUSEd
(penultimate hidden states, projected pooled features) and the CLIP scorer; the image tower the
scorer. Configurations come from a hub config.json (`configs_from_hf`); weights from
clip_keys.py."""

from dataclasses import dataclass
from typing import ClassVar

import mlx.core as mx
import mlx.nn as nn

from ..backbone import BackboneConfig, Block
from ..configs import DictConfig
from ..nn import LearnedPositions, PatchEmbed
from .encoder import TextEncoding

# transformers' hidden_act names -> the backbone's MLP kinds
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh"}
# configs saved before transformers fixed CLIP's eos id say 2; those models pool at the largest
# token id, which is the end-of-text token in CLIP's vocabulary
LEGACY_EOS_ID = 2


@dataclass
class _TowerConfig(DictConfig):
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    activation: str = "quick_gelu"     # a backbone MLP kind: "quick_gelu" | "gelu" | "gelu_tanh"
    norm_eps: float = 1e-5
    projection_dim: int | None = None  # None: no projection (CLIPTextModel, CLIPVisionModel)
    _sizes: ClassVar[tuple[str, ...]] = ()  # more fields that must be positive integers

    def __post_init__(self):
        for name in ("width", "depth", "heads", "mlp_hidden", *self._sizes):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, "
                                 f"got {value!r}; fix the model's config.json")
        if self.projection_dim is not None and (not isinstance(self.projection_dim, int)
                                                or self.projection_dim < 1):
            raise ValueError(f"{type(self).__name__}.projection_dim must be a positive integer, "
                             f"got {self.projection_dim!r}; fix the model's config.json")
        if self.width % self.heads:
            raise ValueError(f"{type(self).__name__}: width {self.width} is not divisible by "
                             f"{self.heads} heads; fix the model's config.json")
        if self.activation not in set(ACTIVATIONS.values()):
            raise ValueError(f"{type(self).__name__}.activation {self.activation!r} is not one of "
                             f"{', '.join(sorted(set(ACTIVATIONS.values())))}")
        if not isinstance(self.norm_eps, (int, float)) or not 0 < self.norm_eps < 1:
            raise ValueError(f"{type(self).__name__}.norm_eps must be a small positive number, "
                             f"got {self.norm_eps!r}; fix the model's config.json")

    def backbone(self, causal: bool) -> BackboneConfig:
        return BackboneConfig(depth=self.depth, width=self.width, heads=self.heads,
                              mlp=self.activation, mlp_hidden=self.mlp_hidden, norm="layer",
                              norm_eps=self.norm_eps, fused_qkv=False, qkv_bias=True,
                              out_bias=True, causal=causal)


@dataclass
class CLIPTextConfig(_TowerConfig):
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_hidden: int = 2048
    max_positions: int = 77
    vocab_size: int = 49408
    eos_token_id: int = 49407     # LEGACY_EOS_ID pools at the largest id instead
    _sizes = ("max_positions", "vocab_size")


# openai/clip-vit-large-patch14's text tower with its projection: aMUSEd's text encoder
CLIP_L14_TEXT = CLIPTextConfig(width=768, depth=12, heads=12, mlp_hidden=3072,
                               projection_dim=768)


@dataclass
class CLIPVisionConfig(_TowerConfig):
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_hidden: int = 3072
    image_size: int = 224
    patch_size: int = 32
    channels: int = 3
    _sizes = ("image_size", "patch_size", "channels")

    def __post_init__(self):
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPVisionConfig: image size {self.image_size} is not a multiple "
                             f"of the patch size {self.patch_size}; fix the model's config.json")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


def configs_from_hf(config: dict) -> tuple[CLIPTextConfig | None, CLIPVisionConfig | None]:
    """The towers' configs from a hub config.json: a CLIPConfig (both), a CLIPTextConfig
    (`clip_text_model`) or a CLIPVisionConfig (`clip_vision_model`); None for a tower it lacks.
    Values it omits take transformers' defaults. A text or vision model has a projection when
    its architecture is the ...WithProjection one."""
    kind = config.get("model_type")
    if kind == "clip":
        projection = config.get("projection_dim", 512)
        return (_text_config(config.get("text_config") or {}, projection),
                _vision_config(config.get("vision_config") or {}, projection))
    if kind not in ("clip_text_model", "clip_vision_model"):
        raise ValueError(f"config.json describes a {kind!r} model, not CLIP (model_type 'clip', "
                         "'clip_text_model' or 'clip_vision_model'); pass a CLIP model")
    projected = any("WithProjection" in str(a) for a in config.get("architectures") or ())
    projection = config.get("projection_dim", 512) if projected else None
    if kind == "clip_text_model":
        return _text_config(config, projection), None
    return None, _vision_config(config, projection)


def _tower_values(hf: dict, what: str, defaults: dict) -> dict:
    act = hf.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"the {what} config's hidden_act {act!r} is not one CLIP uses "
                         f"({', '.join(ACTIVATIONS)}); pass a CLIP model")
    get = lambda key: hf.get(key, defaults[key])  # noqa: E731
    return dict(width=get("hidden_size"), depth=get("num_hidden_layers"),
                heads=get("num_attention_heads"), mlp_hidden=get("intermediate_size"),
                activation=ACTIVATIONS[act], norm_eps=hf.get("layer_norm_eps", 1e-5))


def _text_config(hf: dict, projection: int | None) -> CLIPTextConfig:
    eos = hf.get("eos_token_id", 49407)
    if isinstance(eos, bool) or not isinstance(eos, int):
        raise ValueError(f"the text config's eos_token_id must be one integer, got {eos!r}")
    defaults = dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                    intermediate_size=2048)
    return CLIPTextConfig(**_tower_values(hf, "text", defaults), projection_dim=projection,
                          max_positions=hf.get("max_position_embeddings", 77),
                          vocab_size=hf.get("vocab_size", 49408), eos_token_id=eos)


def _vision_config(hf: dict, projection: int | None) -> CLIPVisionConfig:
    sizes = {}
    for key, default in (("image_size", 224), ("patch_size", 32)):
        value = hf.get(key, default)
        if isinstance(value, (list, tuple)):  # transformers also writes [h, w]
            if len(value) != 2 or value[0] != value[1]:
                raise ValueError(f"the vision config's {key} {value!r} is not square; CLIP's "
                                 "image tower takes square images")
            value = value[0]
        sizes[key] = value
    defaults = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072)
    return CLIPVisionConfig(**_tower_values(hf, "vision", defaults), projection_dim=projection,
                            channels=hf.get("num_channels", 3), **sizes)


def _mask(causal: bool, length: int, attention_mask: mx.array | None, dtype) -> mx.array | str | None:
    """The attention mask: causal and/or padded keys masked. Masked scores get the dtype's
    lowest finite value, not -inf, so a query that sees only padding averages instead of NaN."""
    if attention_mask is None:
        return "causal" if causal and length > 1 else None
    keep = (attention_mask != 0)[:, None, None, :]
    if causal:
        keep = keep & (mx.arange(length)[None] <= mx.arange(length)[:, None])
    return mx.where(keep, mx.array(0, dtype), mx.array(mx.finfo(dtype).min, dtype))


class CLIPTextTower(nn.Module):
    """Token and learned position embeddings, causal pre-norm blocks, a final LayerNorm; the
    pooled vector is the final output at the end-of-text token, projected if there is a
    projection. Implements text.encoder.TextEncoder."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.config = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = LearnedPositions(cfg.max_positions, cfg.width)
        self.blocks = [Block(cfg.backbone(causal=True)) for _ in range(cfg.depth)]
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        if cfg.projection_dim:
            self.projection = nn.Linear(cfg.width, cfg.projection_dim, bias=False)

    def _layer_index(self, layer: int) -> int:
        count = self.config.depth + 1
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(f"layer {layer!r} does not exist: this CLIP text tower has hidden "
                             f"states 0..{count - 1} (or -{count}..-1)")
        return layer % count

    def pool_positions(self, input_ids: mx.array) -> mx.array:
        """Where each prompt's end-of-text token is: the largest id for legacy configs, else the
        first eos id (padding may repeat it)."""
        if self.config.eos_token_id == LEGACY_EOS_ID:
            return mx.argmax(input_ids, axis=-1)
        return mx.argmax((input_ids == self.config.eos_token_id).astype(mx.int32), axis=-1)

    def encode(self, input_ids: mx.array, attention_mask: mx.array | None = None, *,
               layer: int | None = None) -> TextEncoding:
        cfg = self.config
        input_ids = mx.array(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[1] > cfg.max_positions:
            raise ValueError(f"the CLIP text tower takes (batch, at most {cfg.max_positions}) "
                             f"token ids, got shape {tuple(input_ids.shape)}; truncate the prompts")
        if attention_mask is not None:
            attention_mask = mx.array(attention_mask)
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"the attention mask's shape {tuple(attention_mask.shape)} is "
                                 f"not the token ids' {tuple(input_ids.shape)}")
        wanted = None if layer is None else self._layer_index(layer)
        length = input_ids.shape[1]
        h = self.token_embed(input_ids)
        h = h + self.pos_embed(0, length).astype(h.dtype)
        mask = _mask(True, length, attention_mask, h.dtype)
        chosen = h if wanted == 0 else None
        for i, block in enumerate(self.blocks, start=1):
            h = block(h, mask=mask)
            if i == wanted:
                chosen = h
        h = self.norm(h)
        pooled = h[mx.arange(h.shape[0]), self.pool_positions(input_ids)]
        if "projection" in self:
            pooled = self.projection(pooled)
        return TextEncoding(h if chosen is None else chosen, attention_mask, pooled)

    def __call__(self, input_ids, attention_mask=None) -> mx.array:
        return self.encode(input_ids, attention_mask).pooled


class CLIPVisionTower(nn.Module):
    """Patches (a bias-free conv), a class token, learned positions, a LayerNorm before the
    blocks and one on the class token after them, and the projection."""

    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.channels, cfg.width, cfg.patch_size, bias=False)
        self.class_embed = mx.zeros((cfg.width,))
        self.pos_embed = LearnedPositions(cfg.grid_size ** 2 + 1, cfg.width)
        self.pre_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.blocks = [Block(cfg.backbone(causal=False)) for _ in range(cfg.depth)]
        self.post_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        if cfg.projection_dim:
            self.projection = nn.Linear(cfg.width, cfg.projection_dim, bias=False)

    def __call__(self, pixels: mx.array) -> mx.array:
        """(B, H, W, C) preprocessed pixels -> (B, projection_dim) image features (the pooled
        class token where there is no projection)."""
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.channels)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(f"the CLIP image tower takes (batch, {', '.join(map(str, expected))}) "
                             f"pixels, got shape {tuple(pixels.shape)}; preprocess the images")
        h = self.patch_embed(pixels.astype(self.class_embed.dtype))
        cls = mx.broadcast_to(self.class_embed.astype(h.dtype), (h.shape[0], 1, cfg.width))
        h = mx.concatenate([cls, h], axis=1) + self.pos_embed(0, h.shape[1] + 1).astype(h.dtype)
        h = self.pre_norm(h)
        for block in self.blocks:
            h = block(h)
        pooled = self.post_norm(h[:, 0])
        return self.projection(pooled) if "projection" in self else pooled


def _normalised(x: mx.array) -> mx.array:
    x = x.astype(mx.float32)
    return x / mx.linalg.norm(x, axis=-1, keepdims=True)


class CLIPModel(nn.Module):
    """Both towers, with the L2-normalised features CLIP score compares (float32)."""

    def __init__(self, text: CLIPTextConfig, vision: CLIPVisionConfig):
        super().__init__()
        if not text.projection_dim or text.projection_dim != vision.projection_dim:
            raise ValueError(f"CLIP's towers must project to one width; the text tower gives "
                             f"{text.projection_dim}, the image tower {vision.projection_dim}")
        self.text = CLIPTextTower(text)
        self.vision = CLIPVisionTower(vision)

    @classmethod
    def from_towers(cls, text: CLIPTextTower, vision: CLIPVisionTower) -> "CLIPModel":
        """The pair of two loaded towers (their weights kept, not copied)."""
        model = cls(text.config, vision.config)
        model.text, model.vision = text, vision
        return model

    def text_features(self, input_ids, attention_mask=None) -> mx.array:
        return _normalised(self.text.encode(input_ids, attention_mask).pooled)

    def image_features(self, pixels: mx.array) -> mx.array:
        return _normalised(self.vision(pixels))
