"""CLIP's towers and preprocessing against transformers (fp32, tiny random models saved in the
hub layout): hidden states, pooled and projected features, image features and pixels; configs
and weights that do not fit are refused in one sentence."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clip_files import PROJECTION_DIM, TEXT, write_tiny_clip
from mlx_imgen.text.clip import (CLIPModel, CLIPTextConfig, CLIPTextTower, CLIPVisionConfig,
                                 configs_from_hf)
from mlx_imgen.text.clip_images import preprocess
from mlx_imgen.text.clip_keys import clip_weights_from_hf, load_hf_folder, load_towers
from mlx_imgen.weights.keymap import KeyMismatchError

TOLERANCE = 1e-4
EOS = TEXT["vocab_size"] - 1   # CLIP's end-of-text is its largest id
# a config that names its eos id explicitly, below ids in use (tokens added after training)
EXPLICIT_EOS = 1000


def relative_error(ours, reference) -> float:
    reference = reference.detach().numpy() if isinstance(reference, torch.Tensor) else reference
    return float(np.abs(np.array(ours) - reference).max() / np.abs(reference).max())


def prompts(eos: int = EOS, pad_id: int | None = None, length: int = 12):
    """A padded batch as CLIP's tokenizer makes it: BOS, words, EOS, then padding (mask 0),
    by default EOS again as openai's tokenizer pads."""
    rng = np.random.default_rng(7)
    ids = rng.integers(3, EOS - 1, (3, length))
    ids[ids == eos] = 3
    ids[:, 0] = 0
    mask = np.zeros_like(ids)
    for row, words in enumerate((4, length - 2, 7)):
        ids[row, words + 1] = eos
        ids[row, words + 2:] = eos if pad_id is None else pad_id
        mask[row, :words + 2] = 1
    return ids, mask


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (folder, transformers model)."""
    made = {}
    for name, kind, text in [("clip", "clip", None),
                             ("clip_gelu", "clip", {"hidden_act": "gelu"}),
                             ("text_eos", "text_with_projection", {"eos_token_id": EXPLICIT_EOS}),
                             ("vision", "vision", None)]:
        folder = tmp_path_factory.mktemp(name)
        vision = {"hidden_act": "gelu"} if name == "clip_gelu" else None
        made[name] = folder, write_tiny_clip(folder, kind=kind, text=text, vision=vision, seed=len(made))
    return made


def reference_text(model, ids, mask):
    text_model = model.text_model
    with torch.no_grad():
        out = text_model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask),
                         output_hidden_states=True)
        return out, model.text_projection(out.pooler_output)


@pytest.mark.parametrize("name", ["clip", "clip_gelu", "text_eos"])
@pytest.mark.parametrize("masked", [False, True])
def test_text_tower_matches_transformers(folders, name, masked):
    folder, model = folders[name]
    text, _ = load_hf_folder(folder)
    # padded with EOS itself: only the first EOS is the end (argmax finds it for the legacy
    # config); the explicit config's EOS is below other ids, so argmax would miss it
    ids, mask = prompts(EXPLICIT_EOS if name == "text_eos" else EOS)
    mask = mask if masked else None
    out, projected = reference_text(model, ids, mask)
    encoded = text.encode(mx.array(ids), None if mask is None else mx.array(mask))
    assert relative_error(encoded.hidden_states, out.last_hidden_state) < TOLERANCE
    assert relative_error(encoded.pooled, projected) < TOLERANCE
    for layer in (-2, 0, 1, -1):
        hidden = text.encode(mx.array(ids), None if mask is None else mx.array(mask), layer=layer)
        assert relative_error(hidden.hidden_states, out.hidden_states[layer]) < TOLERANCE
    if masked:  # the mask changes the result, so it is not silently ignored
        unmasked = text.encode(mx.array(ids)).hidden_states
        assert relative_error(unmasked, out.last_hidden_state) > 1e-3


def test_pooling_follows_the_eos_rule():
    ids = mx.array([[0, 9, 5, 7, 5, 5], [0, 4, 3, 5, 1, 1]])
    legacy = CLIPTextTower(CLIPTextConfig(width=8, depth=1, heads=2, mlp_hidden=8, vocab_size=10,
                                          eos_token_id=2))
    explicit = CLIPTextTower(CLIPTextConfig(width=8, depth=1, heads=2, mlp_hidden=8, vocab_size=10,
                                            eos_token_id=5))
    assert legacy.pool_positions(ids).tolist() == [1, 3]     # the largest id, the first of equals
    assert explicit.pool_positions(ids).tolist() == [2, 3]   # the first EOS


def test_text_tower_without_projection_pools_unprojected(folders, tmp_path):
    folder, model = folders["text_eos"]
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["CLIPTextModel"]
    state = load_file(folder / "model.safetensors")
    del state["text_projection.weight"]
    text, vision = load_towers(config, {k: mx.array(v.numpy()) for k, v in state.items()})
    assert vision is None and "projection" not in text
    ids, mask = prompts(EXPLICIT_EOS, pad_id=1)
    out, _ = reference_text(model, ids, mask)
    assert relative_error(text.encode(mx.array(ids), mx.array(mask)).pooled,
                          out.pooler_output) < TOLERANCE


@pytest.mark.parametrize("name", ["clip", "clip_gelu", "vision"])
def test_image_tower_matches_transformers(folders, name):
    folder, model = folders[name]
    _, vision = load_hf_folder(folder)
    pixels = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        if name == "vision":
            reference = model(pixel_values=torch.tensor(pixels)).image_embeds
        else:
            pooled = model.vision_model(pixel_values=torch.tensor(pixels)).pooler_output
            reference = model.visual_projection(pooled)
    assert relative_error(vision(mx.array(pixels.transpose(0, 2, 3, 1))), reference) < TOLERANCE


def test_clip_model_features_are_transformers_normalised_embeds(folders):
    folder, model = folders["clip"]
    text, vision = load_hf_folder(folder)
    clip = CLIPModel.from_towers(text, vision)
    ids, mask = prompts()
    pixels = np.random.default_rng(4).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    pixel_values=torch.tensor(pixels))
    text_features = clip.text_features(mx.array(ids), mx.array(mask))
    image_features = clip.image_features(mx.array(pixels.transpose(0, 2, 3, 1)))
    assert relative_error(text_features, out.text_embeds) < TOLERANCE
    assert relative_error(image_features, out.image_embeds) < TOLERANCE
    assert np.allclose(np.linalg.norm(np.array(image_features), axis=-1), 1, atol=1e-6)
    text_only, _ = load_hf_folder(folders["text_eos"][0])
    text_only.config.projection_dim = 8
    with pytest.raises(ValueError, match="must project to one width"):
        CLIPModel.from_towers(text_only, vision)


def test_a_wrong_epsilon_or_activation_would_fail_the_parity_tests(folders):
    # pins the fixture's weights: they must be large enough to tell these apart
    from dataclasses import replace
    folder, model = folders["clip"]
    text, _ = load_hf_folder(folder)
    ids, mask = prompts()
    _, projected = reference_text(model, ids, mask)
    for change in ({"norm_eps": 1e-6}, {"activation": "gelu"}):
        wrong = CLIPTextTower(replace(text.config, **change))
        wrong.update(text.parameters())
        assert relative_error(wrong.encode(mx.array(ids), mx.array(mask)).pooled, projected) > 1e-3


def _images():
    rng = np.random.default_rng(0)

    def noise(width, height, channels):
        shape = (height, width) if channels == 1 else (height, width, channels)
        return rng.integers(0, 256, shape, dtype=np.uint8)

    palette = Image.fromarray(noise(30, 20, 1), "L").convert("P")
    palette.info["transparency"] = 0
    return {"portrait": Image.fromarray(noise(40, 70, 3)),
            "landscape": Image.fromarray(noise(91, 33, 3)),
            "tiny": Image.fromarray(noise(3, 5, 3)),
            "one pixel wide": Image.fromarray(noise(1, 300, 3)),
            "rgba": Image.fromarray(noise(37, 41, 4), "RGBA"),
            "greyscale": Image.fromarray(noise(64, 48, 1), "L"),
            "palette with transparency": palette,
            "odd": Image.fromarray(noise(225, 223, 3))}


@pytest.mark.parametrize("config", [
    {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},
    {},                                        # CLIP's defaults: 224
    {"size": 224, "crop_size": 224, "resample": 3},  # openai/clip-vit-large-patch14's old layout
    {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 24}},
], ids=["tiny", "defaults", "legacy-ints", "rectangular-crop"])
def test_preprocessing_matches_clip_image_processor(config):
    # the PIL processor: the default CLIPImageProcessor needs torchvision, not installed here
    from transformers import CLIPImageProcessorPil
    reference = CLIPImageProcessorPil(**config)
    for name, image in _images().items():
        expected = reference(images=[image], return_tensors="np")["pixel_values"][0]
        ours = np.array(preprocess([image], config)[0])
        assert ours.shape == expected.transpose(1, 2, 0).shape, name
        # 1/255 of the pixel range, which normalisation stretches by 1/std
        error = np.abs(ours - expected.transpose(1, 2, 0)) * np.array(reference.image_std)
        assert error.max() < 1 / 255, name


def test_preprocessing_batches_and_reads_the_saved_config(folders):
    folder = folders["vision"][0]
    config = json.loads((folder / "preprocessor_config.json").read_text())
    images = list(_images().values())
    pixels = preprocess(images, config)
    assert pixels.shape == (len(images), 32, 32, 3) and pixels.dtype == mx.float32


@pytest.mark.parametrize("images, config, words", [
    ([], None, "no images"),
    (["a.png"], None, "not a PIL image"),
    ([Image.new("RGB", (4, 4))], {"crop_size": {"height": 0, "width": 3}}, "crop_size"),
    ([Image.new("RGB", (4, 4))], {"size": {"longest": 3}}, "size"),
    ([Image.new("RGB", (4, 4))], {"resample": 99}, "resample"),
    ([Image.new("RGB", (4, 4))], {"image_std": [1, 0, 1]}, "image_std"),
])
def test_bad_preprocessing_input_is_one_sentence(images, config, words):
    with pytest.raises(ValueError) as err:
        preprocess(images, config)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_configs_from_hf_reads_the_hub_config(folders):
    text, vision = configs_from_hf(json.loads((folders["clip_gelu"][0] / "config.json").read_text()))
    assert (text.width, text.depth, text.heads, text.mlp_hidden) == (32, 2, 4, 64)
    assert (text.activation, text.eos_token_id, text.projection_dim) == ("gelu", 2, PROJECTION_DIM)
    assert (vision.image_size, vision.patch_size, vision.grid_size) == (32, 8, 4)
    text, vision = configs_from_hf(json.loads((folders["text_eos"][0] / "config.json").read_text()))
    assert vision is None and text.projection_dim == PROJECTION_DIM and text.eos_token_id == EXPLICIT_EOS
    text, vision = configs_from_hf(json.loads((folders["vision"][0] / "config.json").read_text()))
    assert text is None and vision.projection_dim == PROJECTION_DIM


def test_configs_from_hf_defaults_are_transformers_defaults():
    from transformers import CLIPConfig
    reference = CLIPConfig()
    text, vision = configs_from_hf({"model_type": "clip"})
    assert text == CLIPTextConfig(projection_dim=reference.projection_dim,
                                  eos_token_id=reference.text_config.eos_token_id)
    assert (text.width, text.depth, text.heads, text.mlp_hidden, text.vocab_size) == (
        reference.text_config.hidden_size, reference.text_config.num_hidden_layers,
        reference.text_config.num_attention_heads, reference.text_config.intermediate_size,
        reference.text_config.vocab_size)
    assert (vision.width, vision.depth, vision.image_size, vision.patch_size) == (
        reference.vision_config.hidden_size, reference.vision_config.num_hidden_layers,
        reference.vision_config.image_size, reference.vision_config.patch_size)
    assert vision == CLIPVisionConfig(projection_dim=512)
    assert configs_from_hf({"model_type": "clip_vision_model", "image_size": [64, 64],
                            "patch_size": 16})[1].grid_size == 4
    # a round trip through the converted folder's config.json
    assert CLIPTextConfig.from_dict(text.to_dict()) == text


@pytest.mark.parametrize("config, words", [
    ({"model_type": "bert"}, "not CLIP"),
    ({"model_type": "clip", "text_config": {"hidden_size": 30, "num_attention_heads": 4}},
     "not divisible"),
    ({"model_type": "clip", "text_config": {"hidden_size": -1}}, "width must be a positive"),
    ({"model_type": "clip", "text_config": {"hidden_act": "relu"}}, "hidden_act"),
    ({"model_type": "clip", "text_config": {"eos_token_id": [2, 3]}}, "eos_token_id"),
    ({"model_type": "clip", "vision_config": {"image_size": 100, "patch_size": 32}}, "multiple"),
    ({"model_type": "clip", "vision_config": {"image_size": [224, 256]}}, "not square"),
    ({"model_type": "clip", "vision_config": {"layer_norm_eps": 0}}, "norm_eps"),
    ({"model_type": "clip", "projection_dim": 0}, "projection_dim"),
])
def test_bad_configs_are_one_sentence(config, words):
    with pytest.raises(ValueError) as err:
        configs_from_hf(config)
    assert words in str(err.value) and "\n" not in str(err.value)


def _tampered(folder, tmp_path, change):
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    return tmp_path


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("text_model.encoder.layers.1.mlp.fc2.bias"), "missing (1): blocks.1.mlp.fc2.bias"),
    (lambda s: s.pop("vision_model.pre_layrnorm.weight"), "missing (1): pre_norm.weight"),
    (lambda s: s.update({"text_model.encoder.layers.2.mlp.fc1.bias": torch.zeros(64)}),
     "unexpected (1): blocks.2.mlp.fc1.bias"),
    (lambda s: s.update({"text_model.pooler.weight": torch.zeros(3)}),
     "keys this family does not know (1): text_model.pooler.weight"),
    (lambda s: s.update({"extra.weight": torch.zeros(3)}), "keys of no CLIP tower (1): extra.weight"),
    (lambda s: s.update({"visual_projection.weight": torch.zeros(8, 32)}),
     "wrong shape (1): projection.weight: (8, 32) in the"),
    (lambda s: s.update({"vision_model.embeddings.patch_embedding.weight": torch.zeros(32, 3, 4, 4)}),
     "wrong shape (1): patch_embed.proj.weight: (32, 4, 4, 3)"),
])
def test_weights_that_do_not_fit_are_listed_in_one_sentence(folders, tmp_path, change, words):
    folder = _tampered(folders["clip"][0], tmp_path, change)
    with pytest.raises(KeyMismatchError) as err:
        load_hf_folder(folder)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_weights_split_by_tower_and_skip_buffers(folders):
    state = {k: mx.array(v.numpy()) for k, v in load_file(folders["clip"][0] / "model.safetensors").items()}
    state["text_model.embeddings.position_ids"] = mx.arange(77)[None]
    assert "logit_scale" in state
    towers = clip_weights_from_hf(state)
    assert set(towers) == {"text", "vision"}
    assert towers["vision"]["patch_embed.proj.weight"].shape == (32, 8, 8, 3)
    text_only = clip_weights_from_hf({k: v for k, v in state.items() if k.startswith("text")})
    assert set(text_only) == {"text"}


def test_encode_refuses_what_the_tower_cannot_take(folders):
    text, vision = load_hf_folder(folders["clip"][0])
    for call, words in [(lambda: text.encode(mx.zeros((1, 78), mx.int32)), "at most 77"),
                        (lambda: text.encode(mx.zeros((1, 5), mx.int32), layer=3), "layer 3"),
                        (lambda: text.encode(mx.zeros((1, 5), mx.int32), mx.ones((1, 4))), "mask"),
                        (lambda: vision(mx.zeros((1, 31, 32, 3))), "preprocess")]:
        with pytest.raises(ValueError) as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind, formula", [
    ("gelu", lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))),
    ("quick_gelu", lambda x: x / (1 + np.exp(-1.702 * x))),
    ("gelu_tanh", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
])
def test_mlp_kinds_apply_their_activation(kind, formula):
    from mlx_imgen.nn import make_mlp
    mlp = make_mlp(kind, 4, 8, True)
    x = np.linspace(-6, 6, 4 * 25, dtype=np.float32).reshape(25, 4)
    hidden = np.array(mlp.fc1(mx.array(x)))
    expected = np.array(mlp.fc2(mx.array(formula(hidden.astype(np.float64)).astype(np.float32))))
    np.testing.assert_allclose(np.array(mlp(mx.array(x))), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'gelu', 'quick_gelu', 'swiglu'"):
        make_mlp("relu", 4, 8, True)
