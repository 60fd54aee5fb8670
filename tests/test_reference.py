"""The PyTorch reference path: the torch mirror computes what the MLX model computes, the torch
samplers run the same forward passes to the same results, and the reference profiler reports
the MLX record's fields."""

import dataclasses
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")

from conftest import build, randomize_autoencoder, tiny_config  # noqa: E402
from mlx_imgen.autoencoders.vq import VQConfig, VQModel  # noqa: E402
from mlx_imgen.backbone import BackboneConfig  # noqa: E402
from mlx_imgen.weights.keymap import KeyMismatchError  # noqa: E402
from mlx_imgen.grid import default_plan, grid_config  # noqa: E402
from mlx_imgen.paradigms import (FlowPlan, MaskedTokenPlan, NextTokenPlan, diffusion,  # noqa: E402
                                 masked_token, next_token)
from mlx_imgen.paradigms.keys import image_keys  # noqa: E402
from mlx_imgen.profiling import Workload, profile_workload  # noqa: E402
from mlx_imgen.reference import TORCH_MISSING, pick_device, require_torch  # noqa: E402
from mlx_imgen.reference import backbone as tb  # noqa: E402
from mlx_imgen.reference import samplers  # noqa: E402
from mlx_imgen.reference import vq as tvq  # noqa: E402
from mlx_imgen.reference.profiling import profile_reference  # noqa: E402
from upstream.llamagen_vq import tiny_vq_config  # noqa: E402

TINY = dict(depth=2, width=32, heads=4, grid_size=4, vocab_size=24, num_classes=10)


def tiny_grid(paradigm: str):
    """The controlled grid's configuration of `paradigm`, shrunk to a test size."""
    return dataclasses.replace(grid_config(paradigm, "S"), **TINY)


CAUSAL = {
    "llamagen": tiny_config(causal=True, positions="rope2d", rope_prefix="zeros"),
    "grid-next-token": tiny_grid("next-token"),
    "registers-rope-identity": tiny_config(causal=True, registers=2, rope_prefix="identity",
                                           mlp="gelu_tanh", norm="layer", qkv_bias=True),
}
CONFIGS = {
    **CAUSAL,
    "grid-masked-token": tiny_grid("masked-token"),
    "grid-diffusion": tiny_grid("diffusion"),
    "registers-qknorm-projection": tiny_config(
        conditioning="adaln", positions="learned", mask_token=True, head_bias=True, registers=1,
        qk_norm="rms", qk_norm_per_head=False),
    "patches-wide-output": tiny_config(
        input="patches", conditioning="adaln", timestep=True, positions="sincos2d",
        in_channels=4, patch_size=2, out_channels=8, mlp="gelu_tanh", norm="layer",
        norm_affine=False, final_norm_affine=False, head_bias=True),
    "head-dim-split-qkv-layer-qknorm": tiny_config(
        width=32, heads=3, head_dim=12, fused_qkv=False, qk_norm="layer", mlp_bias=True,
        registers=2, rope_prefix="identity", mask_token=True),
    "cross-attention-rms-bias": tiny_config(
        conditioning="adaln", positions="none", context_dim=12, qk_norm="rms",
        final_norm_bias=True, timestep=True, mask_token=True, qkv_bias=True, out_bias=True),
    "diffusers-dit-options": tiny_config(
        input="patches", conditioning="adaln", timestep=True, timestep_freq_shift=1.0,
        positions="sincos2d", in_channels=4, out_channels=8, mlp="gelu_tanh", norm="layer",
        norm_eps=1e-6, mlp_norm_eps=1e-2, norm_affine=False, final_norm_affine=False,
        head_bias=True),
    "predict-mask-halton-maskgit": tiny_config(
        conditioning="adaln", positions="learned", mask_token=True, predict_mask=True,
        final_norm_bias=True, registers=1, head_bias=True),
    # aMUSEd's U-ViT layers: continuous modulation of RMSNorms and a bias-free MLP LayerNorm
    "continuous-modulation-geglu": tiny_config(
        conditioning="adaln", modulation="continuous", modulation_bias=False, positions="none",
        context_dim=12, mlp="geglu", mlp_bias=False, mlp_norm="layer", norm_bias=False,
        qkv_bias=False, out_bias=False, timestep=True),
    "layer-norm-without-affine-prefix": tiny_config(
        norm="layer", norm_affine=False, final_norm_affine=False, positions="learned",
        mlp="gelu_tanh", mlp_bias=False),
}


def pair(cfg, seed: int = 0):
    model = build(cfg, seed)
    return model, tb.from_mlx(model)


def inputs(cfg, batch: int = 2, seed: int = 0):
    """Matching MLX and torch inputs: (x, labels, timesteps, context)."""
    rng = np.random.default_rng(seed)
    if cfg.input == "tokens":
        high = cfg.vocab_size + int(cfg.mask_token)
        x = rng.integers(0, high, (batch, cfg.num_tokens)).astype(np.int32)
    else:
        side = cfg.grid_size * cfg.patch_size
        x = rng.standard_normal((batch, side, side, cfg.in_channels)).astype(np.float32)
    labels = np.array([3, cfg.num_classes] * batch)[:batch].astype(np.int32)
    timesteps = np.linspace(20.0, 980.0, batch).astype(np.float32) if cfg.timestep else None
    context = (rng.standard_normal((batch, 5, cfg.context_dim)).astype(np.float32)
               if cfg.context_dim else None)
    return x, labels, timesteps, context


def run_both(model, torch_model, x, labels, timesteps=None, context=None):
    as_mx = lambda a: None if a is None else mx.array(a)  # noqa: E731
    as_torch = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    mlx_out = model(as_mx(x), as_mx(labels), as_mx(timesteps), context=as_mx(context))
    with torch.no_grad():
        torch_out = torch_model(as_torch(x).long() if x.dtype == np.int32 else as_torch(x),
                                as_torch(labels).long(), as_torch(timesteps),
                                context=as_torch(context))
    return np.array(mlx_out), torch_out.numpy()


# ---------------------------------------------------------------- the mirror's forward

def test_the_mirror_implements_every_backbone_option():
    assert {f.name for f in dataclasses.fields(BackboneConfig)} == tb.MIRRORED_OPTIONS


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_mirror_forward_matches_mlx(name):
    cfg = CONFIGS[name]
    model, torch_model = pair(cfg)
    expected, out = run_both(model, torch_model, *inputs(cfg))
    assert out.shape == expected.shape
    assert 0.05 < np.abs(expected).mean() < 20  # outputs of order 1, so 1e-4 is a tight bound
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_load_from_mlx_copies_every_parameter_and_transposes_convs():
    model, torch_model = pair(CONFIGS["grid-diffusion"])
    names = dict(tree_flatten(model.parameters()))
    assert set(names) == set(torch_model.state_dict())
    conv = np.array(names["patch_embed.proj.weight"])                      # O, kH, kW, I
    np.testing.assert_array_equal(torch_model.patch_embed.proj.weight.detach().numpy(),
                                  conv.transpose(0, 3, 1, 2))


def test_load_from_mlx_rejects_a_mismatched_model_naming_the_keys():
    model = build(CONFIGS["llamagen"])
    other = tb.TorchTransformer(dataclasses.replace(CONFIGS["llamagen"], vocab_size=30,
                                                    qkv_bias=True))
    with pytest.raises(KeyMismatchError, match=r"missing.*blocks\.0\.attn\.qkv\.bias.*"
                                               r"wrong shape.*token_embed\.weight"):
        tb.load_from_mlx(other, model)


# ---------------------------------------------------------------- KV cache

@pytest.mark.parametrize("name", list(CAUSAL))
def test_torch_kv_cache_decode_matches_its_full_forward(name):
    cfg = CAUSAL[name]
    _, torch_model = pair(cfg)
    x, labels, _, _ = inputs(cfg)
    tokens, labels = torch.from_numpy(x).long(), torch.from_numpy(labels).long()
    extra = cfg.prefix_tokens + cfg.registers
    with torch.no_grad():
        full = torch_model(tokens[:, :-1], labels)[:, extra - 1:]  # position i predicts token i
        cache = torch_model.make_cache(2)
        steps = [torch_model(tokens[:, :0], labels, cache=cache)[:, -1:]]
        steps.append(torch_model(tokens[:, :3], cache=cache))          # several at an offset
        for i in range(3, cfg.num_tokens - 1):
            steps.append(torch_model(tokens[:, i:i + 1], cache=cache))
    decoded = torch.cat(steps, dim=1)
    assert decoded.shape == full.shape == (2, cfg.num_tokens, cfg.vocab_size)
    np.testing.assert_allclose(decoded.numpy(), full.numpy(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- samplers

class Counted:
    """An MLX model that counts its forward calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


LABELS = np.array([1, 7], dtype=np.int32)


def both_samplers(cfg, plan, seed: int = 0, **kwargs):
    """(MLX steps, MLX calls, torch steps, torch calls) of the same plan."""
    model, torch_model = pair(cfg, seed)
    counted = Counted(model)
    mlx_steps = [np.array(s.tokens if hasattr(s, "tokens") else s) for s in
                 _mlx_iterate(counted, plan, **{k: mx.array(v) for k, v in kwargs.items()})]
    run = samplers.iterate(torch_model, torch.from_numpy(LABELS), plan,
                           **{k: torch.from_numpy(v) for k, v in kwargs.items()})
    torch_steps = [(s.tokens if hasattr(s, "tokens") else s).numpy() for s in run]
    return mlx_steps, counted.calls, torch_steps, run.forward_passes


def _mlx_iterate(model, plan, **kwargs):
    module = {NextTokenPlan: next_token, MaskedTokenPlan: masked_token, FlowPlan: diffusion}
    return module[type(plan)].iterate(model, mx.array(LABELS), plan, **kwargs)


@pytest.mark.parametrize("name, cfg_scale", [("llamagen", 2.0), ("grid-next-token", 1.0)])
def test_greedy_next_token_gives_mlx_tokens_in_as_many_passes(name, cfg_scale):
    cfg = CONFIGS[name]
    plan = dataclasses.replace(default_plan("next-token", cfg), cfg_scale=cfg_scale,
                               temperature=0)
    # seed 2: weights whose greedy sequences do not collapse onto one repeated token
    mlx_steps, mlx_calls, torch_steps, torch_calls = both_samplers(cfg, plan, seed=2)
    assert len(mlx_steps) == len(torch_steps) == plan.steps
    assert mlx_calls == torch_calls == plan.forward_passes()
    tokens = np.concatenate(torch_steps, axis=1)
    np.testing.assert_array_equal(tokens, np.concatenate(mlx_steps, axis=1))
    assert len(np.unique(tokens)) > 2  # the comparison is not between constant sequences


def test_sampled_next_token_replaying_mlx_draws_gives_mlx_tokens():
    cfg = CONFIGS["llamagen"]
    plan = NextTokenPlan(num_tokens=cfg.num_tokens, cfg_scale=2.0, temperature=1.5, top_k=12,
                         top_p=0.95)
    model, torch_model = pair(cfg, seed=2)
    expected = np.array(next_token.generate(model, mx.array(LABELS), plan, seed=9,
                                            first_index=3))
    draws = samplers.replay_mlx_draws(plan, 9, len(LABELS), first_index=3)
    tokens, _ = samplers.generate(torch_model, LABELS, plan, draws=draws)
    np.testing.assert_array_equal(tokens.numpy(), expected)
    assert len(np.unique(expected)) > 5  # sampled, not one repeated id


@pytest.mark.parametrize("order", ["confidence", "halton"])
def test_greedy_masked_token_gives_mlx_tokens_in_as_many_passes(order):
    cfg = CONFIGS["grid-masked-token"]
    plan = dataclasses.replace(default_plan("masked-token", cfg, steps=5), order=order,
                               temperature=(0.0, 0.0), choice_temperature=0.0)
    mlx_steps, mlx_calls, torch_steps, torch_calls = both_samplers(cfg, plan)
    assert mlx_calls == torch_calls == plan.forward_passes() == len(torch_steps) == 5
    for a, b in zip(mlx_steps, torch_steps):  # every intermediate state, not only the last
        np.testing.assert_array_equal(b, a)
    assert not np.any(torch_steps[-1] == cfg.vocab_size)


class ReplayedDraws:
    """MLX's random draws of a masked-token run, handed to the torch sampler as tensors."""

    def __init__(self, draws):
        self.draws = draws

    def __getattr__(self, name):
        method = getattr(self.draws, name)
        return lambda *args: torch.from_numpy(np.array(method(*args)))


@pytest.mark.parametrize("order, options", [
    ("confidence", dict(top_k=6, temperature=(1.5, 0.5))),
    ("halton", dict(randomize_order=True, cfg_ramp=True, rewrite_revealed=True)),
], ids=["confidence-top-k", "halton-randomized"])
def test_sampled_masked_token_replaying_mlx_draws_gives_mlx_tokens(order, options):
    cfg = CONFIGS["grid-masked-token"]
    plan = MaskedTokenPlan(num_tokens=cfg.num_tokens, steps=4, cfg_scale=2.5, order=order,
                           **options)
    model, torch_model = pair(cfg)
    draws = masked_token.Draws(image_keys(len(LABELS), seed=7), plan.steps)
    expected = [np.array(s.tokens) for s in
                masked_token.iterate(model, mx.array(LABELS), plan, draws=draws)]
    run = samplers.iterate(torch_model, LABELS, plan, draws=ReplayedDraws(draws))
    for a, b in zip(expected, [s.tokens.numpy() for s in run]):
        np.testing.assert_array_equal(b, a)
    assert run.forward_passes == 4 and len(np.unique(expected[-1])) > 3


@pytest.mark.parametrize("solver, options", [
    ("euler", dict(shift=2.0)),
    ("heun", dict(shift=2.0)),
    ("heun", dict(t_noise=0.0, guided_channels=3, time_scale=1.0)),  # SiT's path, DiT's CFG
], ids=["euler", "heun", "heun-sit-path-3-guided-channels"])
def test_flow_from_the_same_noise_reaches_mlx_latents_in_as_many_passes(solver, options):
    cfg = CONFIGS["grid-diffusion"]
    plan = dataclasses.replace(default_plan("diffusion", cfg, steps=4), solver=solver, **options)
    noise = np.random.default_rng(5).standard_normal((2, 8, 8, 4)).astype(np.float32)
    mlx_steps, mlx_calls, torch_steps, torch_calls = both_samplers(cfg, plan, noise=noise)
    assert mlx_calls == torch_calls == plan.forward_passes() == 4 * (2 if solver == "heun" else 1)
    assert np.abs(torch_steps[-1] - noise).mean() > 0.1  # the solver moved the latents
    np.testing.assert_allclose(torch_steps[-1], mlx_steps[-1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("plan", [
    NextTokenPlan(num_tokens=16, cfg_scale=2.0, temperature=1.0, top_k=5, top_p=0.9),
    MaskedTokenPlan(num_tokens=16, steps=4, cfg_scale=2.0),
    FlowPlan(steps=3, solver="heun", cfg_scale=2.0),
], ids=["next-token", "masked-token", "diffusion"])
def test_sampled_torch_runs_are_seeded_and_count_the_plans_passes(plan):
    name = {NextTokenPlan: "llamagen", MaskedTokenPlan: "registers-qknorm-projection",
            FlowPlan: "patches-wide-output"}[type(plan)]
    _, torch_model = pair(CONFIGS[name])
    shape = {"latent_shape": (8, 8, 4)} if isinstance(plan, FlowPlan) else {}
    a, calls = samplers.generate(torch_model, LABELS, plan, seed=3, **shape)
    b, _ = samplers.generate(torch_model, LABELS, plan, seed=3, **shape)
    c, _ = samplers.generate(torch_model, LABELS, plan, seed=4, **shape)
    assert calls == plan.forward_passes()
    assert torch.equal(a, b) and not torch.equal(a, c)
    if not isinstance(plan, FlowPlan):
        assert a.shape == (2, 16) and int(a.max()) < CONFIGS[name].vocab_size


def test_the_torch_namespace_implements_every_operation_the_loops_call():
    from mlx_imgen.paradigms.arrays import MLX, OPERATIONS
    from mlx_imgen.reference.arrays import TorchArrays

    torch_arrays = TorchArrays("cpu")
    assert [name for name in OPERATIONS if not callable(getattr(torch_arrays, name, None))] == []
    assert [name for name in OPERATIONS if not callable(getattr(MLX, name, None))] == []


def test_top_k_and_top_p_filtering_keep_the_mlx_tokens():
    from mlx_imgen.reference.arrays import TorchArrays

    logits, xp = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])), TorchArrays("cpu")
    assert torch.isfinite(next_token.filter_logits(logits, top_k=2, xp=xp)).tolist() == [
        [False, True, False, True, False]]
    assert torch.isfinite(next_token.filter_logits(logits, top_p=0.75, xp=xp)).tolist() == [
        [False, True, False, True, True]]


# ---------------------------------------------------------------- VQ

def random_mlx_vq(seed: int = 0) -> VQModel:
    """The tiny MLX VQ with every parameter drawn at random (convs scaled by fan-in)."""
    return randomize_autoencoder(VQModel(VQConfig.from_dict(tiny_vq_config())), seed)


def test_vq_decode_of_torch_loaded_from_mlx_matches_mlx():
    model = random_mlx_vq()
    torch_model = tvq.from_mlx(model)
    codes = np.random.default_rng(1).integers(0, 64, (2, 3, 5)).astype(np.int32)
    expected = np.array(model.decode_codes(mx.array(codes)))
    out = tvq.code_decoder(torch_model)(torch.from_numpy(codes)).numpy()
    assert out.shape == expected.shape == (2, 6, 10, 3)
    assert 0.3 < np.abs(expected).mean() < 3
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
    square = np.random.default_rng(2).integers(0, 64, (1, 16)).astype(np.int32)
    np.testing.assert_allclose(
        tvq.code_decoder(torch_model)(torch.from_numpy(square)).numpy(),
        np.array(model.decode_codes(mx.array(square.reshape(1, 4, 4)))), rtol=0, atol=1e-4)


def test_vq_load_from_mlx_rejects_another_layout():
    wrong = tvq.CodeDecoder(VQConfig.from_dict({**tiny_vq_config(), "num_res_blocks": 2}))
    with pytest.raises(KeyMismatchError, match=r"missing.*decoder\.up_blocks\.0\.resnets\.2"):
        tvq.load_from_mlx(wrong, random_mlx_vq())


# ---------------------------------------------------------------- profiler

def tiny_workload(paradigm: str, steps: int = 3) -> Workload:
    cfg = tiny_grid(paradigm)
    model = build(cfg)
    plan = default_plan(paradigm, cfg, steps)
    shape = (8, 8, 4) if paradigm == "diffusion" else None
    return Workload(name=f"tiny-{paradigm}", model=model, plan=plan, size="tiny",
                    latent_shape=shape)


@pytest.mark.parametrize("paradigm", ["next-token", "masked-token", "diffusion"])
def test_reference_profile_counts_the_mlx_records_forward_passes(paradigm):
    work = tiny_workload(paradigm)
    mlx_record = profile_workload(work, 2, trials=1)
    record = profile_reference(work, 2, trials=2, device="cpu")
    assert set(mlx_record) <= set(record)
    assert record["forward_passes_source"] == "counted"
    assert record["forward_passes_per_image"] == mlx_record["forward_passes_per_image"]
    assert record["gflops_per_image"] == mlx_record["gflops_per_image"]
    assert record["parameters"] == mlx_record["parameters"]
    assert record["framework"] == "torch" and record["device"] == "cpu"
    assert record["peak_memory_gb"] is None and "CUDA" in record["peak_memory_note"]
    lat = record["latency_s"]
    assert 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert record["images_per_s"] == pytest.approx(2 / lat["median"])
    assert record["extrapolated"] is False and record["measured_steps"] == record["steps"]


def test_reference_profile_labels_a_cut_short_loop_as_extrapolated():
    work = tiny_workload("masked-token", steps=4)
    record = profile_reference(work, 1, trials=1, step_budget_s=1e-9, device="cpu")
    assert record["measured_steps"] == 1 and record["extrapolated"] is True
    assert record["forward_passes_counted"] == 1
    assert record["forward_passes_per_image"] == 4 * 2  # the plan's count, under CFG


def test_reference_batch_that_runs_out_of_memory_is_recorded_not_raised():
    work = tiny_workload("diffusion")
    torch_model = tb.from_mlx(work.model)

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    torch_model.forward = exhausted
    record = profile_reference(work, 64, trials=1, device="cpu", torch_model=torch_model)
    assert record["status"] == "out_of_memory" and "out of memory" in record["error"]
    assert record["batch_size"] == 64 and record["framework"] == "torch"


def test_reference_profile_times_a_torch_decode():
    work = tiny_workload("next-token")
    decode = tvq.code_decoder(tvq.from_mlx(random_mlx_vq()))
    record = profile_reference(work, 1, trials=1, device="cpu", decode=decode)
    assert record["stages_s"]["decode"] > 0


# ---------------------------------------------------------------- torch is optional

def test_torch_is_imported_only_when_the_reference_is_asked_for():
    code = ("import sys, mlx_imgen, mlx_imgen.reference, mlx_imgen.profiling; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_torch_gets_one_sentence_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ValueError) as err:
        require_torch()
    assert str(err.value) == TORCH_MISSING
    assert "pip install 'mlx-imgen[reference]'" in TORCH_MISSING


def test_pick_device_prefers_cuda_then_mps_then_cpu():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device() == expected
