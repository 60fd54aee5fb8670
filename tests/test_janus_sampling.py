"""Janus-Pro's prompting and sampling: the next-token sampler with a text prefix (one prefill
per prompt, left-padded rows masked) against a loop written here from the formula, greedy
image tokens against transformers' Janus generation, seeded sampling per image, the prompt
template against upstream's, and the text path of Pipeline.generate and `mlx-imgen generate`."""

import mlx.core as mx
import numpy as np
import pytest

from conftest import build
from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.paradigms import NextTokenPlan, next_token
from mlx_imgen.paradigms.keys import image_keys, keys_of
from mlx_imgen.paradigms.next_token import ClassPrefix, TextPrefix

TEXT_VOCAB = 40


def text_config(**overrides) -> BackboneConfig:
    values = dict(depth=2, width=32, heads=4, grid_size=3, vocab_size=24, mlp="swiglu",
                  mlp_hidden=64, norm="rms", fused_qkv=False, qkv_bias=False, out_bias=False,
                  causal=True, conditioning="text", text_vocab_size=TEXT_VOCAB,
                  positions="rope1d", token_embed_dim=8, head_hidden=48, context_length=64)
    values.update(overrides)
    return BackboneConfig(**values)


@pytest.fixture(scope="module")
def text_model():
    return build(text_config(), seed=3)


def reference_greedy(model, rows: list[list[int]], null_rows: list[list[int]], scale: float,
                     num_tokens: int) -> np.ndarray:
    """Greedy CFG decoding from the formula: every step runs the whole sequence of each row
    alone (no cache, no padding, no batch) and takes argmax(u + s (c - u))."""
    out = []
    for row, null_row in zip(rows, null_rows):
        tokens = []
        for _ in range(num_tokens):
            image = mx.array([tokens], dtype=mx.int32).reshape(1, len(tokens))
            c = model(image, prefix=mx.array([row]))[0, -1]
            u = model(image, prefix=mx.array([null_row]))[0, -1]
            tokens.append(int(mx.argmax(u + scale * (c - u))))
        out.append(tokens)
    return np.array(out)


def left_pad(rows: list[list[int]], pad: int = 0):
    width = max(map(len, rows))
    ids = np.full((len(rows), width), pad, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, True
    return mx.array(ids), mx.array(mask)


ROWS = [[1, 5, 7, 9, 11, 2], [1, 6, 8, 2]]
NULL_ROWS = [[1, 0, 0, 0, 0, 2], [1, 0, 0, 2]]
NEGATIVE_ROWS = [[1, 13, 2], [1, 14, 15, 16, 17, 18, 19, 2]]


def test_greedy_text_prefix_with_cfg_equals_the_formula_loop(text_model):
    plan = NextTokenPlan(num_tokens=9, cfg_scale=5.0, temperature=0.0)
    ids, mask = left_pad(ROWS)
    null_ids, null_mask = left_pad(NULL_ROWS)
    tokens = next_token.generate(text_model, TextPrefix(ids, null_ids, mask, null_mask), plan)
    np.testing.assert_array_equal(np.array(tokens),
                                  reference_greedy(text_model, ROWS, NULL_ROWS, 5.0, 9))


def test_negative_prompt_rows_of_other_lengths_equal_the_formula_loop(text_model):
    plan = NextTokenPlan(num_tokens=9, cfg_scale=5.0, temperature=0.0)
    ids, mask = left_pad(ROWS + NEGATIVE_ROWS)
    cond, null = (ids[:2], mask[:2]), (ids[2:], mask[2:])
    tokens = next_token.generate(text_model, TextPrefix(cond[0], null[0], cond[1], null[1]), plan)
    expected = reference_greedy(text_model, ROWS, NEGATIVE_ROWS, 5.0, 9)
    np.testing.assert_array_equal(np.array(tokens), expected)
    # the negative prompt steers: the same prompts with padded null rows decode otherwise
    assert not np.array_equal(expected, reference_greedy(text_model, ROWS, NULL_ROWS, 5.0, 9))


def test_without_guidance_the_null_rows_are_never_run(text_model):
    plan = NextTokenPlan(num_tokens=5, cfg_scale=1.0, temperature=0.0)
    ids = mx.array([ROWS[0]])
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(text_model, name)

        def __call__(self, x, **kwargs):
            calls.append(x.shape[0])
            return text_model(x, **kwargs)

    a = next_token.generate(Counting(), TextPrefix(ids, mx.full(ids.shape, 39)), plan)
    b = next_token.generate(text_model, TextPrefix(ids, mx.zeros_like(ids)), plan)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert set(calls) == {1}


def test_images_of_one_prompt_share_one_prefill_and_sample_as_alone(text_model):
    """Four images of two prompts (rows 0, 1, 0, 0) prefill two row pairs, and each image's
    tokens are those its prompt gives it alone with its own key."""
    plan = NextTokenPlan(num_tokens=6, cfg_scale=3.0, temperature=1.0, top_k=10)
    ids, mask = left_pad(ROWS)
    null_ids, null_mask = left_pad(NULL_ROWS)
    images = [0, 1, 0, 0]
    prefill_rows = []
    original = text_model.__call__

    class Watching:
        def __getattr__(self, name):
            return getattr(text_model, name)

        def __call__(self, x, **kwargs):
            if "prefix" in kwargs:
                prefill_rows.append(kwargs["prefix"].shape[0])
            return original(x, **kwargs)

    condition = TextPrefix(ids, null_ids, mask, null_mask, images=mx.array(images))
    batch = np.array(next_token.generate(Watching(), condition, plan, seed=5))
    assert prefill_rows == [4]  # 2 prompts x (cond, uncond), not 4 images x 2
    for i, row in enumerate(images):
        alone = TextPrefix(mx.array([ROWS[row]]), mx.array([NULL_ROWS[row]]))
        tokens = next_token.generate(text_model, alone, plan, seed=5, first_index=i)
        np.testing.assert_array_equal(batch[i], np.array(tokens)[0])


def test_seeded_text_sampling_is_reproducible_and_seed_dependent(text_model):
    plan = NextTokenPlan(num_tokens=8, cfg_scale=5.0, temperature=1.0)
    condition = TextPrefix(mx.array([ROWS[0]] * 3), mx.array([NULL_ROWS[0]] * 3))
    a = np.array(next_token.generate(text_model, condition, plan, seed=1))
    b = np.array(next_token.generate(text_model, condition, plan, seed=1))
    c = np.array(next_token.generate(text_model, condition, plan, seed=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # images of one prompt differ


def test_class_labels_and_a_class_prefix_sample_alike(causal_model):
    plan = NextTokenPlan(num_tokens=causal_model.config.num_tokens, cfg_scale=2.0)
    labels = mx.array([1, 4])
    np.testing.assert_array_equal(
        np.array(next_token.generate(causal_model, labels, plan, seed=3)),
        np.array(next_token.generate(causal_model, ClassPrefix(labels), plan, seed=3)))


def test_keys_of_seed_index_pairs_are_each_images_own_key():
    pairs = [(7, 0), (7, 1), (7, 2), (3, 0), (7, 5), (3, 1)]
    expected = mx.concatenate([image_keys(1, seed=s, first=i) for s, i in pairs])
    np.testing.assert_array_equal(np.array(keys_of(pairs)), np.array(expected))


def test_text_prefix_refuses_rows_of_different_shapes():
    with pytest.raises(ValueError, match="pad them to one"):
        TextPrefix(mx.zeros((2, 5), dtype=mx.int32), mx.zeros((2, 4), dtype=mx.int32))


# --------------------------------------------------------------- against transformers' Janus

PROMPT = "A red fox sleeping in the snow, soft morning light."


def backbone_of(reference):
    """The backbone holding the reference's generation weights: the transformers names mapped
    here from modeling_janus.py's modules (the family's own key map is tested elsewhere)."""
    import janus_files as jf
    from mlx_imgen.backbone import Transformer
    cfg = BackboneConfig(depth=jf.DEPTH, width=jf.WIDTH, heads=jf.HEADS, head_dim=jf.HEAD_DIM,
                         mlp="swiglu", mlp_hidden=jf.SWIGLU, mlp_bias=False, norm="rms",
                         norm_eps=jf.NORM_EPS, fused_qkv=False, qkv_bias=False, out_bias=False,
                         causal=True, grid_size=jf.GRID, vocab_size=jf.IMAGE_VOCAB,
                         token_embed_dim=jf.CODE_DIM, conditioning="text",
                         text_vocab_size=jf.TEXT_VOCAB, context_length=jf.MAX_POSITIONS,
                         positions="rope1d", rope_base=jf.ROPE_THETA, head_bias=True,
                         head_hidden=jf.WIDTH)
    names = {"model.language_model.embed_tokens": "text_embed",
             "model.language_model.norm": "norm",
             "model.generation_embeddings": "token_embed",
             "model.generation_aligner.fc1": "token_aligner.fc1",
             "model.generation_aligner.hidden_layers.0": "token_aligner.fc2",
             "model.generation_head.proj_out": "head_proj",
             "model.generation_head.vision_head": "head"}
    inner = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
             "self_attn.o_proj": "attn.out", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
             "mlp.down_proj": "mlp.down", "input_layernorm": "norm1",
             "post_attention_layernorm": "norm2"}
    for i in range(jf.DEPTH):
        names.update({f"model.language_model.layers.{i}.{a}": f"blocks.{i}.{b}"
                      for a, b in inner.items()})
    weights = []
    for key, value in reference.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in names:
            weights.append((f"{names[module]}.{leaf}", mx.array(value.float().numpy())))
    model = Transformer(cfg)
    model.load_weights(weights, strict=True)
    return model


@pytest.fixture(scope="module")
def janus_reference(tmp_path_factory):
    import janus_files as jf
    import janus_tokenizer_files as jt
    from mlx_imgen.text.janus import JanusPrompts
    folder = jt.write_janus_tokenizer(tmp_path_factory.mktemp("janus-tokenizer"))
    reference = jf.tiny_janus(seed=1)
    specials = jt.token_ids()
    # the generation settings the hub's generation_config.json carries, at the tiny ids
    reference.generation_config.bos_token_id = specials[jt.BOS]
    reference.generation_config.pad_token_id = specials[jt.PAD]
    reference.generation_config.generation_kwargs = {"boi_token_id": specials[jt.BEGIN_OF_IMAGE]}
    reference.model.vision_model.config.num_image_tokens = jf.GRID ** 2
    return reference, backbone_of(reference), JanusPrompts.from_folder(folder), folder


def test_prompt_row_is_what_transformers_tokenizes_from_upstreams_template(janus_reference):
    import janus_tokenizer_files as jt
    _, _, prompts, folder = janus_reference
    tokenizer = jt.reference_tokenizer(folder)
    # upstream: the "deepseek" SFT template with an empty system prompt, then the image tag;
    # the tokenizer puts BOS first
    text = f"<|User|>: {PROMPT}\n\n<|Assistant|>:<begin_of_image>"
    assert prompts.row(PROMPT) == tokenizer.encode(text)
    assert prompts.row("  " + PROMPT + "\n") == prompts.row(PROMPT)  # messages are stripped
    rows = prompts.rows([(PROMPT, None)])
    row = tokenizer.encode(text)
    null = [row[0]] + [jt.token_ids()[jt.PAD]] * (len(row) - 2) + [row[-1]]
    assert rows.ids.tolist() == [row] and rows.null_ids.tolist() == [null]
    assert rows.mask is None and rows.null_mask is None


def test_greedy_image_tokens_with_cfg_5_equal_transformers_generation(janus_reference):
    import torch
    reference, model, prompts, _ = janus_reference
    rows = prompts.rows([(PROMPT, None)])
    ids = torch.tensor(rows.ids.astype(np.int64))
    expected = reference.generate(ids, attention_mask=torch.ones_like(ids),
                                  generation_mode="image", do_sample=False, guidance_scale=5.0)
    plan = NextTokenPlan(num_tokens=model.config.num_tokens, cfg_scale=5.0, temperature=0.0)
    tokens = next_token.generate(model, TextPrefix(mx.array(rows.ids), mx.array(rows.null_ids)),
                                 plan)
    np.testing.assert_array_equal(np.array(tokens), expected.numpy())
    assert len(set(expected[0].tolist())) > 2  # a sequence that is not one repeated token


def test_negative_prompt_equals_the_formula_loop_on_the_converted_model(janus_reference):
    """transformers' Janus has no negative prompt: the formula loop is the reference."""
    _, model, prompts, _ = janus_reference
    negative = "blurry"
    rows = prompts.rows([(PROMPT, negative)])
    assert rows.null_mask is not None and rows.mask is None  # the negative row is shorter
    plan = NextTokenPlan(num_tokens=model.config.num_tokens, cfg_scale=5.0, temperature=0.0)
    condition = TextPrefix(mx.array(rows.ids), mx.array(rows.null_ids), None,
                           mx.array(rows.null_mask))
    tokens = next_token.generate(model, condition, plan)
    expected = reference_greedy(model, [prompts.row(PROMPT)], [prompts.row(negative)], 5.0,
                                model.config.num_tokens)
    np.testing.assert_array_equal(np.array(tokens), expected)


def test_a_prompt_holding_a_control_token_or_too_long_is_refused(janus_reference):
    _, _, prompts, _ = janus_reference
    with pytest.raises(ValueError, match="contains the control token '<begin_of_image>'"):
        prompts.row("a fox <begin_of_image>")
    with pytest.raises(ValueError, match=r"the prompt is \d+ tokens in Janus-Pro's template, "
                                         "more than the 20 the model's context leaves"):
        prompts.rows([(PROMPT, None)], max_length=20)
    with pytest.raises(ValueError, match="the negative prompt of the prompt is"):
        prompts.rows([("a fox", PROMPT)], max_length=20)


# --------------------------------------------------------------- pipeline and CLI

def write_janus_pipeline(out, reference_model, tokenizer_folder):
    """A converted Janus-Pro pipeline folder from the backbone of the tiny reference, a tiny
    random VQ and the tokenizer (what i14-convert's converter writes from a hub repo)."""
    import shutil

    from mlx.utils import tree_flatten

    import janus_files as jf
    from conftest import randomize_autoencoder
    from mlx_imgen import __version__, families
    from mlx_imgen.autoencoders.vq import VQConfig, VQModel
    from mlx_imgen.convert.writer import write_pipeline
    family = families.get("janus")
    vq = VQConfig(codebook_size=jf.IMAGE_VOCAB, codebook_embed_dim=jf.CODE_DIM, ch=32,
                  ch_mult=(1, 2), z_channels=16, num_res_blocks=1)
    settings = {"dtype": "float32", "quantization": None, "mlx_imgen_version": __version__}
    source = {"repo": "example/tiny-janus", "file": "model.safetensors", "revision": None,
              "sha256": "0" * 64}
    index = {"family": "janus", "paradigm": family.paradigm, "alias": None,
             "license": family.license, "sampling": family.sampling, **settings}
    components = {
        "transformer": ({"family": "janus", "backbone": reference_model.config.to_dict(),
                         "source": source, **settings},
                        dict(tree_flatten(reference_model.parameters()))),
        "autoencoder": ({"kind": "vq", "config": vq.to_dict(), "source": source, **settings},
                        dict(tree_flatten(randomize_autoencoder(VQModel(vq), 2).parameters()))),
        "tokenizer": (None, lambda folder: [shutil.copy(f, folder / f.name)
                                            for f in tokenizer_folder.iterdir()]),
    }
    return write_pipeline(out, index, components)


@pytest.fixture(scope="module")
def janus_folder(janus_reference, tmp_path_factory):
    _, model, _, tokenizer = janus_reference
    return write_janus_pipeline(tmp_path_factory.mktemp("janus") / "pipe", model, tokenizer)


def test_pipeline_generates_one_image_per_prompt_entry_batch_independently(janus_folder):
    from mlx_imgen.pipeline import Pipeline
    from mlx_imgen.prompts import Prompt
    pipe = Pipeline(janus_folder)
    entries = [PROMPT, PROMPT, "a cat", Prompt("a lighthouse by the sea at sunset", seed=9)]
    images = pipe.generate(prompts=entries, seed=4, negative_prompt="blurry")
    assert len(images) == 4 and images[0].size == (pipe.image_size, pipe.image_size)
    pixels = [np.asarray(image) for image in images]
    assert not np.array_equal(pixels[0], pixels[1])  # two images of one prompt differ
    # each image again alone (its --seed and --index) and in other batches: the same image
    alone = [pipe.generate(prompts=[PROMPT], seed=4, first_index=1, negative_prompt="blurry"),
             pipe.generate(prompts=["a cat"], seed=4, first_index=2, negative_prompt="blurry"),
             pipe.generate(prompts=[Prompt("a lighthouse by the sea at sunset", seed=9)],
                           negative_prompt="blurry")]
    for i, image in zip((1, 2, 3), alone):
        np.testing.assert_array_equal(np.asarray(image[0]), pixels[i])
    in_pairs = pipe.generate(prompts=entries, seed=4, negative_prompt="blurry", batch_size=2)
    for image, expected in zip(in_pairs, pixels):
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_pipeline_greedy_codes_equal_the_samplers(janus_folder, janus_reference):
    from mlx_imgen.pipeline import Pipeline
    from mlx_imgen.prompts import Prompt
    reference, model, prompts, _ = janus_reference
    pipe = Pipeline(janus_folder)
    plan, _ = pipe.plan(temperature=0.0)
    assert plan.cfg_scale == 5.0  # Janus-Pro's default guidance
    condition = pipe.text_condition([Prompt(PROMPT)], plan)
    codes = next_token.generate(pipe.transformer, condition, plan)
    rows = prompts.rows([(PROMPT, None)])
    np.testing.assert_array_equal(np.array(codes), np.array(next_token.generate(
        model, TextPrefix(mx.array(rows.ids), mx.array(rows.null_ids)), plan)))


def test_pipeline_refuses_an_over_long_prompt_and_classes(janus_folder):
    from mlx_imgen.pipeline import Pipeline
    pipe = Pipeline(janus_folder)
    with pytest.raises(ValueError, match=r"^the prompt 'a fox a fox .*\.\.\.' is \d+ tokens in "
                                         r"Janus-Pro's template, more than the \d+ the model's "
                                         "context leaves beside the image tokens; shorten it$"):
        pipe.generate(prompts=["a small fox", "a fox " * 400])
    with pytest.raises(ValueError, match="is a text-to-image model: pass --prompt"):
        pipe.generate([1])


def test_cli_writes_pngs_of_a_prompt_and_refuses_bad_runs_with_one_line(janus_folder,
                                                                         tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from mlx_imgen.cli.app import app
    runner = CliRunner()
    out = tmp_path / "fox.png"
    result = runner.invoke(app, ["generate", str(janus_folder), "--prompt", PROMPT, "--n", "2",
                                 "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    texts = [Image.open(tmp_path / f"fox-{i}.png").text for i in range(2)]
    assert [t["prompt"] for t in texts] == [PROMPT, PROMPT]
    assert [t["index"] for t in texts] == ["0", "1"]
    assert texts[0]["family"] == "janus" and '"cfg_scale": 5.0' in texts[0]["plan"]
    for argv, words in (
            (["--prompt", "a fox " * 400], ["tokens in Janus-Pro's template", "shorten it"]),
            (["--prompt", " "], ["--prompt is empty"]),
            (["--class", "3"], ["is a text-to-image model", "not --class"])):
        before = sorted(tmp_path.iterdir())
        result = runner.invoke(app, ["generate", str(janus_folder), *argv, "--out",
                                     str(tmp_path / "bad.png")])
        lines = result.stderr.splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert all(word in lines[0] for word in words), lines[0]
        assert "Traceback" not in result.output and sorted(tmp_path.iterdir()) == before
