"""DiT's and SiT's samplers against reference implementations of the same solvers, driving a
tiny DiT/SiT converted from the original layout; plus the adaptive solver on known ODEs."""

import math

import mlx.core as mx
import numpy as np
import pytest
import torch

from dit_files import tiny_dit
from mlx_imgen.backbone import Transformer
from mlx_imgen.families import dit as dit_family
from mlx_imgen.flops import forward_flops, plan_flops
from mlx_imgen.nn import timestep_frequencies
from mlx_imgen.paradigms import Dopri5Plan, FlowPlan, GaussianPlan, SDEPlan, diffusion, presets
from mlx_imgen.paradigms.keys import image_keys
from upstream import dit as upstream

LABELS = [1, 7]
HINTS = {"heads": 4, "image_size": 64}


def convert(model, family=dit_family.DIT) -> Transformer:
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    mlx_model = Transformer(family.infer_config(state, HINTS))
    mlx_model.load_weights(list(family.weights_from_upstream(state).items()), strict=True)
    mx.eval(mlx_model.parameters())
    return mlx_model


@pytest.fixture(scope="module")
def dit_pair():
    model = tiny_dit(seed=1)
    return model, convert(model)


@pytest.fixture(scope="module")
def sit_pair():
    model = tiny_dit(seed=2, sit=True)
    return model, convert(model, dit_family.SIT)


def initial_noise(seed: int = 3):
    x = np.random.default_rng(seed).standard_normal((len(LABELS), 8, 8, 4)).astype(np.float32)
    return x, torch.tensor(x.transpose(0, 3, 1, 2).copy())


def cfg_batch(noise: torch.Tensor):
    """Upstream's sampling state and labels: [z, z] with [labels, null]."""
    return torch.cat([noise, noise]), torch.tensor(LABELS + [10] * len(LABELS))


def to_nchw(x: mx.array) -> np.ndarray:
    return np.array(x).transpose(0, 3, 1, 2)


class GaussianData:
    """The exact epsilon predictor (and a variance signal in [-1, 1]) for data drawn from
    N(mean of the class, 0.5^2) on DDPM's linear schedule: a denoiser whose latents stay near
    unit scale, so solvers can be compared to 1e-4. Written for MLX (NHWC) and torch (NCHW)."""

    null_class = 10

    def __init__(self, framework):
        self.xp = framework
        rng = np.random.default_rng(5)
        self.means = rng.standard_normal((11, 4)).astype(np.float32)
        self.means[10] = 0.0
        self.ab = np.cumprod(1 - diffusion.linear_betas(1000))

    def __call__(self, x, labels, timesteps):
        t = int(timesteps[0].item())
        ab, var = float(self.ab[t]), 0.25
        if self.xp is mx:
            mean = mx.array(self.means)[labels][:, None, None, :]
            eps = math.sqrt(1 - ab) / (ab * var + 1 - ab) * (x - math.sqrt(ab) * mean)
            return mx.concatenate([eps, mx.tanh(x)], axis=-1)
        mean = torch.tensor(self.means)[labels][:, :, None, None]
        eps = math.sqrt(1 - ab) / (ab * var + 1 - ab) * (x - math.sqrt(ab) * mean)
        return torch.cat([eps, torch.tanh(x)], dim=1)

    def forward_with_cfg(self, x, t, y, scale, guided=3):
        half = x[: len(x) // 2]
        out = self(torch.cat([half, half]), y, t)
        cond, uncond = torch.split(out[:, :guided], len(out) // 2)
        mixed = uncond + scale * (cond - uncond)
        return torch.cat([torch.cat([mixed, mixed]), out[:, guided:]], dim=1)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_gaussian_samplers_match_dits_loops_from_the_same_noise(sampler):
    x, z = initial_noise()
    steps, seed = 20, 11
    noise = diffusion.Noise(image_keys(x.shape[0], seed=seed), steps)
    noises = [torch.tensor(to_nchw(noise.step(i, x.shape))) for i in range(steps)]
    state, y = cfg_batch(z)
    schedule = upstream.SpacedDiffusion(steps)
    reference = GaussianData(torch)
    model_fn = lambda x, t: reference.forward_with_cfg(x, t, y, 4.0)  # noqa: E731
    with torch.no_grad():
        if sampler == "ddim":
            expected = schedule.ddim_sample_loop(model_fn, state)
        else:
            expected = schedule.p_sample_loop(model_fn, state, [torch.cat([n, n]) for n in noises])
    plan = GaussianPlan(steps=steps, sampler=sampler, cfg_scale=4.0, guided_channels=3)
    out = diffusion.generate(GaussianData(mx), mx.array(LABELS), plan, noise=mx.array(x), seed=seed)
    expected = expected[: len(LABELS)].numpy()
    assert 0.1 < np.abs(expected).max() < 10  # latents at the scale real ones have
    np.testing.assert_allclose(to_nchw(out), expected, atol=1e-4, rtol=0)


def test_ddim_with_a_converted_dit_matches_dits_loop(dit_pair):
    # the random model is no denoiser: its latents grow to hundreds, so compare relatively
    model, mlx_model = dit_pair
    x, z = initial_noise()
    state, y = cfg_batch(z)
    schedule = upstream.SpacedDiffusion(10)
    with torch.no_grad():
        expected = schedule.ddim_sample_loop(
            lambda x, t: model.forward_with_cfg(x, t, y, 4.0), state)[: len(LABELS)].numpy()
    plan = presets.make_plan("dit", mlx_model.config, {"sampler": "ddim", "steps": 10, "cfg": 4.0})
    out = diffusion.generate(mlx_model, mx.array(LABELS), plan, noise=mx.array(x))
    np.testing.assert_allclose(to_nchw(out), expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sit_ode_matches_the_fixed_grid_reference_solver(sit_pair, solver):
    model, mlx_model = sit_pair
    x, z = initial_noise()
    state, y = cfg_batch(z)
    steps = 6
    with torch.no_grad():
        expected = upstream.sit_ode(lambda x, t: model.forward_with_cfg(x, t, y, 4.0), state,
                                    steps + 1, solver)[: len(LABELS)].numpy()
    plan = presets.make_plan("sit", mlx_model.config,
                                    {"sampler": solver, "steps": steps, "cfg": 4.0})
    out = diffusion.generate(mlx_model, mx.array(LABELS), plan, noise=mx.array(x))
    np.testing.assert_allclose(to_nchw(out), expected, atol=1e-4, rtol=0)


def test_sit_sde_matches_euler_maruyama_given_the_same_noise(sit_pair):
    model, mlx_model = sit_pair
    x, z = initial_noise()
    steps, seed = 5, 4
    noise = diffusion.Noise(image_keys(x.shape[0], seed=seed), steps)
    noises = [torch.tensor(to_nchw(noise.step(i, x.shape))) for i in range(steps - 1)]
    state, y = cfg_batch(z)
    with torch.no_grad():
        expected = upstream.sit_sde(lambda x, t: model.forward_with_cfg(x, t, y, 4.0), state,
                                    steps, [torch.cat([n, n]) for n in noises])
    plan = presets.make_plan("sit", mlx_model.config, {"sampler": "sde", "steps": steps, "cfg": 4.0})
    out = diffusion.generate(mlx_model, mx.array(LABELS), plan, noise=mx.array(x), seed=seed)
    np.testing.assert_allclose(to_nchw(out), expected[: len(LABELS)].numpy(), atol=1e-4, rtol=0)


def test_respacing_matches_dits_published_timesteps():
    assert diffusion.respaced_timesteps(1000, 250)[:5] == [0, 4, 8, 12, 16]
    assert diffusion.respaced_timesteps(1000, 250)[-4:] == [987, 991, 995, 999]
    assert diffusion.respaced_timesteps(1000, 100)[:8] == [0, 10, 20, 30, 40, 50, 61, 71]
    assert diffusion.respaced_timesteps(1000, 50)[:5] == [0, 20, 41, 61, 82]
    schedule = diffusion.GaussianSchedule(1000, 250)
    assert schedule.betas[0] == pytest.approx(1e-4)
    assert 0.0769 < schedule.betas[-1] < 0.0776


def test_guiding_all_channels_differs_from_upstreams_first_three(dit_pair):
    _, mlx_model = dit_pair
    x = mx.array(initial_noise()[0])
    labels = mx.array(LABELS)
    three = diffusion.guided_prediction(mlx_model, labels, 4.0, 1.0, 8, 3)(x, 500.0)
    every = diffusion.guided_prediction(mlx_model, labels, 4.0, 1.0, 8, 4)(x, 500.0)
    cond = mlx_model(x, labels, mx.full((2,), 500.0))
    np.testing.assert_allclose(np.array(three[..., :3]), np.array(every[..., :3]), atol=1e-6)
    # the unguided channels come from the conditional pass
    np.testing.assert_allclose(np.array(three[..., 3:]), np.array(cond[..., 3:]), atol=1e-5)
    np.testing.assert_allclose(np.array(every[..., 4:]), np.array(cond[..., 4:]), atol=1e-5)
    assert not np.allclose(np.array(three[..., 3]), np.array(every[..., 3]))
    plan = presets.make_plan("dit", mlx_model.config, {"cfg": 4.0, "cfg_channels": "all"})
    assert plan.guided_channels == 4


def test_dopri5_reaches_the_analytic_endpoint_within_tolerance():
    # dx/dt = -2 t x: x(1) = x(0) * exp(-1)
    x0 = mx.array([[1.0, -0.5, 2.0]])
    stats = {}
    trajectory = list(diffusion.dopri5(lambda x, t: -2.0 * t * x, x0, atol=1e-8, rtol=1e-6,
                                       stats=stats))
    final, t = trajectory[-1]
    assert t == 1.0
    np.testing.assert_allclose(np.array(final), np.array(x0) * math.exp(-1), rtol=1e-5)
    assert stats["evals"] == 2 + 6 * stats["steps"] and len(trajectory) <= stats["steps"]


def test_dopri5_takes_more_steps_for_tighter_tolerances():
    def steps_for(rtol):
        stats = {}
        list(diffusion.dopri5(lambda x, t: mx.cos(8 * t) * x, mx.ones((4,)), atol=1e-9,
                              rtol=rtol, stats=stats))
        return stats["steps"]

    assert steps_for(1e-3) < steps_for(1e-6)


def test_dopri5_plan_records_the_passes_it_used_for_flops(sit_pair):
    _, mlx_model = sit_pair
    plan = presets.make_plan("sit", mlx_model.config, {"sampler": "dopri5", "cfg": 4.0})
    assert isinstance(plan, Dopri5Plan) and plan.forward_passes() == 0
    done = []
    out = diffusion.generate(mlx_model, mx.array(LABELS), plan, seed=0, latent_shape=(8, 8, 4),
                             on_step=lambda i, total: done.append((i, total)))
    assert out.shape == (2, 8, 8, 4) and np.isfinite(np.array(out)).all()
    assert plan.passes_used == 2 + 6 * plan.steps_taken > 0
    assert done[-1][0] == done[-1][1]  # the estimated total meets the count at the end
    flops = plan_flops(mlx_model.config, plan).total
    assert flops == pytest.approx(2 * plan.passes_used * forward_flops(mlx_model.config).total)


def test_plans_count_their_forward_passes():
    assert GaussianPlan(steps=250).forward_passes() == 250
    assert SDEPlan(steps=250).forward_passes() == 250
    assert FlowPlan(steps=32, solver="heun", t_noise=0.0).forward_passes() == 64


@pytest.mark.parametrize("make", [lambda: GaussianPlan(steps=0), lambda: SDEPlan(steps=0),
                                  lambda: FlowPlan(steps=0), lambda: Dopri5Plan(max_steps=0)])
def test_plans_refuse_steps_below_one(make):
    with pytest.raises(ValueError, match="at least 1"):
        make()


def test_timestep_frequencies_follow_dit_and_diffusers_conventions():
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0.0, 0.25, 17.0, 999.0], dtype=np.float32)
    dit = upstream.timestep_features(torch.tensor(t), 256).numpy()
    np.testing.assert_allclose(np.array(timestep_frequencies(mx.array(t), 256)), dit, atol=1e-4)
    shifted = get_timestep_embedding(torch.tensor(t), 256, flip_sin_to_cos=True,
                                     downscale_freq_shift=1).numpy()
    np.testing.assert_allclose(np.array(timestep_frequencies(mx.array(t), 256, shift=1.0)),
                               shifted, atol=1e-4)
    assert np.abs(dit - shifted).max() > 0.5  # the two conventions really differ


def test_the_mlp_norm_can_use_its_own_epsilon():
    cfg = dit_family.backbone_config(1, 32, 4, latent_size=8, mlp_norm_eps=1e-5)
    block = Transformer(cfg).blocks[0]
    assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-5
