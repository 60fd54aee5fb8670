"""The PyTorch reference of DiT's and SiT's samplers and of the KL-VAE: from the same noise, and
MLX's step noise replayed, the torch loops reach MLX's latents in as many model calls; the torch
VAE decodes and encodes as MLX's; the reference profiler times a DiT with its KL decoder."""

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import build, randomize_autoencoder  # noqa: E402
from mlx_imgen.autoencoders.kl import AutoencoderKL, KLConfig, decode_flops  # noqa: E402
from mlx_imgen.weights.keymap import KeyMismatchError  # noqa: E402
from mlx_imgen.families import dit as dit_family  # noqa: E402
from mlx_imgen.paradigms import Dopri5Plan, GaussianPlan, SDEPlan, diffusion  # noqa: E402
from mlx_imgen.profiling import Workload, profile_workload  # noqa: E402
from mlx_imgen.reference import backbone as tb  # noqa: E402
from mlx_imgen.reference import kl as tkl  # noqa: E402
from mlx_imgen.reference import samplers  # noqa: E402
from mlx_imgen.reference.arrays import TorchArrays  # noqa: E402
from mlx_imgen.reference.profiling import profile_reference  # noqa: E402

LABELS = np.array([1, 7], dtype=np.int32)
SHAPE = (2, 8, 8, 4)  # an 8x8 latent in 2x2 patches: DiT's tiny 4x4 token grid
# DiT's block, learned sigma (8 output channels); SiT is the same network
CONFIG = dit_family.backbone_config(2, 32, 4, latent_size=8, num_classes=10)


def pair(seed: int):
    model = build(CONFIG, seed)
    return model, tb.from_mlx(model)


def start_noise(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


class Recorded:
    """Wraps a model of either framework: records the timesteps of every call, and optionally
    turns the backbone into the residual of an epsilon model that starts at the identity.

    A random DiT is no denoiser: DDPM's x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) grows its latents
    to hundreds, where float32 alone differs by more than 1e-4. With eps = x + 0.1 * the DiT's
    and the variance signal squashed into [-1, 1], the latents stay at unit scale, so 1e-4 is
    a tight bound, and the DiT still decides every step (guided and unguided channels alike).
    """

    def __init__(self, model, residual: bool = False):
        self.model, self.residual, self.timesteps = model, residual, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, labels, timesteps):
        self.timesteps.append(timesteps.tolist())
        out = self.model(x, labels, timesteps)
        if not self.residual:
            return out
        c = x.shape[-1]
        if isinstance(out, mx.array):
            return mx.concatenate([x + 0.1 * out[..., :c], mx.tanh(out[..., c:])], axis=-1)
        return torch.cat([x + 0.1 * out[..., :c], torch.tanh(out[..., c:])], dim=-1)


def both(plan, seed: int, residual: bool = False, noise_seed: int = 4):
    """MLX's and torch's trajectories of `plan` from the same noise, MLX's step noise replayed
    in torch: (MLX steps, MLX model, torch steps, torch model, torch run)."""
    model, torch_model = pair(seed)
    mlx_model, torch_model = Recorded(model, residual), Recorded(torch_model, residual)
    x = start_noise()
    expected = [np.array(s) for s in diffusion.iterate(mlx_model, mx.array(LABELS), plan,
                                                       noise=mx.array(x), seed=noise_seed)]
    _, step_noise = samplers.replay_mlx_noise(plan, noise_seed, SHAPE)
    run = samplers.iterate(torch_model, LABELS, plan, noise=x, step_noise=step_noise)
    return expected, mlx_model, [s.numpy() for s in run], torch_model, run


# ---------------------------------------------------------------- DiT: DDPM and DDIM

@pytest.mark.parametrize("options", [
    dict(sampler="ddim"),
    dict(sampler="ddpm"),
    dict(sampler="ddpm", variance="fixed-small", cfg_scale=1.0, guided_channels=None),
    dict(sampler="ddim", eta=0.5, variance="fixed-large", guided_channels=None),
], ids=["ddim", "ddpm-learned-range", "ddpm-fixed-small-no-cfg", "ddim-eta-fixed-large"])
def test_gaussian_samplers_reach_mlx_latents_with_mlx_noise_in_as_many_passes(options):
    plan = GaussianPlan(**{**dict(steps=6, cfg_scale=4.0, guided_channels=3), **options})
    expected, mlx_model, steps, torch_model, run = both(plan, seed=1, residual=True)
    assert len(steps) == len(expected) == run.forward_passes == plan.forward_passes() == 6
    assert len(mlx_model.timesteps) == 6
    # the respaced timesteps, fed as the original integers, once per step and label row
    assert torch_model.timesteps == mlx_model.timesteps
    assert mlx_model.timesteps[0][0] == 999.0 and mlx_model.timesteps[-1][0] == 0.0
    assert 0.3 < np.abs(expected[-1]).max() < 10
    assert np.abs(expected[-1] - start_noise()).mean() > 0.1
    for a, b in zip(expected, steps):  # every step, not only the last
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)


def test_gaussian_sampler_guides_only_the_leading_channels():
    plan = GaussianPlan(steps=3, sampler="ddim", cfg_scale=4.0, guided_channels=3)
    three = both(plan, seed=1, residual=True)[2][-1]
    every = both(dataclasses.replace(plan, guided_channels=None), seed=1, residual=True)[2][-1]
    assert np.abs(three[..., 3] - every[..., 3]).max() > 1e-2  # the fourth channel differs


# ---------------------------------------------------------------- SiT: SDE and dopri5

@pytest.mark.parametrize("form", ["sigma", "increasing-decreasing"])
def test_sde_reaches_mlx_latents_with_mlx_noise_in_as_many_passes(form):
    plan = SDEPlan(steps=5, cfg_scale=4.0, guided_channels=3, diffusion=form)
    expected, mlx_model, steps, torch_model, run = both(plan, seed=2)
    assert len(steps) == run.forward_passes == len(mlx_model.timesteps) == 5
    assert torch_model.timesteps == mlx_model.timesteps  # the last step's time (0.96) included
    assert mlx_model.timesteps[-1][0] == pytest.approx(0.96)
    assert 1 < np.abs(expected[-1]).max() < 20
    for a, b in zip(expected, steps):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)


def test_dopri5_reaches_mlx_latents_in_as_many_passes_and_leaves_the_plan_alone():
    # The step-size control amplifies float32 rounding where a step's error estimate is at
    # rounding level (an MLX run whose outputs are perturbed by 3e-6 can end 0.1 away); these
    # weights and tolerances keep every step clear of that (perturbed, MLX moves 2e-5).
    plan = Dopri5Plan(cfg_scale=4.0, guided_channels=3, atol=1e-3, rtol=1e-3, time_scale=1.0,
                      t_noise=0.0)
    model, torch_model = pair(4)
    counted = Recorded(model)
    x = start_noise()
    expected = [np.array(s) for s in diffusion.iterate(counted, mx.array(LABELS), plan,
                                                       noise=mx.array(x))]
    recorded = (plan.steps_taken, plan.passes_used)
    run = samplers.iterate(torch_model, LABELS, plan, noise=torch.from_numpy(x))
    steps = [s.numpy() for s in run]
    assert (plan.steps_taken, plan.passes_used) == recorded  # the torch run left the plan alone
    assert run.forward_passes == plan.passes_used == len(counted.timesteps) > 8
    assert run.steps_taken == plan.steps_taken and len(steps) == len(expected)
    assert 1 < np.abs(expected[-1]).max() < 20
    np.testing.assert_allclose(steps[-1], expected[-1], rtol=0, atol=1e-4)


def test_torch_dopri5_takes_mlx_steps_on_the_same_ode():
    # a nonlinear ODE of elementwise arithmetic only, identical in both frameworks
    def field(y, t):
        return (1 - 3 * t) * y - 0.5 * y * y * y + t * t

    # (at rtol 1e-3 every step's error estimate stands well above float32 rounding)
    y0 = np.linspace(-1.5, 1.5, 12).astype(np.float32)
    mlx_stats, torch_stats = {}, {}
    expected = list(diffusion.dopri5(field, mx.array(y0), stats=mlx_stats))
    out = list(diffusion.dopri5(field, torch.from_numpy(y0), stats=torch_stats,
                                xp=TorchArrays("cpu")))
    assert torch_stats == mlx_stats and mlx_stats["steps"] >= 4
    np.testing.assert_allclose([t for _, t in out], [t for _, t in expected], rtol=1e-6)
    np.testing.assert_allclose(out[-1][0].numpy(), np.array(expected[-1][0]), atol=1e-5)


# ---------------------------------------------------------------- noise

@pytest.mark.parametrize("plan", [GaussianPlan(steps=3, cfg_scale=2.0), SDEPlan(steps=3)],
                         ids=["ddpm", "sde"])
def test_stochastic_torch_runs_draw_from_a_seeded_generator(plan):
    _, torch_model = pair(1)
    a, calls = samplers.generate(torch_model, LABELS, plan, seed=3, latent_shape=SHAPE[1:])
    b, _ = samplers.generate(torch_model, LABELS, plan, seed=3, latent_shape=SHAPE[1:])
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    c, _ = samplers.generate(torch_model, LABELS, plan, seed=3, noise=x)
    d, _ = samplers.generate(torch_model, LABELS, plan, seed=4, noise=x)
    assert calls == 3 and torch.equal(a, b) and not torch.equal(c, d)


def test_replayed_noise_of_the_wrong_shape_is_refused():
    _, torch_model = pair(1)
    with pytest.raises(ValueError, match=r"step 0's noise has shape \(1, 8, 8, 4\)"):
        samplers.generate(torch_model, LABELS, SDEPlan(steps=3), latent_shape=SHAPE[1:],
                          step_noise=[np.zeros((1, 8, 8, 4), np.float32)] * 3)


# ---------------------------------------------------------------- KL-VAE

TINY_KL = dict(block_out_channels=(8, 16), layers_per_block=1, norm_groups=4)


def random_mlx_kl(seed: int = 0, **options) -> AutoencoderKL:
    """A tiny MLX KL-VAE with every parameter drawn at random (convs and linears by fan-in)."""
    model = AutoencoderKL(KLConfig(**{**TINY_KL, **options}))
    return randomize_autoencoder(model, seed, fan_in_ndims=(2, 4))


@pytest.mark.parametrize("options", [
    {},
    dict(block_out_channels=(8, 8, 16), mid_attention=False, quant_conv=False,
         post_quant_conv=False, scaling_factor=0.5, shift_factor=0.1),
], ids=["sd-layout", "three-levels-no-attention-no-quant-convs-shifted"])
def test_kl_decode_and_encode_of_the_torch_mirror_match_mlx(options):
    model = random_mlx_kl(**options)
    torch_model = tkl.from_mlx(model)
    latents = np.random.default_rng(1).standard_normal((2, 3, 5, 4)).astype(np.float32)
    expected = np.array(model.decode_latents(mx.array(latents)))
    out = tkl.latent_decoder(torch_model)(torch.from_numpy(latents)).numpy()
    side = 2 ** (len(model.config.block_out_channels) - 1)
    assert out.shape == expected.shape == (2, 3 * side, 5 * side, 3)
    assert 0.1 < np.abs(expected).mean() < 10
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
    images = np.tanh(np.random.default_rng(2).standard_normal((2, 8, 12, 3))).astype(np.float32)
    expected = np.array(model.encode_latents(mx.array(images)))
    out = tkl.latent_encoder(torch_model)(torch.from_numpy(images)).numpy()
    assert out.shape == expected.shape == (2, 8 // side, 12 // side, 4)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_kl_load_from_mlx_rejects_another_layout_naming_the_keys():
    other = tkl.build(KLConfig(**{**TINY_KL, "layers_per_block": 2}))
    with pytest.raises(KeyMismatchError, match=r"missing.*decoder\.up_blocks\.0\.resnets\.2"):
        tkl.load_from_mlx(other, random_mlx_kl())


# ---------------------------------------------------------------- profiler

def dit_workload(plan, seed: int = 1, autoencoder: AutoencoderKL | None = None) -> Workload:
    model = build(CONFIG, seed)
    decode = {} if autoencoder is None else dict(
        decode=autoencoder.decode_latents,
        decode_flops_per_image=decode_flops(autoencoder.config, 8, 8))
    return Workload(name="tiny-dit", model=model, plan=plan, size="tiny",
                    latent_shape=SHAPE[1:], **decode)


def test_reference_profile_of_a_dit_with_its_kl_decoder_counts_the_mlx_records_passes():
    vae = random_mlx_kl()
    work = dit_workload(GaussianPlan(steps=3, cfg_scale=4.0, guided_channels=3), autoencoder=vae)
    mlx_record = profile_workload(work, 2, trials=1)
    record = profile_reference(work, 2, trials=1, device="cpu", autoencoder=vae,
                               autoencoder_kind="kl")
    assert set(mlx_record) <= set(record) and record["status"] == "ok"
    assert record["forward_passes_source"] == "counted"
    assert record["forward_passes_per_image"] == mlx_record["forward_passes_per_image"] == 6
    assert record["gflops_per_image"] == mlx_record["gflops_per_image"]
    assert record["gflops_breakdown"]["decode"] == mlx_record["gflops_breakdown"]["decode"] > 0
    assert record["stages_s"]["decode"] > 0 and mlx_record["stages_s"]["decode"] > 0
    with pytest.raises(ValueError, match="no torch decoder for autoencoder kind 'vae'"):
        profile_reference(work, 1, device="cpu", autoencoder=vae, autoencoder_kind="vae")


def test_reference_profile_builds_the_vq_decoder_from_the_mlx_model():
    from test_reference import random_mlx_vq, tiny_workload

    record = profile_reference(tiny_workload("masked-token", steps=2), 1, trials=1,
                               device="cpu", autoencoder=random_mlx_vq())
    assert record["stages_s"]["decode"] > 0


def test_reference_profile_of_dopri5_counts_its_own_passes_in_full():
    plan = Dopri5Plan(cfg_scale=4.0, guided_channels=3, atol=1e-2, rtol=1e-2, time_scale=1.0,
                      t_noise=0.0)
    work = dit_workload(plan, seed=2)
    mlx_record = profile_workload(work, 1, trials=1)
    record = profile_reference(work, 1, trials=1, step_budget_s=1e-9, device="cpu")
    assert record["extrapolated"] is False and record["forward_passes_source"] == "counted"
    passes = record["forward_passes_counted"]
    assert passes == 2 + 6 * record["steps"] and record["steps"] >= record["measured_steps"]
    assert record["forward_passes_per_image"] == 2 * passes
    # the same weights, noise and tolerances: MLX's run took as many passes
    assert record["forward_passes_per_image"] == mlx_record["forward_passes_per_image"]
    assert record["gflops_per_image"] == pytest.approx(mlx_record["gflops_per_image"])
