"""Next-token (autoregressive) sampling: prefill the condition, then decode with a KV cache."""

from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from .guidance import doubled, guide, with_null
from .keys import image_keys, per_image, split_each


@dataclass
class NextTokenPlan:
    num_tokens: int
    cfg_scale: float = 4.0
    temperature: float = 1.0   # 0 means greedy
    top_k: int = 0             # 0 disables
    top_p: float = 1.0         # 1 disables

    @property
    def steps(self) -> int:
        return self.num_tokens

    def forward_passes(self) -> int:
        # the prefill plus one decode pass for every sampled token except the last
        return self.num_tokens


def filter_logits(logits: mx.array, top_k: int = 0, top_p: float = 1.0) -> mx.array:
    """Keep the top-k logits, then the smallest set whose probability reaches top_p."""
    neg_inf = mx.array(-float("inf"), dtype=logits.dtype)
    if 0 < top_k < logits.shape[-1]:
        kth = mx.sort(logits, axis=-1)[..., -top_k][..., None]
        logits = mx.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        order = mx.argsort(-logits, axis=-1)
        sorted_logits = mx.take_along_axis(logits, order, axis=-1)
        probs = mx.softmax(sorted_logits.astype(mx.float32), axis=-1)
        # drop a token once the mass before it exceeds top_p (the first always stays)
        drop_sorted = (mx.cumsum(probs, axis=-1) - probs) > top_p
        drop = mx.put_along_axis(mx.zeros_like(drop_sorted), order, drop_sorted, axis=-1)
        logits = mx.where(drop, neg_inf, logits)
    return logits


def token_noise(keys: mx.array, vocab_size: int) -> mx.array:
    """Gumbel noise (B, V) for one token of each image, one key per image."""
    return per_image(mx.random.gumbel, keys, (vocab_size,))


def sample_token(logits: mx.array, plan: NextTokenPlan, keys: mx.array) -> mx.array:
    """Gumbel-max: argmax(filtered logits / T + Gumbel noise) draws from softmax(logits / T)
    among the kept ids; `keys` (B, 2) give each image's noise."""
    if plan.temperature == 0:
        return mx.argmax(logits, axis=-1)
    logits = filter_logits(logits.astype(mx.float32) / plan.temperature, plan.top_k, plan.top_p)
    return mx.argmax(logits + token_noise(keys, logits.shape[-1]), axis=-1)


def iterate(model, labels: mx.array, plan: NextTokenPlan, *, seed: int | None = None,
            key: mx.array | None = None, first_index: int = 0) -> Iterator[mx.array]:
    """Yield the batch of sampled token ids (B, 1) after each decoding step.

    The labels are images `first_index`, ... of a run; image i's token j is drawn from the
    j-th of `num_tokens` keys split from its key (`keys.image_keys` of `seed` or `key`, or
    `key` (B, 2) itself), so an image's tokens do not depend on the batch it is sampled in.
    """
    if plan.num_tokens < 1:
        raise ValueError("the number of tokens must be at least 1")
    use_cfg = plan.cfg_scale != 1.0
    cond_labels = with_null(labels, model.null_class) if use_cfg else labels
    keys = split_each(image_keys(labels.shape[0], seed=seed, key=key, first=first_index),
                      plan.num_tokens)
    cfg = model.config
    context = cfg.prefix_tokens + cfg.registers + plan.num_tokens
    cache = model.make_cache(cond_labels.shape[0], context)
    empty = mx.zeros((cond_labels.shape[0], 0), dtype=mx.int32)
    logits = model(empty, cond_labels, cache=cache)[:, -1]
    for i in range(plan.num_tokens):
        if use_cfg:
            logits = guide(logits, plan.cfg_scale)
        token = sample_token(logits, plan, keys[:, i]).astype(mx.int32)[:, None]
        if i + 1 < plan.num_tokens:
            step_input = doubled(token) if use_cfg else token
            logits = model(step_input, cache=cache)[:, -1]
            mx.async_eval(logits, token)
        else:
            mx.eval(token)
        yield token


def generate(model, labels: mx.array, plan: NextTokenPlan, *, seed: int | None = None,
             key: mx.array | None = None, first_index: int = 0, on_step=None) -> mx.array:
    """Token ids (B, num_tokens) sampled in raster order; randomness as in `iterate`."""
    tokens = []
    for i, token in enumerate(iterate(model, labels, plan, seed=seed, key=key,
                                      first_index=first_index)):
        tokens.append(token)
        if on_step:
            on_step(i + 1, plan.steps)
    return mx.concatenate(tokens, axis=1)
