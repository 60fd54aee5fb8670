"""Gemma-2 as a text encoder (Sana's): mlx-lm's Gemma-2 layers, run with a padding-aware mask.

mlx-lm builds only a causal mask (it generates text, one unpadded prompt at a time). Sana
encodes batches padded on the right and reads every position, padded ones included, so the
blocks run here with transformers' mask: causal AND the key is a token (with right padding
every query still sees BOS, so no row is empty), and on the sliding-window layers the key is
also fewer than `sliding_window` positions back.

mlx-lm is an optional dependency (the `sana` extra), imported on first use only.
"""

import dataclasses
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .encoder import TextEncoding

MISSING_MLX_LM = "Sana's Gemma-2 text encoder needs mlx-lm: pip install 'mlx-imgen[sana]'"
SLIDING, FULL = "sliding_attention", "full_attention"
# transformers' Gemma-2 feed-forward activation; mlx-lm's MLP is the tanh-approximated GELU
GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


def _gemma2():
    """mlx-lm's Gemma-2 module, or one sentence saying how to install it."""
    try:
        from mlx_lm.models import gemma2
    except ImportError:
        raise ValueError(MISSING_MLX_LM) from None
    return gemma2


@dataclass
class GemmaConfig:
    """The Gemma2Config fields the encoder needs (transformers' names)."""
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attn_logit_softcapping: float = 50.0
    query_pre_attn_scalar: float = 256.0
    sliding_window: int | None = 4096
    layer_types: list[str] | None = None  # None: Gemma-2's pattern, sliding on even layers

    def __post_init__(self):
        if self.layer_types is None:
            self.layer_types = [SLIDING if i % 2 == 0 else FULL
                                for i in range(self.num_hidden_layers)]
        if len(self.layer_types) != self.num_hidden_layers or \
                not set(self.layer_types) <= {SLIDING, FULL}:
            raise ValueError(f"layer_types must name {self.num_hidden_layers} layers as "
                             f"{SLIDING!r} or {FULL!r}, got {self.layer_types}; convert the "
                             "model again")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} attention heads do not share "
                             f"{self.num_key_value_heads} key/value heads evenly")

    @classmethod
    def from_dict(cls, values: dict) -> "GemmaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, config: dict, where: str = "config.json") -> "GemmaConfig":
        """From a hub text_encoder/config.json (transformers' Gemma2Config; rope_theta at the
        top, or in transformers 5's rope_parameters)."""
        if config.get("model_type") != "gemma2":
            raise ValueError(f"{where} describes model_type {config.get('model_type')!r}, not "
                             "gemma2; pass Sana's Gemma-2 text_encoder/ folder")
        activation = config.get("hidden_activation") or config.get("hidden_act")
        if activation is not None and activation not in GELU_TANH:
            raise ValueError(f"{where} names the activation {activation!r}; the Gemma-2 "
                             f"encoder runs {GELU_TANH[0]} only")
        if config.get("attn_logit_softcapping") is None and "attn_logit_softcapping" in config:
            raise ValueError(f"{where} turns attention soft-capping off; the Gemma-2 encoder "
                             "runs it always (as Gemma-2 was trained)")
        values = dict(config)
        rope = config.get("rope_parameters") or {}
        if "rope_theta" not in values and isinstance(rope, dict) and "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
        if values.get("head_dim") is None:
            values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
        try:
            return cls.from_dict(values)
        except TypeError as err:
            raise ValueError(f"{where} lacks a Gemma2Config field ({err}); download it "
                             "again") from None

    def model_args(self) -> dict:
        """mlx-lm's ModelArgs (final_logit_softcapping is the unused LM head's)."""
        return {"model_type": "gemma2", "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_hidden_layers,
                "intermediate_size": self.intermediate_size,
                "num_attention_heads": self.num_attention_heads, "head_dim": self.head_dim,
                "rms_norm_eps": self.rms_norm_eps, "vocab_size": self.vocab_size,
                "num_key_value_heads": self.num_key_value_heads, "rope_theta": self.rope_theta,
                "attn_logit_softcapping": self.attn_logit_softcapping,
                "query_pre_attn_scalar": self.query_pre_attn_scalar}


class GemmaTextEncoder(nn.Module):
    """Gemma2Model (no LM head) on mlx-lm's layers; `model` holds them under mlx-lm's names
    (model.embed_tokens, model.layers.i...., model.norm)."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        gemma2 = _gemma2()
        self.config = config
        self.model = gemma2.GemmaModel(gemma2.ModelArgs(**config.model_args()))

    def _masks(self, length: int, attention_mask: mx.array | None, dtype) -> dict:
        """Additive masks per layer type, shaped for mlx-lm's scores: (B, 1, L, L), or with
        grouped key/value heads (B, 1, 1, L, L) (its scores carry a head-group axis)."""
        positions = mx.arange(length)
        allowed = positions[:, None] >= positions[None]          # (L, L): causal
        if attention_mask is not None:                           # key is a token
            allowed = allowed[None] & (attention_mask[:, None, :] != 0)
        else:
            allowed = allowed[None]
        window = self.config.sliding_window
        local = allowed & (positions[:, None] - positions[None] < window) if window else allowed
        grouped = self.config.num_attention_heads > self.config.num_key_value_heads
        low = mx.array(mx.finfo(dtype).min, dtype)

        def additive(keep):
            keep = keep[:, None, None] if grouped else keep[:, None]
            return mx.where(keep, mx.array(0, dtype), low)

        return {FULL: additive(allowed), SLIDING: additive(local)}

    def encode(self, input_ids: mx.array, attention_mask: mx.array | None = None, *,
               layer: int | None = None) -> TextEncoding:
        """The final hidden states (after the final norm) of every position; see
        text/encoder.py for `layer`."""
        model = self.model
        h = model.embed_tokens(input_ids)
        # Gemma scales its embeddings by sqrt(hidden), rounded to the states' dtype
        h = h * mx.array(self.config.hidden_size ** 0.5, h.dtype)
        masks = self._masks(input_ids.shape[1], attention_mask, h.dtype)
        states = [h]
        for block, kind in zip(model.layers, self.config.layer_types):
            h = block(h, masks[kind])
            states.append(h)
        if layer is not None:
            return TextEncoding(states[layer], attention_mask)
        return TextEncoding(model.norm(h), attention_mask)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None) -> mx.array:
        return self.encode(input_ids, attention_mask).hidden_states


# Gemma-2-2B(-it), the text encoder of both published Sana sizes (google/gemma-2-2b-it's
# config.json), for random-weight pipelines and memory estimates
GEMMA2_2B = GemmaConfig(hidden_size=2304, num_hidden_layers=26, intermediate_size=9216,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        vocab_size=256000, query_pre_attn_scalar=256.0, sliding_window=4096)
