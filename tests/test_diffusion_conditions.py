"""Text conditions reach the diffusion samplers' model as keyword arguments: [cond, null] rows
under guidance, the images' own prompt rows, masks in the same order; class labels unchanged."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_imgen.paradigms import conditions, masked_token
from mlx_imgen.paradigms.conditions import ClassLabels, CrossAttentionText
from mlx_imgen.paradigms.diffusion import (DPMSolverPlan, FlowPlan, dpm_sigmas, dpm_step,
                                           dpm_timesteps, flow_times, generate)

B, H, W, C, L, D, P = 3, 2, 2, 4, 5, 6, 3


class TextModel:
    """A deterministic velocity from latents, time, masked mean of the context and pooled
    rows; it records what each call received."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.context_proj = mx.array(rng.standard_normal((D, C)).astype(np.float32) * 0.3)
        self.pooled_proj = mx.array(rng.standard_normal((P, C)).astype(np.float32) * 0.3)
        self.calls = []

    def __call__(self, x, *, timesteps, context, pooled, context_mask):
        self.calls.append({"rows": x.shape[0], "timesteps": timesteps, "context": context,
                           "pooled": pooled, "context_mask": context_mask})
        weights = context_mask.astype(mx.float32)[..., None]
        mean = (context * weights).sum(1) / mx.maximum(weights.sum(1), 1.0)
        shift = mean @ self.context_proj + pooled @ self.pooled_proj
        return 0.5 * x * (1.0 + 0.001 * timesteps[:, None, None, None]) + shift[:, None, None, :]


def _text(images=None):
    rng = np.random.default_rng(1)
    rows = 2 if images is not None else B
    states, null_states = (mx.array(rng.standard_normal((rows, L, D)).astype(np.float32))
                           for _ in range(2))
    pooled, null_pooled = (mx.array(rng.standard_normal((rows, P)).astype(np.float32))
                           for _ in range(2))
    lengths, null_lengths = [2, 5, 3][:rows], [1] * rows  # the empty prompt: one token
    mask = mx.array(np.arange(L)[None] < np.array(lengths)[:, None])
    null_mask = mx.array(np.arange(L)[None] < np.array(null_lengths)[:, None])
    return CrossAttentionText(states, pooled, null_states, null_pooled, images=images,
                              mask=mask, null_mask=null_mask)


def _expected_rows(text, guided):
    pick = (lambda a: a) if text.images is None else (lambda a: a[text.images])
    rows = {"context": (text.states, text.null_states), "pooled": (text.pooled, text.null_pooled),
            "context_mask": (text.mask, text.null_mask)}
    return {name: mx.concatenate([pick(c), pick(n)]) if guided else pick(c)
            for name, (c, n) in rows.items()}


def _hand_velocity(model, text, scale, x, model_time):
    """The guided velocity written out: [cond, null] rows by hand, then uncond + s (cond -
    uncond)."""
    guided = scale != 1.0
    rows = _expected_rows(text, guided)
    inputs = mx.concatenate([x, x]) if guided else x
    t = mx.full((inputs.shape[0],), model_time, dtype=mx.float32)
    out = model(inputs, timesteps=t, **rows)
    if not guided:
        return out
    cond, uncond = out[: x.shape[0]], out[x.shape[0]:]
    return uncond + scale * (cond - uncond)


def _noise():
    return mx.array(np.random.default_rng(2).standard_normal((B, H, W, C)).astype(np.float32))


PLANS = [FlowPlan(steps=4, cfg_scale=4.5, shift=3.0, schedule="discrete"),
         FlowPlan(steps=4, cfg_scale=1.0),
         DPMSolverPlan(steps=5, cfg_scale=4.5), DPMSolverPlan(steps=5, cfg_scale=1.0)]


def _hand_loop(plan, text, x):
    model = TextModel()
    if isinstance(plan, FlowPlan):
        times = flow_times(plan.steps, plan.shift, plan.t_noise, plan.schedule, plan.train_steps)
        for t, t_next in zip(times[:-1], times[1:]):
            v = _hand_velocity(model, text, plan.cfg_scale, x, float(t) * plan.time_scale)
            x = x + float(t_next - t) * v
        return x
    sigmas = dpm_sigmas(plan.steps, plan.shift, plan.train_steps)
    timesteps = dpm_timesteps(sigmas, plan.train_steps)
    x0_prev = None
    for i in range(plan.steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = _hand_velocity(model, text, plan.cfg_scale, x, float(timesteps[i]) * plan.time_scale)
        x0 = x - s * v
        prev = x0_prev if i > 0 else None
        x = dpm_step(x, x0, s, s_next, prev, float(sigmas[i - 1]) if prev is not None else None)
        x0_prev = x0
    return x


@pytest.mark.parametrize("images", [None, [1, 0, 1]], ids=["own-prompts", "shared-prompts"])
@pytest.mark.parametrize("plan", PLANS, ids=["flow-euler-cfg", "flow-euler", "dpm-cfg", "dpm"])
def test_text_condition_rows_and_result(plan, images):
    text = _text(None if images is None else mx.array(images))
    guided = plan.cfg_scale != 1.0
    model = TextModel()
    out = generate(model, text, plan, noise=_noise())
    assert len(model.calls) == plan.steps
    expected = _expected_rows(text, guided)
    for call in model.calls:
        assert call["rows"] == (2 * B if guided else B)
        for name, rows in expected.items():
            assert call[name].shape[0] == call["rows"]
            assert mx.array_equal(call[name], rows).item(), name
    if images is not None:  # images 0 and 2 share prompt 1: the same rows, cond and null
        first = model.calls[0]
        assert mx.array_equal(first["context"][0], text.states[1]).item()
        assert mx.array_equal(first["context"][2], first["context"][0]).item()
        assert mx.array_equal(first["context_mask"][1], text.mask[0]).item()
        if guided:
            assert mx.array_equal(first["context_mask"][B], text.null_mask[1]).item()
    hand = _hand_loop(plan, text, _noise())
    np.testing.assert_allclose(np.array(out), np.array(hand), rtol=1e-5, atol=1e-5)
    # the condition changes the result: a run without guidance differs from a guided one
    if guided:
        unguided = type(plan)(**{**vars(plan), "cfg_scale": 1.0})
        other = generate(TextModel(), text, unguided, noise=_noise())
        assert np.abs(np.array(other) - np.array(out)).max() > 1e-3


class LabelModel:
    null_class = 7

    def __call__(self, x, labels, timesteps):
        return x * 0.1 + labels.astype(mx.float32)[:, None, None, None] * 0.01 \
            + timesteps[:, None, None, None] * 0.001


def test_class_labels_object_matches_bare_labels():
    labels = mx.array([0, 3, 5])
    plan = FlowPlan(steps=3, cfg_scale=2.0)
    bare = generate(LabelModel(), labels, plan, noise=_noise())
    wrapped = generate(LabelModel(), ClassLabels(labels), plan, noise=_noise())
    assert mx.array_equal(bare, wrapped).item()


def test_text_without_mask_or_pooled_passes_neither():
    seen = {}

    def model(x, *, timesteps, **arguments):
        seen.update(arguments)
        return x

    states = mx.zeros((B, L, D))
    text = CrossAttentionText(states, None, states, None)
    generate(model, text, FlowPlan(steps=1, cfg_scale=2.0), noise=_noise())
    assert set(seen) == {"context"} and seen["context"].shape[0] == 2 * B


def test_bad_masks_are_refused():
    states, pooled = mx.zeros((2, L, D)), mx.zeros((2, P))
    with pytest.raises(ValueError, match="attention mask"):
        CrossAttentionText(states, pooled, states, pooled, mask=mx.ones((2, L + 1)),
                           null_mask=mx.ones((2, L + 1)))
    with pytest.raises(ValueError, match="both"):
        CrossAttentionText(states, pooled, states, pooled, mask=mx.ones((2, L)))


def test_noise_batch_must_match_condition_batch():
    with pytest.raises(ValueError, match="3 images"):
        generate(TextModel(), _text(mx.array([0, 1, 1])), FlowPlan(steps=1),
                 noise=mx.zeros((2, H, W, C)))


def test_masked_token_still_exports_the_shared_conditions():
    assert masked_token.CrossAttentionText is conditions.CrossAttentionText
    assert masked_token.ClassLabels is conditions.ClassLabels
    assert masked_token.as_condition is conditions.as_condition
