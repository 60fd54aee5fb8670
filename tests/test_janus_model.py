"""Janus-Pro's generation model against transformers' own Janus: the final-normed hidden state
and the generation head's logits under teacher forcing of a prompt followed by image tokens, from
checkpoints in both hub layouts; the two layouts convert to the same weights; a checkpoint of
another layout is refused naming the keys it lacks."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from janus_files import (GRID, IMAGE_VOCAB, TEXT_VOCAB, WIDTH, tiny_janus, write_tiny_janus)
from mlx_imgen.backbone import Transformer
from mlx_imgen.families import detect, get
from mlx_imgen.families.janus import TEXT_HEAD, UNDERSTANDING, VQ_PREFIXES, left_out
from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.keymap import load_checked
from mlx_imgen.weights.readers import read_state_dict

JANUS = get("janus")
PROMPT = 7          # text tokens before the image tokens
IMAGE_TOKENS = GRID * GRID - 1  # teacher forcing: the last token is never an input


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("janus")
    return {"transformers": write_tiny_janus(root / "transformers"),
            "original": write_tiny_janus(root / "original", layout="original"),
            "original-safetensors": write_tiny_janus(root / "original-st", layout="original",
                                                     weights="safetensors")}


@pytest.fixture(scope="module")
def reference():
    return tiny_janus(seed=0)


def checkpoint(folder):
    """The state and config.json of a fixture folder, read as conversion reads them."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    state = {}
    for path in files:
        state.update(read_state_dict(path))
    return state, read_json(folder / "config.json")


def convert(folder) -> Transformer:
    state, config = checkpoint(folder)
    cfg = JANUS.infer_config(state, {"config_json": config})
    model = Transformer(cfg)
    load_checked(model, JANUS.weights_from_upstream(state))
    return model


def teacher_forcing_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, TEXT_VOCAB, (2, PROMPT))
    image = rng.integers(0, IMAGE_VOCAB, (2, IMAGE_TOKENS))
    return prompt, image


def reference_outputs(model, prompt, image):
    """transformers' generation path: text embeddings, then gen_embed + gen_aligner of the image
    tokens, through the language model; the generation head on its last hidden state."""
    with torch.no_grad():
        text = model.get_input_embeddings()(torch.tensor(prompt))
        codes = model.prepare_embeddings_for_image_generation(torch.tensor(image))
        out = model.model.language_model(inputs_embeds=torch.cat([text, codes], dim=1))
        hidden = out.last_hidden_state
        logits = model.model.generation_head(hidden)
    return hidden.numpy(), logits.numpy()


def relative_max_error(out, expected) -> float:
    return float(np.abs(out - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("layout", ["transformers", "original", "original-safetensors"])
def test_hidden_state_and_logits_match_transformers(folders, reference, layout):
    model = convert(folders[layout])
    prompt, image = teacher_forcing_inputs()
    hidden_ref, logits_ref = reference_outputs(reference, prompt, image)
    hidden = np.array(model.hidden_states(mx.array(image), prefix=mx.array(prompt)))
    logits = np.array(model(mx.array(image), prefix=mx.array(prompt)))
    assert hidden.shape == hidden_ref.shape == (2, PROMPT + IMAGE_TOKENS, WIDTH)
    assert logits.shape == logits_ref.shape == (2, PROMPT + IMAGE_TOKENS, IMAGE_VOCAB)
    assert np.abs(logits_ref).max() > 1  # logits of order 1, so the bound below is tight
    assert relative_max_error(hidden, hidden_ref) < 1e-4
    assert relative_max_error(logits, logits_ref) < 1e-4


def test_prefill_then_cached_decode_matches_transformers(folders, reference):
    """The sampler's path: prefill the prompt alone into the cache, then one image token a call
    at positions after the prompt."""
    model = convert(folders["transformers"])
    prompt, image = teacher_forcing_inputs(seed=1)
    _, logits_ref = reference_outputs(reference, prompt, image)
    cache = model.make_cache(2, PROMPT + IMAGE_TOKENS)
    steps = [model(mx.zeros((2, 0), dtype=mx.int32), prefix=mx.array(prompt), cache=cache)[:, -1]]
    for i in range(4):
        steps.append(model(mx.array(image[:, i:i + 1]), cache=cache)[:, -1])
    decoded = np.array(mx.stack(steps, axis=1))
    assert relative_max_error(decoded, logits_ref[:, PROMPT - 1:PROMPT + 4]) < 1e-4


def test_both_layouts_convert_to_identical_weights(folders):
    converted = {}
    for layout in ("transformers", "original", "original-safetensors"):
        state, config = checkpoint(folders[layout])
        converted[layout] = (JANUS.infer_config(state, {"config_json": config}),
                             JANUS.weights_from_upstream(state))
    (cfg, weights), *others = converted.values()
    for other_cfg, other_weights in others:
        assert other_cfg == cfg
        assert set(other_weights) == set(weights)
        for key in weights:
            np.testing.assert_array_equal(np.array(other_weights[key]), np.array(weights[key]))
    assert cfg.depth == 2 and cfg.width == WIDTH and cfg.heads == 4 and cfg.grid_size == GRID
    assert cfg.text_vocab_size == TEXT_VOCAB and cfg.vocab_size == IMAGE_VOCAB
    assert cfg.token_embed_dim == 8 and cfg.head_hidden == WIDTH and cfg.context_length == 512


def test_layouts_are_detected_and_their_left_out_groups_named(folders):
    for name, layout in (("transformers", "transformers"), ("original", "original")):
        state, _ = checkpoint(folders[name])
        assert detect(state) == "janus"
        assert JANUS.layout(state).name == layout
        assert left_out(state, layout) == [UNDERSTANDING, TEXT_HEAD]
        assert any(k.startswith(VQ_PREFIXES[layout]) for k in state)


def test_heads_come_from_head_dim_128_without_a_config_json(folders):
    """Without config.json the head count is the query width / 128 (both published sizes); the
    tiny model's 64-wide queries then make one head, which differs from its 4."""
    state, _ = checkpoint(folders["original"])
    assert JANUS.infer_config(state, {}).heads == 1
    assert JANUS.infer_config(state, {"heads": 4}).heads == 4


def test_a_config_json_contradicting_the_weights_is_refused(folders):
    state, config = checkpoint(folders["transformers"])
    config["text_config"]["hidden_size"] = 128
    with pytest.raises(ValueError, match=r"hidden_size 128 disagrees with the weights' 64"):
        JANUS.infer_config(state, {"config_json": config})


def test_a_wrong_layout_checkpoint_is_refused_in_one_sentence_listing_missing_keys(folders):
    state, _ = checkpoint(folders["transformers"])
    # a plain Llama without the generation modules (what is left of Janus without them)
    llama_only = {k: v for k, v in state.items() if "generation" not in k}
    with pytest.raises(ValueError) as raised:
        JANUS.infer_config(llama_only, {})
    message = str(raised.value)
    assert "\n" not in message and message.count(". ") == 0
    assert message.startswith("this is not a janus checkpoint: expected keys gen_embed.weight "
                              "(or transformers model.generation_embeddings.weight)")
    assert "gen_head.vision_head.weight" in message


def test_published_sizes_build_at_384_px():
    for size, (depth, width, heads) in JANUS.sizes.items():
        cfg = JANUS.config_for(size, 384)
        assert (cfg.depth, cfg.width, cfg.heads, cfg.dims_per_head) == (depth, width, heads, 128)
        assert cfg.num_tokens == 576 and cfg.vocab_size == 16384 and cfg.token_embed_dim == 8
    assert JANUS.sampling == {"cfg": 5.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    assert JANUS.make_plan(JANUS.config_for("1B", 384), JANUS.sampling).num_tokens == 576


def test_torch_mirror_runs_the_text_prefixed_backbone_as_mlx(folders):
    """The reference path (`--reference torch`) mirrors the text prefix, 1-D RoPE, the token
    aligner and the head MLP: full pass and prefill + cached decode."""
    from mlx_imgen.reference import backbone as tb

    model = convert(folders["original"])
    mirror = tb.from_mlx(model)
    prompt, image = teacher_forcing_inputs(seed=2)
    expected = np.array(model(mx.array(image), prefix=mx.array(prompt)))
    with torch.no_grad():
        full = mirror(torch.tensor(image), prefix=torch.tensor(prompt)).numpy()
        cache = mirror.make_cache(2, PROMPT + 2)
        prefill = mirror(torch.zeros((2, 0), dtype=torch.long), prefix=torch.tensor(prompt),
                         cache=cache)[:, -1]
        step = mirror(torch.tensor(image[:, :1]), cache=cache)[:, -1]
    assert relative_max_error(full, expected) < 1e-4
    assert relative_max_error(torch.stack([prefill, step], 1).numpy(),
                              expected[:, PROMPT - 1:PROMPT + 1]) < 1e-4


def test_decode_step_flops_count_the_aligner_and_the_head_mlp():
    """A decode step of one image token: every Linear once (text_embed is a lookup), plus
    attention over the context."""
    from mlx_imgen.flops import forward_flops
    from mlx.utils import tree_flatten

    cfg = JANUS.config_for("1B", 384)
    model = Transformer(cfg)  # lazy parameters: shapes only
    linear = sum(2 * v.shape[0] * v.shape[1] for k, v in tree_flatten(model.parameters())
                 if k.endswith(".weight") and v.ndim == 2 and not k.endswith("_embed.weight"))
    context = 100
    attention = cfg.depth * 2 * 2 * context * cfg.heads * cfg.dims_per_head
    assert forward_flops(cfg, 1, context).total == linear + attention
