import itertools
import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_imgen.paradigms import FlowPlan, MaskedTokenPlan, NextTokenPlan, diffusion, masked_token, next_token
from mlx_imgen.paradigms.guidance import guide, with_null
from mlx_imgen.paradigms.masked_token import halton_order, schedule_counts
from mlx_imgen.paradigms.next_token import filter_logits


# --- masked-token --------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["confidence", "halton"])
@pytest.mark.parametrize("steps", [1, 5, 16])
def test_masked_sampler_unmasks_every_token_in_exactly_the_requested_steps(masked_model, order, steps):
    cfg = masked_model.config
    plan = MaskedTokenPlan(num_tokens=cfg.num_tokens, steps=steps, cfg_scale=2.0, order=order)
    trace = list(masked_token.iterate(masked_model, mx.array([1, 2]), plan, seed=0))
    assert len(trace) == steps
    final = np.array(trace[-1].tokens)
    assert not np.any(final == masked_model.mask_id)
    if steps > 1:
        assert np.any(np.array(trace[-2].tokens) == masked_model.mask_id)


@pytest.mark.parametrize("order", ["confidence", "halton"])
def test_masked_sampler_never_remasks_or_changes_a_fixed_token(masked_model, order):
    cfg = masked_model.config
    plan = MaskedTokenPlan(num_tokens=cfg.num_tokens, steps=6, order=order, cfg_scale=1.5)
    previous = np.full((2, cfg.num_tokens), masked_model.mask_id)
    for step in masked_token.iterate(masked_model, mx.array([4, 5]), plan, seed=3):
        tokens = np.array(step.tokens)
        fixed_before = previous != masked_model.mask_id
        np.testing.assert_array_equal(tokens[fixed_before], previous[fixed_before])
        previous = tokens


@pytest.mark.parametrize("schedule", ["cosine", "arccos", "linear"])
def test_masked_sampler_fixes_the_schedules_count_at_each_step(masked_model, schedule):
    cfg = masked_model.config
    plan = MaskedTokenPlan(num_tokens=cfg.num_tokens, steps=5, schedule=schedule)
    counts = schedule_counts(cfg.num_tokens, 5, schedule)
    masked_before = np.full(2, cfg.num_tokens)
    for step, count in zip(masked_token.iterate(masked_model, mx.array([0, 1]), plan, seed=1), counts):
        masked_now = (np.array(step.tokens) == masked_model.mask_id).sum(axis=1)
        np.testing.assert_array_equal(masked_before - masked_now, [count, count])
        assert step.fixed.shape == (2, count)
        masked_before = masked_now


def test_schedule_counts_follow_the_cosine_mask_ratio():
    counts = schedule_counts(256, 8, "cosine")
    assert sum(counts) == 256 and min(counts) >= 1
    revealed = list(itertools.accumulate(counts))
    for i, r in enumerate(revealed[:-1], start=1):
        assert r == math.floor(256 * (1 - math.cos(math.pi / 2 * i / 8)))
    assert counts[0] < counts[-1]  # cosine reveals few tokens first, many at the end


def test_schedule_counts_match_halton_maskgit_arccos_reference():
    # cumulative counts printed by upstream's Halton sampler for 16x16 tokens and 32 steps
    expected = [5, 10, 15, 20, 25, 30, 35, 41, 46, 51, 57, 62, 68, 73, 79, 85, 91, 97, 103, 110,
                116, 123, 130, 138, 146, 154, 163, 173, 184, 198, 215, 256]
    assert list(itertools.accumulate(schedule_counts(256, 32, "arccos"))) == expected


def test_halton_order_matches_upstream_sequence_and_covers_the_grid():
    order = halton_order(16)
    assert order[:20].tolist() == [133, 74, 193, 39, 172, 99, 232, 30, 144, 85, 219, 50, 183, 125,
                                   244, 9, 142, 65, 198, 43]
    assert sorted(order.tolist()) == list(range(256))
    assert halton_order(24)[:5].tolist() == [296, 160, 434, 82, 378]


def test_halton_order_fixes_positions_in_halton_sequence(masked_model):
    cfg = masked_model.config
    plan = MaskedTokenPlan(num_tokens=cfg.num_tokens, steps=4, order="halton")
    fixed = [np.array(s.fixed[0]) for s in masked_token.iterate(masked_model, mx.array([1]), plan)]
    np.testing.assert_array_equal(np.concatenate(fixed), halton_order(4))


def test_masked_plan_refuses_more_steps_than_tokens():
    with pytest.raises(ValueError, match="cannot exceed the number of tokens"):
        MaskedTokenPlan(num_tokens=16, steps=17)


# --- flow matching -------------------------------------------------------------------------

def _endpoint_error(solver, steps):
    # dx/dt = -2 t x has x(t) = x(1) * exp(1 - t^2); integrating from t=1 to t=0 gives x(1) * e
    x1 = mx.array([[1.0, -0.5]])
    x = list(diffusion.integrate(lambda x, t: -2.0 * t * x, x1, diffusion.flow_times(steps), solver))[-1]
    return float(mx.abs(x - x1 * math.e).max())


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_flow_solvers_reach_the_analytic_endpoint(solver):
    assert _endpoint_error(solver, 400) < (5e-3 if solver == "euler" else 1e-5)


def test_heun_error_falls_faster_with_steps_than_euler():
    euler = [_endpoint_error("euler", n) for n in (10, 20, 40)]
    heun = [_endpoint_error("heun", n) for n in (10, 20, 40)]
    euler_order = math.log2(euler[1] / euler[2])
    heun_order = math.log2(heun[1] / heun[2])
    assert 0.8 < euler_order < 1.2     # first order
    assert 1.8 < heun_order < 2.2      # second order
    assert heun[2] < euler[2] / 10


def test_flow_times_shift_moves_steps_towards_noise():
    plain, shifted = diffusion.flow_times(4), diffusion.flow_times(4, shift=3.0)
    assert plain[0] == shifted[0] == 1.0 and plain[-1] == shifted[-1] == 0.0
    assert np.all(shifted[1:-1] > plain[1:-1])


def test_flow_sampler_is_reproducible_from_explicit_noise(flow_model):
    noise = mx.random.normal((2, 8, 8, 4), key=mx.random.key(5))
    plan = FlowPlan(steps=3, solver="heun", cfg_scale=2.0)
    a = diffusion.generate(flow_model, mx.array([1, 2]), plan, noise=noise)
    b = diffusion.generate(flow_model, mx.array([1, 2]), plan, noise=noise)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert a.shape == noise.shape


# --- classifier-free guidance --------------------------------------------------------------

def test_cfg_at_scale_one_equals_the_conditional_output():
    out = mx.random.normal((4, 3))
    np.testing.assert_array_equal(np.array(guide(out, 1.0)), np.array(out[:2]))


def test_cfg_at_scale_s_equals_uncond_plus_s_times_difference():
    out = mx.random.normal((4, 3))
    cond, uncond = np.array(out[:2]), np.array(out[2:])
    np.testing.assert_allclose(np.array(guide(out, 3.5)), uncond + 3.5 * (cond - uncond), rtol=1e-6)


def test_guided_velocity_combines_conditional_and_null_class_passes(flow_model):
    x = mx.random.normal((1, 8, 8, 4))
    labels = mx.array([3])
    t = 0.4
    velocity = diffusion.guided_velocity(flow_model, labels, 2.5, 1000.0, 4)
    cond = flow_model(x, labels, mx.array([400.0]))[..., :4]
    uncond = flow_model(x, mx.array([flow_model.null_class]), mx.array([400.0]))[..., :4]
    np.testing.assert_allclose(np.array(velocity(x, t)), np.array(uncond + 2.5 * (cond - uncond)),
                               atol=1e-5)
    plain = diffusion.guided_velocity(flow_model, labels, 1.0, 1000.0, 4)
    np.testing.assert_allclose(np.array(plain(x, t)), np.array(cond), atol=1e-6)


def test_cfg_batch_puts_null_class_second():
    assert with_null(mx.array([1, 2]), 10).tolist() == [1, 2, 10, 10]


# --- next-token ----------------------------------------------------------------------------

def test_greedy_decoding_with_cfg_picks_the_argmax_of_guided_logits(causal_model):
    cfg = causal_model.config
    labels = mx.array([1, 7])
    plan = NextTokenPlan(num_tokens=cfg.num_tokens, cfg_scale=3.0, temperature=0)
    tokens = next_token.generate(causal_model, labels, plan)
    # replay with full forwards: every chosen token must be the argmax of the guided logits
    both = with_null(labels, causal_model.null_class)
    logits = causal_model(mx.concatenate([tokens, tokens])[:, :-1], both)
    expected = mx.argmax(guide(logits, 3.0), axis=-1)
    np.testing.assert_array_equal(np.array(tokens), np.array(expected))


def test_next_token_sampling_is_reproducible_from_a_seed(causal_model):
    plan = NextTokenPlan(num_tokens=16, cfg_scale=2.0, temperature=1.0, top_k=5)
    a = next_token.generate(causal_model, mx.array([1]), plan, seed=11)
    b = next_token.generate(causal_model, mx.array([1]), plan, seed=11)
    c = next_token.generate(causal_model, mx.array([1]), plan, seed=12)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.array_equal(np.array(a), np.array(c))


def test_top_k_and_top_p_filtering_keep_the_right_tokens():
    logits = mx.log(mx.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    kept_k = np.isfinite(np.array(filter_logits(logits, top_k=2)))
    assert kept_k.tolist() == [[False, True, False, True, False]]
    # 0.4 + 0.3 = 0.7 < 0.75, so the 0.15 token is still needed; 0.1 and 0.05 are not
    kept_p = np.isfinite(np.array(filter_logits(logits, top_p=0.75)))
    assert kept_p.tolist() == [[False, True, False, True, True]]


def test_confidence_of_the_sampled_id_equals_the_full_log_softmax_entry():
    key_logits, key_noise = mx.random.split(mx.random.key(3))
    normal = mx.random.normal((2, 64, 16384), key=key_logits) * 4
    extreme = mx.where(normal > 6, -mx.inf, normal * 1e37)  # top-k'd ids and huge logits
    for scaled in (normal, extreme):
        sampled = mx.argmax(scaled + mx.random.gumbel(scaled.shape, key=key_noise), axis=-1)
        plain = mx.take_along_axis(scaled - mx.logsumexp(scaled, axis=-1, keepdims=True),
                                   sampled[..., None], axis=-1)[..., 0]
        fast = masked_token.sampled_log_prob(scaled, sampled)
        assert not mx.any(mx.isnan(plain)).item()
        np.testing.assert_array_equal(np.array(fast), np.array(plain))


def _sorted_top_k(logits, k):
    """The plain definition: everything below the value a full sort puts k-th from the top."""
    kth = mx.sort(logits, axis=-1)[..., -k][..., None]
    return mx.where(logits < kth, -mx.inf, logits)


@pytest.mark.parametrize("k", [1, 2, 7, 2000, 16383])
def test_top_k_by_partial_selection_keeps_exactly_what_a_full_sort_keeps(k):
    key = mx.random.key(k)
    normal = mx.random.normal((3, 16384), key=key) * 5
    # coarse values make many ties, with the k-th value among them; extreme ones test the ends
    ties = mx.round(normal / 3)
    extreme = mx.concatenate([normal[:, :-3] * 1e30, mx.array([[-mx.inf, mx.inf, 3e38]] * 3)],
                             axis=-1)
    for logits in (normal, ties, extreme):
        fast, plain = filter_logits(logits, top_k=k), _sorted_top_k(logits, k)
        np.testing.assert_array_equal(np.array(fast), np.array(plain))
    # and the Gumbel-max tokens drawn after either are the same
    noise = mx.random.gumbel((3, 16384), key=mx.random.key(1))
    np.testing.assert_array_equal(np.array(mx.argmax(filter_logits(normal, top_k=k) + noise, -1)),
                                  np.array(mx.argmax(_sorted_top_k(normal, k) + noise, -1)))


def test_sampled_tokens_stay_within_top_k(causal_model):
    plan = NextTokenPlan(num_tokens=16, cfg_scale=1.0, temperature=1.0, top_k=1)
    greedy = NextTokenPlan(num_tokens=16, cfg_scale=1.0, temperature=0)
    np.testing.assert_array_equal(
        np.array(next_token.generate(causal_model, mx.array([2]), plan, seed=4)),
        np.array(next_token.generate(causal_model, mx.array([2]), greedy)))


def test_next_token_decoding_works_with_register_tokens():
    from conftest import build, tiny_config

    model = build(tiny_config(causal=True, positions="rope2d", registers=2))
    labels = mx.array([1, 3])
    plan = NextTokenPlan(num_tokens=16, cfg_scale=2.0, temperature=0)
    tokens = next_token.generate(model, labels, plan)
    logits = model(mx.concatenate([tokens, tokens])[:, :-1], with_null(labels, model.null_class))
    # outputs at the class prefix and the registers come first; the last of them predicts token 0
    expected = mx.argmax(guide(logits[:, 2:], 2.0), axis=-1)
    np.testing.assert_array_equal(np.array(tokens), np.array(expected))
