"""Next-token (autoregressive) sampling: prefill the condition, then decode with a KV cache."""

from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from .arrays import MLX
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


PARADIGM = "next-token"


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0, xp=MLX):
    """Keep the top-k logits, then the smallest set whose probability reaches top_p."""
    if 0 < top_k < logits.shape[-1]:
        # the k-th largest value by partial selection (topk partitions, no full sort): the
        # same value a sort puts at -k, so ties with it stay exactly as a sort keeps them
        kth = xp.min(xp.topk(logits, top_k, axis=-1), axis=-1, keepdims=True)
        logits = xp.where(logits < kth, -xp.inf, logits)
    if top_p < 1.0:
        order = xp.argsort(-logits, axis=-1)
        sorted_logits = xp.take_along_axis(logits, order, axis=-1)
        probs = xp.softmax(xp.astype(sorted_logits, xp.float32), axis=-1)
        # drop a token once the mass before it exceeds top_p (the first always stays)
        drop_sorted = (xp.cumsum(probs, axis=-1) - probs) > top_p
        drop = xp.put_along_axis(xp.zeros_like(drop_sorted), order, drop_sorted, axis=-1)
        logits = xp.where(drop, -xp.inf, logits)
    return logits


def token_noise(keys: mx.array, vocab_size: int) -> mx.array:
    """Gumbel noise (B, V) for one token of each image, one key per image."""
    return per_image(mx.random.gumbel, keys, (vocab_size,))


class TokenDraws:
    """The Gumbel noise of every token of a run, image i's from its own key (B, 2) split into
    one key a token; a torch run passes an object with the same method."""

    def __init__(self, keys: mx.array, num_tokens: int):
        self._keys = split_each(keys, num_tokens)

    def token_noise(self, i: int, shape: tuple) -> mx.array:
        return token_noise(self._keys[:, i], shape[-1])


def sample_token(logits, plan: NextTokenPlan, draws, i: int, xp=MLX):
    """Gumbel-max: argmax(filtered logits / T + Gumbel noise) draws from softmax(logits / T)
    among the kept ids; `draws.token_noise(i, shape)` gives token i's noise."""
    if plan.temperature == 0:
        return xp.argmax(logits, axis=-1)
    logits = filter_logits(xp.astype(logits, xp.float32) / plan.temperature, plan.top_k,
                           plan.top_p, xp)
    return xp.argmax(logits + draws.token_noise(i, logits.shape), axis=-1)


def decode(model, labels, plan: NextTokenPlan, draws, xp=MLX) -> Iterator:
    """The decoding loop in the namespace `xp`: yields the sampled ids (B, 1) of each token."""
    if plan.num_tokens < 1:
        raise ValueError("the number of tokens must be at least 1")
    guided = plan.cfg_scale != 1.0
    cond_labels = with_null(labels, model.null_class, xp) if guided else labels
    config = model.config
    context = config.prefix_tokens + config.registers + plan.num_tokens
    cache = model.make_cache(cond_labels.shape[0], context)
    empty = xp.zeros((cond_labels.shape[0], 0), dtype=xp.ids)
    logits = model(empty, cond_labels, cache=cache)[:, -1]
    try:
        for i in range(plan.num_tokens):
            if guided:
                logits = guide(logits, plan.cfg_scale, xp)
            token = xp.astype(sample_token(logits, plan, draws, i, xp), xp.ids)[:, None]
            if i + 1 < plan.num_tokens:
                # queue the next forward pass, then wait for this token alone: the yielded
                # token is computed (a loop timing each token waits for all it times) while
                # the next pass runs behind it
                logits = model(doubled(token, xp) if guided else token, cache=cache)[:, -1]
                xp.async_eval(logits)
            xp.eval(token)
            yield token
    finally:
        # a consumer that stops early (a timed loop's step budget) leaves no pass running
        xp.eval(logits)


def iterate(model, labels: mx.array, plan: NextTokenPlan, *, seed: int | None = None,
            key: mx.array | None = None, first_index: int = 0) -> Iterator[mx.array]:
    """Yield the batch of sampled token ids (B, 1) after each decoding step.

    The labels are images `first_index`, ... of a run; image i's token j is drawn from the
    j-th of `num_tokens` keys split from its key (`keys.image_keys` of `seed` or `key`, or
    `key` (B, 2) itself), so an image's tokens do not depend on the batch it is sampled in.
    """
    keys = image_keys(labels.shape[0], seed=seed, key=key, first=first_index)
    return decode(model, labels, plan, TokenDraws(keys, max(plan.num_tokens, 1)))


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
