import hashlib

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import build, tiny_config
from llamagen_files import save_gpt, save_vq, tiny_gpt, tiny_vq
from mlx.utils import tree_flatten
from mlx_imgen.backbone import BackboneConfig, Transformer
from mlx_imgen.cli.app import app
from mlx_imgen.families import maskgit
from mlx_imgen.paradigms import masked_token, presets
from mlx_imgen.paradigms.keys import image_keys
from mlx_imgen.paradigms.masked_token import Draws, halton_order, revealed_counts
from mlx_imgen.loading import load
from upstream import halton_maskgit as upstream

runner = CliRunner()
TINY = upstream.tiny_config()
K = TINY["codebook_size"]                  # the mask id
N = TINY["input_size"] ** 2
CONFIG = '{"heads": 6}'                    # shapes cannot tell the head count of a 64-wide model


def save_checkpoint(model, path, prefix=""):
    """Upstream's save_network layout, Adam state included as in the published files."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # state, but the weights stay
    model(torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([0]),
          torch.tensor([False])).sum().backward()
    optimizer.step()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"iter": 12, "global_epoch": 1, "model_state_dict": state,
                "optimizer_state_dict": optimizer.state_dict()}, path)
    return path


def tiny_model():
    model = upstream.randomize_(upstream.Transformer(**TINY), 0).eval()
    # Trained models all but never predict the mask id; a random one, whose head is the token
    # embedding, mostly would. Make it rare, so that runs reveal codes and still meet the case.
    with torch.no_grad():
        model.head.bias[K] = -4.0
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("maskgit")
    model = tiny_model()
    return {"root": root, "model": model, "plain": save_checkpoint(model, root / "tiny.pth"),
            "wrapped": save_checkpoint(model, root / "tiny_ddp.pth", prefix="module._orig_mod."),
            "vq": save_vq(tiny_vq(), root / "vq_tiny.pt"),
            "llamagen": save_gpt(tiny_gpt(), root / "c2i_tiny.pt")}


def convert_cli(files, source, out, *extra):
    return runner.invoke(app, ["convert", str(source), "--family", "maskgit", "--config", CONFIG,
                               "--autoencoder", str(files["vq"]), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def pipe(files):
    out = files["root"] / "converted"
    result = convert_cli(files, files["plain"], out)
    assert result.exit_code == 0, result.output
    return load(str(out))


class TorchDraws:
    """The MLX sampler's own random numbers, handed to the torch reference."""

    def __init__(self, seed, steps, batch):
        self.draws = Draws(image_keys(batch, seed=seed), steps)

    def order_shifts(self, batch, n):
        return torch.from_numpy(np.array(self.draws.order_shifts(batch, n)))

    def token_noise(self, step, shape):
        return torch.from_numpy(np.array(self.draws.token_noise(step, shape)))

    def choice_noise(self, step, shape):
        return torch.from_numpy(np.array(self.draws.choice_noise(step, shape)))


# --- the model ------------------------------------------------------------------------------

def test_inferred_config_keeps_upstreams_attention_width_register_and_mask_output(pipe):
    cfg = pipe.config
    assert (cfg.width, cfg.heads, cfg.dims_per_head, cfg.registers) == (64, 6, 10, 1)
    assert (cfg.vocab_size, cfg.output_dims, pipe.transformer.mask_id) == (K, K + 1, K)
    assert cfg.grid_size == 4 and cfg.num_classes == 10 and cfg.hidden == 256
    assert pipe.paradigm == "masked-token" and pipe.index["sampling"] == {"sampler": "halton"}


def test_predict_mask_adds_the_mask_id_to_the_outputs_and_needs_a_mask_token():
    model = build(tiny_config(conditioning="adaln", positions="learned", mask_token=True,
                              predict_mask=True))
    out = model(mx.full((1, 16), model.mask_id, dtype=mx.int32), mx.array([0]))
    assert out.shape == (1, 16, model.config.vocab_size + 1)
    with pytest.raises(ValueError, match="needs mask_token"):
        BackboneConfig(depth=1, width=8, heads=2, predict_mask=True)


def test_published_sizes_have_upstreams_parameter_counts():
    counts = {}
    for size, image_size in (("tiny", 256), ("small", 256), ("base", 256), ("large", 384)):
        model = Transformer(maskgit.config_for(size, image_size))  # lazy: nothing is computed
        # upstream ties the head's weight to the token embedding, so it counts once
        tied = model.head.weight.size
        total = sum(v.size for _, v in tree_flatten(model.parameters()))
        counts[size] = round((total - tied) / 1e6, 1)
    assert counts == {"tiny": 23.0, "small": 69.3, "base": 142.2, "large": 480.0}
    assert maskgit.config_for("small", 256).dims_per_head == 85  # 6 heads do not divide 512


# --- Halton order and schedules -------------------------------------------------------------

def _digest(order) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in order).encode()).hexdigest()[:16]


def test_halton_order_matches_upstream_test_vectors():
    assert halton_order(16)[:20].tolist() == [133, 74, 193, 39, 172, 99, 232, 30, 144, 85, 219,
                                              50, 183, 125, 244, 9, 142, 65, 198, 43]
    order24 = halton_order(24)
    assert order24[:20].tolist() == [296, 160, 434, 82, 378, 221, 517, 45, 312, 176, 472, 99,
                                     395, 259, 534, 14, 310, 145, 441, 89]
    assert [divmod(int(i), 24) for i in order24[-5:]] == [(19, 4), (4, 12), (16, 20), (2, 11),
                                                           (14, 19)]
    assert {s: _digest(halton_order(s)) for s in (16, 24, 32)} == {
        16: "fff36ffda9b95f99", 24: "c65fa6b3be88960e", 32: "dc5510c11074da98"}
    for s in (4, 16):  # and the reference's float32 points agree
        cells = upstream.halton_grid_order(s)
        assert (cells[:, 0] * s + cells[:, 1]).tolist() == halton_order(s).tolist()


def _plan(family_sampler, num_tokens, steps):
    cfg = maskgit.backbone_config(1, 8, 2, 16, grid_size=int(num_tokens ** 0.5))
    return presets.make_plan("maskgit", cfg, {"sampler": family_sampler, "steps": steps})


def test_revealed_counts_match_upstream_schedules():
    assert revealed_counts(_plan("halton", 576, 32)) == [
        11, 22, 34, 45, 57, 69, 80, 92, 104, 116, 128, 140, 153, 166, 178, 191, 205, 219, 233,
        247, 262, 277, 294, 310, 328, 347, 368, 390, 415, 445, 484, 576]
    assert revealed_counts(_plan("confidence", 256, 12)) == [1, 14, 29, 45, 60, 76, 94, 112, 132,
                                                             156, 185, 256]
    assert revealed_counts(_plan("confidence", 576, 32))[:4] == [1, 11, 23, 35]
    for n in (16, 256, 576, 1024):
        for steps in (2, 5, 8, 12, 16, 24, 32, 48, 64):
            if steps <= n:
                assert revealed_counts(_plan("halton", n, steps)) == \
                    upstream.halton_revealed(steps, n)
                assert revealed_counts(_plan("confidence", n, steps)) == \
                    upstream.confidence_revealed(steps, n)


# --- samplers against the reference ---------------------------------------------------------

SAMPLERS = {
    "halton": dict(sampler="halton", reference="halton", kwargs={}),
    "halton-top-k": dict(sampler="halton", reference="halton", kwargs={"top_k": 5}),
    "halton-config": dict(sampler="halton-config", reference="halton", kwargs={}),
    "halton-eval": dict(sampler="halton-eval", reference="halton", kwargs={}),
    "confidence": dict(sampler="confidence", reference="confidence", kwargs={}),
}


def _reference(files, case, plan, labels, seed):
    preset = presets.MASKGIT_PRESETS[case["sampler"]]
    noise = TorchDraws(seed, plan.steps, len(labels))
    model, y = files["model"], torch.tensor(labels)
    if case["reference"] == "halton":
        t0, t1 = preset["temperature"]
        return upstream.halton_sample(model, y, noise, steps=plan.steps, w=preset["w"],
                                      temp_min=t0, temp_max=t1,
                                      temp_warmup=preset.get("warmup", 0),
                                      randomize=preset.get("randomize", False),
                                      top_k=case["kwargs"].get("top_k", 0))
    return upstream.confidence_sample(model, y, noise, steps=plan.steps, w=preset["w"],
                                      sm_temp=preset["temperature"][0],
                                      r_temp=preset["choice_temperature"])


@pytest.mark.parametrize("steps", [6, 16])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_reveals_the_same_positions_and_codes_as_the_reference(files, pipe, name, steps):
    case = SAMPLERS[name]
    plan, _ = pipe.plan(sampler=case["sampler"], steps=steps, **case["kwargs"])
    labels, seed = [1, 7, 3], 4
    history, final = _reference(files, case, plan, labels, seed)
    trace = list(masked_token.iterate(pipe.transformer, mx.array(labels), plan,
                                      key=mx.random.key(seed)))
    assert len(trace) == len(history) == steps
    for i, (step, expected) in enumerate(zip(trace[:-1], history[:-1])):
        # the mask id marks what is still hidden, so equal grids reveal the same positions
        np.testing.assert_array_equal(np.array(step.tokens), expected.numpy(), f"step {i}")
    np.testing.assert_array_equal(np.array(trace[-1].tokens), final.numpy())
    assert np.array(trace[-1].tokens).max() < K


def test_halton_step_fixes_the_next_slice_of_the_order(pipe):
    plan, _ = pipe.plan(sampler="halton-config", steps=4)
    counts = revealed_counts(plan)
    fixed = [np.array(s.fixed) for s in masked_token.iterate(pipe.transformer, mx.array([2, 5]),
                                                             plan, seed=0)]
    assert [f.shape[1] for f in fixed] == np.diff([0] + counts).tolist()
    np.testing.assert_array_equal(np.concatenate(fixed, axis=1), np.stack([halton_order(4)] * 2))


def test_randomized_halton_rolls_each_samples_order(pipe):
    plan, _ = pipe.plan(sampler="halton", steps=4)
    first = next(masked_token.iterate(pipe.transformer, mx.array([2, 5, 6]), plan, seed=1))
    shifts = np.array(Draws(image_keys(3, seed=1), 4).order_shifts(3, N))
    expected = [np.roll(halton_order(4), k)[:first.fixed.shape[1]] for k in shifts]
    np.testing.assert_array_equal(np.array(first.fixed), np.stack(expected))


def make_plan(config, sampling):
    return presets.make_plan("maskgit", config, sampling)


def test_make_plan_follows_the_preset_and_honours_overrides():
    cfg = maskgit.config_for("tiny", 256)
    plan = make_plan(cfg, maskgit.MASKGIT.sampling)
    assert (plan.order, plan.steps, plan.cfg_scale, plan.temperature, plan.randomize_order) == \
        ("halton", 32, 3.0, (1.0, 1.2), True)  # upstream's w 2 is the guidance scale s 3
    # --cfg is s for every family: 1.5 is upstream's w 0.5
    plan = make_plan(cfg, {"sampler": "halton-config", "steps": 8, "cfg": 1.5,
                           "temperature": 1.1, "top_k": 3})
    assert (plan.steps, plan.cfg_scale, plan.temperature, plan.top_k) == (8, 1.5, (1.1, 1.1), 3)
    assert not plan.randomize_order and plan.temperature_mode == "multiply"
    plan = make_plan(cfg, {"sampler": "confidence"})
    assert (plan.order, plan.steps, plan.cfg_ramp, plan.rewrite_revealed, plan.cfg_scale) == \
        ("confidence", 12, True, True, 4.0)
    assert [make_plan(cfg, {"sampler": name}).cfg_scale
            for name in ("halton-config", "halton-eval")] == [4.0, 1.5]  # w 3 and w 0.5
    assert make_plan(cfg, {"sampler": "halton", "cfg": 1.0}).cfg_scale == 1.0


# --- CLI ------------------------------------------------------------------------------------

def test_cli_generate_with_the_confidence_sampler_writes_a_grid(pipe, tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["generate", str(pipe.folder), "--class", "1", "--n", "3",
                                 "--sampler", "confidence", "--grid", "--output", str(out)])
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.size == (24, 8) and image.text["sampler"] == "confidence"


@pytest.mark.parametrize("args, words", [
    (["--steps", "17"], "exceeds this model's 16 tokens (each step fixes at least one); use at most 16"),
    (["--sampler", "greedy"], "halton, halton-config, halton-eval, confidence"),
    (["--steps", "8", "--temperature", "0"], "must be positive"),
    (["--top-p", "0.9"], "no top-p"),
])
def test_bad_sampling_options_are_refused_before_any_image(pipe, tmp_path, args, words):
    result = runner.invoke(app, ["generate", str(pipe.folder), "--class", "1", *args,
                                 "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()
