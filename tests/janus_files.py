"""Tiny random Janus-Pro checkpoints in both hub layouts, built with transformers' own Janus.

`write_tiny_janus(folder, layout="transformers")` is what `save_pretrained` writes (config.json
and model.safetensors, deepseek-community/Janus-Pro-* names). `layout="original"` holds the same
weights under deepseek-ai/Janus-Pro-*'s `multi_modality` names with its config.json
(language_config, gen_*_config), as pytorch_model.bin (torch.save), as model.safetensors, or as
a sharded .bin with its index (the 7B's form). The key table below is written from the original
names: LlamaForCausalLM's under `language_model.`, `gen_embed`, `gen_aligner.layers.{0,2}`,
`gen_head.{output_mlp_projector,vision_head}`, LlamaGen's VQ under `gen_vision_model.`, and the
SigLIP tower and its aligner under `vision_model.` and `aligner.`.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import JanusConfig, JanusForConditionalGeneration

# sizes of the tiny model; the token grid is 4 x 4 (vision image_size 64 / patch 16 sets the VQ's
# num_patches, which its decode reshapes to), and the tiny VQ itself upsamples 2x
TEXT_VOCAB = 1024
IMAGE_VOCAB = 256
WIDTH, DEPTH, HEADS, HEAD_DIM, SWIGLU = 64, 2, 4, 16, 160
CODE_DIM = 8
GRID = 4
IMAGE_SIZE = 64      # what the backbone config calls the image size: GRID x 16 px cells
MAX_POSITIONS = 512
ROPE_THETA = 10000.0
NORM_EPS = 1e-6


def tiny_config() -> JanusConfig:
    text = dict(model_type="llama", vocab_size=TEXT_VOCAB, hidden_size=WIDTH,
                intermediate_size=SWIGLU, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                num_key_value_heads=HEADS, head_dim=HEAD_DIM, rms_norm_eps=NORM_EPS,
                rope_theta=ROPE_THETA, max_position_embeddings=MAX_POSITIONS,
                tie_word_embeddings=False)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE_SIZE,
                  patch_size=16, mlp_ratio=2.0, projection_dim=WIDTH, depth=2)
    vq = dict(embed_dim=CODE_DIM, num_embeddings=IMAGE_VOCAB, latent_channels=16,
              base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
              projection_dim=WIDTH, image_token_embed_dim=WIDTH, num_hidden_layers=2)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=TEXT_VOCAB - 1, tie_word_embeddings=False)


def tiny_janus(seed: int = 0) -> JanusForConditionalGeneration:
    """The reference model, fp32, eval mode, every parameter drawn from `seed` at a scale that
    keeps activations of order 1 (the default init's 0.02 would leave attention nearly flat)."""
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(tiny_config()).float().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and re.search(r"norm|layernorm", name) and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif param.ndim == 1:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            elif "embed" in name or "embedding" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) * fan_in ** -0.5)
    return model


# ---------------------------------------------------------------- the original layout

_LM = r"model\.language_model\."
# transformers name (regex) -> original name (template): the table from the original names
TO_ORIGINAL = (
    (_LM + r"(embed_tokens\.weight|norm\.weight)", r"language_model.model.\1"),
    (_LM + r"layers\.(\d+)\.(.+)", r"language_model.model.layers.\1.\2"),
    (r"lm_head\.weight", "language_model.lm_head.weight"),
    (r"model\.generation_embeddings\.weight", "gen_embed.weight"),
    (r"model\.generation_aligner\.fc1\.(weight|bias)", r"gen_aligner.layers.0.\1"),
    (r"model\.generation_aligner\.hidden_layers\.0\.(weight|bias)", r"gen_aligner.layers.2.\1"),
    (r"model\.generation_head\.proj_out\.(weight|bias)", r"gen_head.output_mlp_projector.\1"),
    (r"model\.generation_head\.vision_head\.(weight|bias)", r"gen_head.vision_head.\1"),
    # LlamaGen's VQModel names (tests/upstream/llamagen_vq.py builds it from them)
    (r"model\.vqmodel\.(encoder|decoder)\.mid\.block_1\.(.+)", r"gen_vision_model.\1.mid.0.\2"),
    (r"model\.vqmodel\.(encoder|decoder)\.mid\.attn_1\.(.+)", r"gen_vision_model.\1.mid.1.\2"),
    (r"model\.vqmodel\.(encoder|decoder)\.mid\.block_2\.(.+)", r"gen_vision_model.\1.mid.2.\2"),
    (r"model\.vqmodel\.encoder\.down\.(\d+)\.block\.(.+)", r"gen_vision_model.encoder.conv_blocks.\1.res.\2"),
    (r"model\.vqmodel\.encoder\.down\.(\d+)\.(attn|downsample)\.(.+)", r"gen_vision_model.encoder.conv_blocks.\1.\2.\3"),
    (r"model\.vqmodel\.decoder\.up\.(\d+)\.block\.(.+)", r"gen_vision_model.decoder.conv_blocks.\1.res.\2"),
    (r"model\.vqmodel\.decoder\.up\.(\d+)\.(attn|upsample)\.(.+)", r"gen_vision_model.decoder.conv_blocks.\1.\2.\3"),
    (r"model\.vqmodel\.(.+)", r"gen_vision_model.\1"),
    # the understanding side is never converted: its inner names stay transformers' (the real
    # file holds timm's SigLIP names under vision_model.vision_tower.), only the prefix matters
    (r"model\.vision_model\.(.+)", r"vision_model.vision_tower.\1"),
    (r"model\.aligner\.fc1\.(weight|bias)", r"aligner.layers.0.\1"),
    (r"model\.aligner\.hidden_layers\.0\.(weight|bias)", r"aligner.layers.2.\1"),
)


def original_name(name: str) -> str:
    for pattern, template in TO_ORIGINAL:
        match = re.fullmatch(pattern, name)
        if match:
            return match.expand(template)
    raise KeyError(f"no original name for {name}")


def original_state(model: JanusForConditionalGeneration, inv_freq: bool = True) -> dict:
    """The model's weights under the original names; `inv_freq` adds the rotary buffers older
    transformers saved in every attention layer."""
    state = {original_name(k): v.detach().clone().contiguous()
             for k, v in model.state_dict().items()}
    # LlamaGen's quantizer keeps a usage buffer (codebook_show_usage), saved with the VQ
    state["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    if inv_freq:
        table = 1.0 / ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
        for i in range(DEPTH):
            state[f"language_model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = table.clone()
    return state


def original_config() -> dict:
    """config.json of deepseek-ai/Janus-Pro-*, at the tiny sizes."""
    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": "float32",
        "language_config": {
            "model_type": "llama", "vocab_size": TEXT_VOCAB, "hidden_size": WIDTH,
            "intermediate_size": SWIGLU, "num_hidden_layers": DEPTH,
            "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
            "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": NORM_EPS,
            "rope_theta": ROPE_THETA, "torch_dtype": "float32"},
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"image_size": IMAGE_SIZE, "model_name": "siglip_large_patch16_384",
                                     "select_feature": "same", "select_layer": -1}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": 2, "input_dim": 32, "n_embed": WIDTH,
                                      "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision",
                              "params": {"image_token_size": IMAGE_VOCAB, "n_embed": CODE_DIM}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": {"depth": 2, "input_dim": CODE_DIM, "n_embed": WIDTH,
                                          "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head",
                            "params": {"image_token_embed": WIDTH, "image_token_size": IMAGE_VOCAB,
                                       "n_embed": WIDTH}},
    }


def _cast(state: dict, dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _write_bin_shards(folder: Path, state: dict, shards: int) -> None:
    """pytorch_model-0000i-of-0000n.bin and pytorch_model.bin.index.json, as the 7B's."""
    keys = list(state)
    size = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i * size:(i + 1) * size]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def write_tiny_janus(folder, *, layout: str = "transformers", seed: int = 0,
                     weights: str = "bin", shards: int = 1, dtype=torch.float32) -> Path:
    """Write the tiny model of `seed` into `folder` in `layout` ("transformers" or "original");
    returns the folder. The original layout's `weights` is "bin" (torch.save, in `shards` files
    with an index when more than one) or "safetensors"; `dtype` casts the floats (bfloat16 as
    the hub's files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_janus(seed)
    if layout == "transformers":
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        return folder
    if layout != "original":
        raise ValueError(f"unknown layout {layout!r}")
    state = _cast(original_state(model), dtype)
    config = dict(original_config(), torch_dtype=str(dtype).removeprefix("torch."))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if weights == "safetensors":
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif shards > 1:
        _write_bin_shards(folder, state, shards)
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder
