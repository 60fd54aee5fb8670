"""The masked-token sampler with aMUSEd's preset against diffusers' AmusedScheduler, driven by
diffusers' own AmusedPipeline loop and fed the same random draws; the preset's refusals; the
text condition's batch layout."""

import math
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
import torch

from diffusers_vq_files import tiny_vq
from mlx_imgen import families
from mlx_imgen.paradigms import masked_token, presets
from mlx_imgen.paradigms.keys import image_keys
from mlx_imgen.paradigms.masked_token import (ClassLabels, CrossAttentionText, Draws,
                                              MaskedTokenPlan, masked_counts)
from mlx_imgen.uvit import UVit
from uvit_files import tiny_config, tiny_uvit

CODES, MASK_ID = 24, 27          # logits score the codes; the mask id lies beyond them
TEXT_LENGTH, WIDTH, POOLED, EMBED = 5, 6, 4, 8


def amused_config(grid: int):
    return SimpleNamespace(grid_size=grid, num_tokens=grid * grid)


class Weights:
    """The fixed random tables both logits functions read."""

    def __init__(self, num_tokens: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.position = rng.normal(0, 1.5, (num_tokens, CODES)).astype(np.float32)
        self.embedding = rng.normal(0, 1, (MASK_ID + 1, EMBED)).astype(np.float32)
        self.token_mix = rng.normal(0, 1, (EMBED, CODES)).astype(np.float32)
        self.neighbour = rng.normal(0, 1, (EMBED, CODES)).astype(np.float32)
        self.context = rng.normal(0, 0.5, (WIDTH, CODES)).astype(np.float32)
        self.pooled = rng.normal(0, 0.5, (POOLED, CODES)).astype(np.float32)
        self.micro = rng.normal(0, 0.05, (5, CODES)).astype(np.float32)


def logits_of(xp, w, tokens, context, pooled, micro):
    """(B, N) tokens -> (B, N, CODES): a position table, each token's embedding and its
    neighbour's, the mean token embedding, the text and the micro-conditions."""
    emb = w["embedding"][tokens]                                  # (B, N, E)
    neighbour = xp.roll(emb, 1, 1)
    whole = emb.mean(1, keepdims=True)                            # (B, 1, E)
    text = (context.mean(1) @ w["context"] + pooled @ w["pooled"] + micro @ w["micro"])
    return (w["position"][None] + (emb + whole) @ w["token_mix"] + neighbour @ w["neighbour"]
            + text[:, None])


class MLXModel:
    mask_id = MASK_ID

    def __init__(self, weights: Weights):
        self.w = {k: mx.array(v) for k, v in vars(weights).items()}
        self.calls = []

    def __call__(self, tokens, *, context, pooled, micro_conditions):
        self.calls.append((tokens.shape[0], context.shape[0], pooled.shape[0],
                           np.array(micro_conditions)))
        return logits_of(SimpleNamespace(roll=mx.roll), self.w, tokens, context, pooled,
                         micro_conditions)


class TorchTransformer(torch.nn.Module):
    """UVit2DModel's call signature on the same logits: (B, h, w) ids -> (B, CODES, h, w)."""

    def __init__(self, weights: Weights):
        super().__init__()
        self.w = {k: torch.from_numpy(v) for k, v in vars(weights).items()}
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):  # what the pipeline asks of its components (ModelMixin's)
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def forward(self, input_ids, micro_conds, pooled_text_emb, encoder_hidden_states,
                cross_attention_kwargs=None):
        b, h, w = input_ids.shape
        logits = logits_of(SimpleNamespace(roll=torch.roll), self.w, input_ids.reshape(b, -1),
                           encoder_hidden_states, pooled_text_emb, micro_conds)
        return logits.permute(0, 2, 1).reshape(b, CODES, h, w)


def texts(prompts: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    def draw(*shape):
        return rng.normal(0, 1, shape).astype(np.float32)
    return draw(prompts, TEXT_LENGTH, WIDTH), draw(prompts, POOLED), \
        draw(prompts, TEXT_LENGTH, WIDTH), draw(prompts, POOLED)


def diffusers_run(monkeypatch, transformer, text, grid, steps, guidance, per_prompt, draws,
                  plan, codes: int = CODES, mask_id: int = MASK_ID):
    """AmusedPipeline's loop with its multinomial and Gumbel noise replaced by MLX's draws
    (Gumbel-max draws from the same distribution as the multinomial): the codes after every
    step, (B, N) each."""
    from diffusers import AmusedPipeline, AmusedScheduler
    from diffusers.schedulers import scheduling_amused

    states, pooled, null_states, null_pooled = (torch.from_numpy(a) for a in text)
    batch, n = states.shape[0] * per_prompt, grid * grid
    step = {"i": -1}

    def multinomial(probs, count, generator=None):
        step["i"] += 1
        noise = torch.from_numpy(np.array(draws.token_noise(step["i"], (batch, n, codes))))
        return torch.argmax(torch.log(probs) + noise.reshape(batch * n, codes), -1,
                            keepdim=True)

    def gumbel_noise(t, generator=None):
        return torch.from_numpy(np.array(draws.choice_noise(step["i"], (batch, n))))

    monkeypatch.setattr(torch, "multinomial", multinomial)
    monkeypatch.setattr(scheduling_amused, "gumbel_noise", gumbel_noise)
    # a 16x VQ-GAN: the pipeline's image size, hence its micro-conditions, is 16 x the grid
    vqvae = tiny_vq(block_out_channels=(4,) * 5, norm_num_groups=2,
                    down_block_types=("DownEncoderBlock2D",) * 5,
                    up_block_types=("UpDecoderBlock2D",) * 5)
    pipe = AmusedPipeline(vqvae=vqvae, tokenizer=None, text_encoder=None,
                          transformer=transformer,
                          scheduler=AmusedScheduler(mask_token_id=mask_id))
    pipe.set_progress_bar_config(disable=True)
    trace = []
    pipe(prompt_embeds=pooled, encoder_hidden_states=states,
         negative_prompt_embeds=null_pooled, negative_encoder_hidden_states=null_states,
         height=16 * grid, width=16 * grid, num_inference_steps=steps,
         guidance_scale=guidance, num_images_per_prompt=per_prompt, output_type="latent",
         callback=lambda i, t, latents: trace.append(latents.reshape(batch, n).numpy().copy()),
         callback_steps=1, micro_conditioning_aesthetic_score=plan.micro_conditions[4],
         micro_conditioning_crop_coord=plan.micro_conditions[2:4])
    assert step["i"] == steps - 1
    return trace


@pytest.mark.parametrize("grid, steps, guidance, per_prompt", [
    (4, 12, 10.0, 1),     # aMUSEd's defaults
    (4, 16, 10.0, 1),     # as many steps as tokens: one token a step
    (8, 12, 10.0, 2),     # two images per prompt
    (8, 7, 3.0, 1),
    (8, 1, 10.0, 1),
    (4, 5, 1.0, 1),       # no guidance: no null rows
])
def test_codes_and_positions_after_every_step_match_amused_scheduler(monkeypatch, grid, steps,
                                                                     guidance, per_prompt):
    n = grid * grid
    weights, text = Weights(n, seed=grid + steps), texts(2, seed=steps)
    plan = presets.make_plan("amused", amused_config(grid), {"steps": steps, "cfg": guidance})
    states, pooled, null_states, null_pooled = (mx.array(a) for a in text)
    # the pipeline repeats the prompt rows: images p0, p1, p0, p1 for two per prompt
    images = mx.array(np.tile(np.arange(2), per_prompt)) if per_prompt > 1 else None
    condition = CrossAttentionText(states, pooled, null_states, null_pooled, images=images)
    draws = Draws(image_keys(condition.batch, seed=steps), steps)
    model = MLXModel(weights)
    ours = list(masked_token.iterate(model, condition, plan, draws=draws))
    expected = diffusers_run(monkeypatch, TorchTransformer(weights), text, grid, steps, guidance,
                             per_prompt, draws, plan)
    assert len(ours) == len(expected) == steps
    before = np.full((condition.batch, n), MASK_ID)
    for i, (step, theirs) in enumerate(zip(ours, expected)):
        tokens = np.array(step.tokens)
        np.testing.assert_array_equal(tokens, theirs, err_msg=f"step {i}")
        for b in range(condition.batch):
            revealed = set(np.flatnonzero((before[b] == MASK_ID) & (theirs[b] != MASK_ID)))
            assert set(np.array(step.fixed[b]).tolist()) == revealed, f"step {i} image {b}"
        before = theirs
    assert (before != MASK_ID).all() and before.max() < CODES
    rows = 2 * condition.batch if guidance != 1 else condition.batch
    micro = np.array([16 * grid, 16 * grid, 0, 0, 6], dtype=np.float32)
    for tokens, context, pooled_rows, micro_rows in model.calls:
        assert tokens == context == pooled_rows == rows
        np.testing.assert_array_equal(micro_rows, np.tile(micro, (rows, 1)))


def test_the_tiny_uvit_samples_step_for_step_as_diffusers(monkeypatch):
    """The real model on both sides: a tiny random UVit2DModel in diffusers' pipeline loop and
    its conversion in ours, fed the same draws, give the same codes after every step."""
    reference = tiny_uvit(seed=5)
    family = families.get("amused")
    state = {k: mx.array(v.numpy()) for k, v in reference.state_dict().items()}
    model = UVit(family.infer_config(state, {"config_json": tiny_config()}))
    model.load_weights(list(family.weights_from_upstream(state).items()), strict=True)
    cfg = model.config
    rng = np.random.default_rng(7)
    text = tuple(rng.normal(0, 1, shape).astype(np.float32) for shape in
                 ((1, 7, cfg.encoder_hidden_size), (1, cfg.cond_embed_dim)) * 2)
    plan = presets.make_plan("amused", cfg, presets.defaults("amused"))
    condition = CrossAttentionText(*(mx.array(a) for a in text))
    draws = Draws(image_keys(1, seed=3), plan.steps)
    ours = [np.array(step.tokens) for step in
            masked_token.iterate(model, condition, plan, draws=draws)]
    theirs = diffusers_run(monkeypatch, reference, text, cfg.grid_size, plan.steps, plan.cfg_scale,
                           1, draws, plan, codes=cfg.codebook_size, mask_id=cfg.mask_id)
    assert len(ours) == len(theirs) == 12
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {i}")
    assert (ours[-1] < cfg.codebook_size).all() and (ours[5] == cfg.mask_id).any()


def torch_masked_counts(n: int, steps: int) -> list[int]:
    """AmusedScheduler.step's mask_len, op for op in torch (the last step reveals the rest)."""
    timesteps = torch.arange(steps).flip(0)
    masked, out = torch.tensor([[n]]), []
    for timestep in timesteps:
        if timestep == 0:
            out.append(0)
            continue
        step_idx = (timesteps == timestep).nonzero()
        ratio = (step_idx + 1) / len(timesteps)
        mask_len = (n * torch.cos(ratio * math.pi / 2)).floor()
        mask_len = torch.max(torch.tensor([1]), torch.min(masked - 1, mask_len))
        masked = mask_len
        out.append(int(mask_len))
    return out


@pytest.mark.parametrize("n", [16, 64, 256, 1024])
def test_float32_masked_counts_match_torch(n):
    for steps in range(1, min(64, n) + 1):
        plan = MaskedTokenPlan(num_tokens=n, steps=steps, count="masked", progress="after")
        counts = masked_counts(plan)
        assert counts == torch_masked_counts(n, steps), f"{n} tokens, {steps} steps"
        assert all(a > b for a, b in zip([n] + counts, counts)), "a step revealed nothing"


def test_guidance_at_or_below_one_is_off_as_in_amused_pipeline():
    for cfg in (1.0, 0.5, 0.0, -2.0):
        plan = presets.make_plan("amused", amused_config(4), {"cfg": cfg})
        assert plan.cfg_scale == 1.0
    assert presets.make_plan("amused", amused_config(4), {"cfg": 1.5}).cfg_scale == 1.5


def test_amused_defaults_make_amuseds_plan():
    plan = presets.make_plan("amused", amused_config(16), presets.defaults("amused"))
    assert (plan.steps, plan.cfg_scale, plan.choice_temperature) == (12, 10.0, 2.0)
    assert plan.micro_conditions == (256.0, 256.0, 0.0, 0.0, 6.0)
    assert (plan.count, plan.progress, plan.choice_progress, plan.order) == \
        ("masked", "after", "linspace", "confidence")
    big = presets.make_plan("amused", amused_config(32), {"aesthetic_score": 5, "crop": [2, 3]})
    assert big.micro_conditions == (512.0, 512.0, 2.0, 3.0, 5.0)


@pytest.mark.parametrize("option, value, named", [
    ("steps", 17, "exceeds this model's 16 tokens"),
    ("steps", 0, "--steps"),
    ("cfg", math.inf, "--cfg"),
    ("cfg", math.nan, "--cfg"),
    ("choice_temperature", math.nan, "--choice-temperature"),
    ("choice_temperature", -1.0, "--choice-temperature"),
    ("aesthetic_score", math.inf, "--aesthetic-score"),
    ("crop", [0], "--crop"),
])
def test_amused_preset_refuses_in_one_sentence(option, value, named):
    with pytest.raises(ValueError, match=named) as error:
        presets.make_plan("amused", amused_config(4), {**presets.defaults("amused"),
                                                      option: value})
    assert str(error.value).count(". ") == 0 and "\n" not in str(error.value)


class Recorded(dict):
    def __init__(self, values):
        super().__init__(values)
        self.read = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def test_amused_preset_reads_every_option_it_records():
    sampling = Recorded(presets.defaults("amused"))
    presets.make_plan("amused", amused_config(4), sampling)
    assert sampling.read == set(presets.defaults("amused"))


def test_text_condition_lays_out_cond_then_null_rows_of_each_image():
    states, pooled = mx.arange(2 * 3 * 2).reshape(2, 3, 2), mx.array([[1.0], [2.0]])
    null_states, null_pooled = -states, -pooled
    condition = CrossAttentionText(states, pooled, null_states, null_pooled,
                                   images=mx.array([1, 0, 1]))
    guided = condition.arguments(None, True)
    np.testing.assert_array_equal(np.array(guided["pooled"])[:, 0], [2, 1, 2, -2, -1, -2])
    np.testing.assert_array_equal(np.array(guided["context"][4]), -np.array(states[0]))
    alone = condition.arguments(None, False)
    assert alone["context"].shape == (3, 3, 2) and condition.batch == 3
    with pytest.raises(ValueError, match="differ in shape"):
        CrossAttentionText(states, pooled, null_states[:, :2], null_pooled)


def test_class_labels_and_bare_labels_give_the_same_arguments():
    model = SimpleNamespace(null_class=9)
    labels = mx.array([3, 4])
    given = ClassLabels(labels).arguments(model, True)
    bare = masked_token.as_condition(labels).arguments(model, True)
    np.testing.assert_array_equal(np.array(given["labels"]), [3, 4, 9, 9])
    np.testing.assert_array_equal(np.array(bare["labels"]), np.array(given["labels"]))


class TorchSamplerModel(torch.nn.Module):
    """The same logits under the sampler's call convention, for the torch run of its loop."""
    mask_id = MASK_ID

    def __init__(self, weights: Weights):
        super().__init__()
        self.w = {k: torch.from_numpy(v) for k, v in vars(weights).items()}
        self.head = torch.nn.Linear(1, 1)  # where the reference runs look for the device

    def forward(self, tokens, *, context, pooled, micro_conditions):
        assert context.dtype == pooled.dtype == micro_conditions.dtype == torch.float32
        return logits_of(SimpleNamespace(roll=torch.roll), self.w, tokens, context, pooled,
                         micro_conditions)


def test_torch_run_of_the_loop_replays_mlx_with_a_text_condition():
    from mlx_imgen.reference import samplers

    weights, (states, pooled, null_states, null_pooled) = Weights(16, seed=4), texts(2, seed=4)
    condition = CrossAttentionText(mx.array(states), mx.array(pooled), mx.array(null_states),
                                   mx.array(null_pooled), images=mx.array([1, 0, 1]))
    plan = presets.make_plan("amused", amused_config(4), {"steps": 6})
    ours = masked_token.generate(MLXModel(weights), condition, plan, seed=3)
    theirs, passes = samplers.generate(TorchSamplerModel(weights), condition, plan,
                                       draws=samplers.replay_mlx_draws(plan, 3, 3))
    assert passes == 6
    np.testing.assert_array_equal(theirs.numpy(), np.array(ours))
