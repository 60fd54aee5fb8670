"""The torch reference of text-prefixed next-token sampling (Janus-Pro): on a tiny Janus-Pro
converted from transformers' layout, the torch mirror run by the sampler's own loop body gives
MLX's greedy CFG-5 image tokens, with the same number of model calls, for one prompt, for prompts
of different lengths with a negative prompt (left-padded, masked rows) and for images sharing a
prompt's prefill; and `profile FOLDER --reference torch` reports both frameworks."""

import json

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from janus_files import write_tiny_janus  # noqa: E402
from janus_tokenizer_files import write_janus_tokenizer  # noqa: E402
from mlx_imgen.cli.app import app  # noqa: E402
from mlx_imgen.paradigms import NextTokenPlan, next_token  # noqa: E402
from mlx_imgen.pipeline import Pipeline  # noqa: E402
from mlx_imgen.prompts import Prompt  # noqa: E402
from mlx_imgen.reference import backbone as tb  # noqa: E402
from mlx_imgen.reference import samplers  # noqa: E402

runner = CliRunner()
FOX = "A red fox sleeping in the snow, soft morning light."
CAT = "a cat"


@pytest.fixture(scope="module")
def janus_folder(tmp_path_factory):
    """A tiny Janus-Pro in transformers' layout with its tokenizer, converted by the CLI."""
    root = tmp_path_factory.mktemp("janus-reference")
    source = write_tiny_janus(root / "hub", layout="transformers", seed=2)
    write_janus_tokenizer(source)
    result = runner.invoke(app, ["convert", str(source), "--out", str(root / "pipe"),
                                 "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    return root / "pipe"


@pytest.fixture(scope="module")
def pipe_and_mirror(janus_folder):
    pipe = Pipeline(janus_folder)
    return pipe, tb.from_mlx(pipe.transformer)


class Counted:
    """The MLX model, counting its calls (the torch run counts its own)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def both_runs(pipe, mirror, entries: list[Prompt]):
    plan, _ = pipe.plan(temperature=0.0)
    assert plan.cfg_scale == 5.0
    condition = pipe.text_condition(entries, plan)
    counted = Counted(pipe.transformer)
    mlx_tokens = np.array(next_token.generate(counted, condition, plan))
    torch_tokens, passes = samplers.generate(mirror, condition, plan)
    return condition, mlx_tokens, torch_tokens.numpy(), (counted.calls, passes)


def test_greedy_cfg_tokens_of_one_prompt_equal_mlx(pipe_and_mirror):
    pipe, mirror = pipe_and_mirror
    condition, mlx_tokens, torch_tokens, (mlx_calls, torch_calls) = both_runs(
        pipe, mirror, [Prompt(FOX)])
    assert not condition.padded
    np.testing.assert_array_equal(torch_tokens, mlx_tokens)
    assert len(set(mlx_tokens[0].tolist())) > 2  # not one token repeated
    assert torch_calls == mlx_calls == pipe.config.num_tokens


def test_prompts_of_different_lengths_with_a_negative_prompt_equal_mlx(pipe_and_mirror):
    """Two prompts and a negative prompt of other lengths: rows left-padded and masked."""
    pipe, mirror = pipe_and_mirror
    entries = [Prompt(FOX, negative="blurry"), Prompt(CAT, negative="blurry, dark, low quality")]
    condition, mlx_tokens, torch_tokens, (mlx_calls, torch_calls) = both_runs(
        pipe, mirror, entries)
    assert condition.mask is not None and condition.null_mask is not None
    assert not bool(mx.all(condition.mask)) and not bool(mx.all(condition.null_mask))
    np.testing.assert_array_equal(torch_tokens, mlx_tokens)
    assert not np.array_equal(torch_tokens[0], torch_tokens[1])
    assert torch_calls == mlx_calls == pipe.config.num_tokens
    # the masks matter: the same rows unmasked (padding seen) decode otherwise in torch too
    unmasked = next_token.TextPrefix(condition.ids, condition.null_ids)
    plan, _ = pipe.plan(temperature=0.0)
    seen, _ = samplers.generate(mirror, unmasked, plan)
    assert not np.array_equal(seen.numpy(), torch_tokens)


def test_images_sharing_a_prompt_copy_its_prefill_rows_as_in_mlx(pipe_and_mirror):
    """Images (fox, cat, fox, fox) prefill two row pairs and copy them; seeded sampling with
    MLX's draws replayed gives MLX's tokens."""
    pipe, mirror = pipe_and_mirror
    entries = [Prompt(FOX), Prompt(CAT), Prompt(FOX), Prompt(FOX)]
    plan, _ = pipe.plan()
    condition = pipe.text_condition(entries, plan)
    assert condition.images is not None and condition.ids.shape[0] == 2
    prefills = []
    forward = mirror.forward

    def watching(*args, **kwargs):
        if kwargs.get("prefix") is not None:
            prefills.append(kwargs["prefix"].shape[0])
        return forward(*args, **kwargs)

    mirror.forward = watching
    try:
        draws = samplers.replay_mlx_draws(plan, 3, len(entries))
        torch_tokens, _ = samplers.generate(mirror, condition, plan, draws=draws)
    finally:
        del mirror.forward
    assert prefills == [4]  # 2 prompts x (conditional, unconditional)
    mlx_tokens = np.array(next_token.generate(pipe.transformer, condition, plan, seed=3))
    np.testing.assert_array_equal(torch_tokens.numpy(), mlx_tokens)
    assert not np.array_equal(mlx_tokens[0], mlx_tokens[2])  # one prompt, two images


def test_the_mirror_masks_left_padding_as_mlx(pipe_and_mirror):
    """Teacher forcing through a padded prefix: logits within 1e-4 of MLX's."""
    pipe, mirror = pipe_and_mirror
    plan, _ = pipe.plan()
    condition = pipe.text_condition([Prompt(FOX), Prompt(CAT)], plan)
    codes = mx.array(np.random.default_rng(0).integers(0, pipe.config.vocab_size, (2, 5)),
                     dtype=mx.int32)
    expected = np.array(pipe.transformer(codes, prefix=condition.ids,
                                         prefix_mask=condition.mask))
    with torch.no_grad():
        out = mirror(torch.from_numpy(np.array(codes)).long(),
                     prefix=torch.from_numpy(np.array(condition.ids)).long(),
                     prefix_mask=torch.from_numpy(np.array(condition.mask))).numpy()
    scale = np.abs(expected).max()
    assert np.abs(out - expected).max() <= 1e-4 * scale


def test_profile_with_the_torch_reference_reports_both_frameworks(janus_folder, tmp_path):
    from mlx_imgen.profiling import PROFILE_PROMPT_TOKENS

    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", str(janus_folder), "--batch-sizes", "2",
                                 "--trials", "1", "--step-budget", "0", "--reference", "torch",
                                 "--json", str(out), "--markdown", str(tmp_path / "p.md")])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (mlx_row,), (torch_row,) = report["results"], report["reference"]
    for row in (mlx_row, torch_row):
        assert row["status"] == "ok" and row["prompt_tokens"] == PROFILE_PROMPT_TOKENS
        assert row["stages_s"]["prefill"] > 0 and row["stages_s"]["per_token_decode"] > 0
    assert torch_row["framework"] == "torch" and torch_row["process"] == "child"
    assert torch_row["forward_passes_source"] == "counted"
    assert torch_row["forward_passes_per_image"] == mlx_row["forward_passes_per_image"] == \
        2 * mlx_row["steps"]
    assert torch_row["gflops_per_image"] == mlx_row["gflops_per_image"]
    table = (tmp_path / "p.md").read_text().split("## MLX against the PyTorch reference")[1]
    row = next(line for line in table.splitlines() if line.startswith("| next-token |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    torch_mlx = torch_row["stages_s"]["sampling"] / mlx_row["stages_s"]["sampling"]
    assert cells[:3] == ["next-token", str(janus_folder), "2"]
    passes = 2 * mlx_row["steps"]
    assert cells[6] == f"{torch_mlx:.2f}x" and cells[7] == f"{passes}, {passes}"
    prefill = [r["stages_s"]["prefill"] * 1e3 for r in (mlx_row, torch_row)]
    token = [r["stages_s"]["per_token_decode"] * 1e3 for r in (mlx_row, torch_row)]
    assert cells[8] == f"{prefill[0]:.3g}, {token[0]:.3g}; {prefill[1]:.3g}, {token[1]:.3g} ms"


def test_the_child_receives_the_weights_beside_the_pickle_and_the_parent_keeps_them(
        pipe_and_mirror, tmp_path):
    import pickle

    from mlx.utils import tree_flatten

    from mlx_imgen.reference.child import attach_weights, detached_weights
    pipe, _ = pipe_and_mirror
    model = pipe.transformer
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    path = str(tmp_path / "weights.safetensors")
    with detached_weights(model, path):
        blob = pickle.dumps(model)
    assert len(blob) < sum(v.nbytes for v in before.values()) / 10  # the structure alone
    after = dict(tree_flatten(model.parameters()))
    received = pickle.loads(blob)
    attach_weights(received, path)
    for name, value in tree_flatten(received.parameters()):
        np.testing.assert_array_equal(np.array(value), before[name])
        np.testing.assert_array_equal(np.array(after[name]), before[name])
