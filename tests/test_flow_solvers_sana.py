"""Sana's samplers (flow-matching Euler with a time shift, multistep DPM-Solver++ on flow sigmas)
against diffusers' schedulers driven by a loop as SanaPipeline drives them, on a small fixed
velocity field written once in MLX and once in torch."""

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")

from mlx_imgen.paradigms import DPMSolverPlan, FlowPlan, diffusion  # noqa: E402

LABELS = [2, 5]
NULL = 0
CLASSES = 7
CHANNELS = 4
GUIDANCE = 4.5
# DPMSolverMultistepScheduler as Sana's hub scheduler config sets it (the fields that matter)
SANA_DPM = dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                final_sigmas_type="zero", lower_order_final=True, euler_at_final=False,
                timestep_spacing="linspace", num_train_timesteps=1000)


def field_weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    mix = (0.3 * rng.standard_normal((CHANNELS, CHANNELS))).astype(np.float32)
    time_dir = rng.standard_normal(CHANNELS).astype(np.float32)
    classes = rng.standard_normal((CLASSES, CHANNELS)).astype(np.float32)
    return mix, time_dir, classes


class MLXField:
    """v(x, label, t) = x M + sin(t / 300) d + e[label] + 0.1 x^2, recording the timesteps."""
    null_class = NULL

    def __init__(self):
        self.mix, self.time_dir, self.classes = (mx.array(w) for w in field_weights())
        self.seen = []

    def __call__(self, x, labels, timesteps):
        self.seen.append(np.array(timesteps))
        t = mx.sin(timesteps / 300.0)[:, None, None, None]
        return x @ self.mix + t * self.time_dir + self.classes[labels][:, None, None, :] + \
            0.1 * x * x


class TorchField:
    def __init__(self):
        self.mix, self.time_dir, self.classes = (torch.tensor(w) for w in field_weights())

    def __call__(self, x, labels, timesteps):
        t = torch.sin(timesteps.float() / 300.0)[:, None, None, None]
        return x @ self.mix + t * self.time_dir + self.classes[labels][:, None, None, :] + \
            0.1 * x * x


def initial_latents(seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(LABELS), 6, 6, CHANNELS)) \
        .astype(np.float32)


def diffusers_run(scheduler, steps: int, x: np.ndarray):
    """Latents after each step and the timesteps the model saw, as SanaPipeline's loop
    (timestep_scale 1, CFG on a batch [uncond, cond])."""
    field = TorchField()
    scheduler.set_timesteps(steps)
    labels = torch.tensor([NULL] * len(LABELS) + LABELS)
    latents = torch.tensor(x)
    trail, seen = [], []
    for t in scheduler.timesteps:
        batch = torch.cat([latents] * 2)
        timestep = t.expand(batch.shape[0]) * 1.0
        seen.append(timestep.numpy().copy())
        uncond, cond = field(batch, labels, timestep).chunk(2)
        velocity = uncond + GUIDANCE * (cond - uncond)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        trail.append(latents.numpy().copy())
    return trail, seen


def mlx_run(plan, x: np.ndarray):
    field = MLXField()
    trail = [np.array(z) for z in diffusion.iterate(field, mx.array(LABELS), plan,
                                                     noise=mx.array(x))]
    return trail, field.seen


def assert_same_run(ours, theirs, tol=1e-5):
    (trail, seen), (ref_trail, ref_seen) = ours, theirs
    assert len(trail) == len(ref_trail) and len(seen) == len(ref_seen)
    for got, want in zip(seen, ref_seen):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    for step, (got, want) in enumerate(zip(trail, ref_trail)):
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < tol, f"step {step}: relative error {err:.2e}"


@pytest.mark.parametrize("steps", [4, 20])
def test_shifted_euler_follows_flow_match_euler_discrete(steps):
    x = initial_latents()
    reference = diffusers_run(schedulers.FlowMatchEulerDiscreteScheduler(shift=3.0), steps, x)
    plan = FlowPlan(steps=steps, solver="euler", shift=3.0, cfg_scale=GUIDANCE,
                    schedule="discrete")
    assert_same_run(mlx_run(plan, x), reference)


@pytest.mark.parametrize("steps", [4, 20])
# diffusers' own set_timesteps builds a numpy array from a torch tensor (numpy 2 warns)
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_dpm_solver_follows_diffusers_with_sanas_config(steps):
    x = initial_latents()
    reference = diffusers_run(schedulers.DPMSolverMultistepScheduler(**SANA_DPM), steps, x)
    ours = mlx_run(DPMSolverPlan(steps=steps, cfg_scale=GUIDANCE), x)
    # the model sees the integer timesteps
    assert all(np.array_equal(t, np.round(t)) for t in ours[1])
    assert_same_run(ours, reference)


def test_dpm_solver_schedule_ends_at_zero_and_its_last_step_is_the_data_prediction():
    sigmas = diffusion.dpm_sigmas(4, 3.0)
    assert sigmas[-1] == 0.0 and np.all(np.diff(sigmas) < 0) and sigmas[0] < 1.0
    x, x0 = mx.array([1.0, 2.0]), mx.array([0.5, -1.0])
    assert np.array_equal(np.array(diffusion.dpm_step(x, x0, 0.3, 0.0, x0 * 2, 0.6)),
                          np.array(x0))


def test_second_order_differs_from_first_and_both_reach_the_data_end():
    x = initial_latents()
    first = mlx_run(DPMSolverPlan(steps=6, order=1, cfg_scale=GUIDANCE), x)[0]
    second = mlx_run(DPMSolverPlan(steps=6, order=2, cfg_scale=GUIDANCE), x)[0]
    np.testing.assert_array_equal(first[0], second[0])  # the first step is first order
    assert np.abs(first[2] - second[2]).max() > 1e-4


def test_discrete_flow_schedule_spans_the_trained_times():
    times = diffusion.flow_times(4, 3.0, schedule="discrete")
    assert len(times) == 5 and times[0] == 1.0 and times[-1] == 0.0
    assert times[-2] == pytest.approx(diffusion.shifted(diffusion.shifted(1e-3, 3.0), 3.0))
    np.testing.assert_allclose(diffusion.flow_times(4, 3.0), diffusion.shifted(
        np.linspace(1, 0, 5), 3.0))


@pytest.mark.parametrize("bad, message", [
    (dict(order=3), "order must be 1 or 2"), (dict(shift=0.0), "shift must be positive"),
    (dict(steps=0), "steps must be at least 1")])
def test_dpm_solver_plan_refuses_bad_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        DPMSolverPlan(**bad)


def test_flow_plan_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="unknown flow schedule 'cosine'"):
        FlowPlan(schedule="cosine")
