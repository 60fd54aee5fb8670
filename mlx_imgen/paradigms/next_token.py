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


class ClassPrefix:
    """A class label per image (B,): the prefill embeds it as one prefix token; the null rows
    take the model's null class."""

    def __init__(self, labels):
        self.labels = labels

    @property
    def batch(self) -> int:
        return self.labels.shape[0]

    def prefix_length(self, config) -> int:
        return config.prefix_tokens + config.registers

    def prefill(self, model, guided: bool, xp=MLX) -> dict:
        return {"labels": with_null(self.labels, model.null_class, xp) if guided else self.labels}

    def rows(self, guided: bool, xp=MLX):
        return None  # the prefill computes every row of the decode batch itself

    def step(self, guided: bool, xp=MLX) -> dict:
        return {}


class TextPrefix:
    """Text token ids before the image: `ids` (R, P) the conditional rows of R distinct
    prompts and `null_ids` (R, P) their unconditional rows (a template whose prompt is padded
    out, or a negative prompt's). Rows shorter than P are left-padded, and `mask` and
    `null_mask` (R, P) mark their real tokens (None: every position is). `images` (B,) says
    which row each image takes (None: image i takes row i), so n images of one prompt prefill
    its two rows once and copy their keys and values into the n images' rows of the cache."""

    def __init__(self, ids, null_ids, mask=None, null_mask=None, images=None):
        if tuple(ids.shape) != tuple(null_ids.shape):
            raise ValueError(f"the conditional rows {tuple(ids.shape)} and the unconditional "
                             f"rows {tuple(null_ids.shape)} differ in shape; pad them to one")
        self.ids, self.null_ids, self.images = ids, null_ids, images
        self.mask, self.null_mask = mask, null_mask

    @property
    def batch(self) -> int:
        return self.ids.shape[0] if self.images is None else self.images.shape[0]

    def prefix_length(self, config) -> int:
        return self.ids.shape[1]

    @property
    def padded(self) -> bool:
        return self.mask is not None or self.null_mask is not None

    def _masks(self, guided: bool, xp):
        """The prefilled rows' masks, all-true where a row has none."""
        def full(mask):
            return xp.full(self.ids.shape, True) if mask is None else mask
        masks = [full(self.mask), full(self.null_mask)] if guided else [full(self.mask)]
        return xp.concatenate(masks) if len(masks) > 1 else masks[0]

    def prefill(self, model, guided: bool, xp=MLX) -> dict:
        arguments = {"prefix": xp.concatenate([self.ids, self.null_ids]) if guided else self.ids}
        if self.padded:
            arguments["prefix_mask"] = self._masks(guided, xp)
        return arguments

    def rows(self, guided: bool, xp=MLX):
        """Each decode row's row in the prefill: images' conditional rows, then their null
        rows (R further on)."""
        if self.images is None:
            return None
        if guided:
            return xp.concatenate([self.images, self.images + self.ids.shape[0]])
        return self.images

    def step(self, guided: bool, xp=MLX) -> dict:
        """A padded prefix stays hidden from every later token: each call passes its mask."""
        if not self.padded:
            return {}
        masks = self._masks(guided, xp)
        rows = self.rows(guided, xp)
        return {"prefix_mask": masks if rows is None else masks[rows]}


def as_condition(labels):
    """A ClassPrefix or TextPrefix as given, or class labels (an array) as a ClassPrefix."""
    return labels if isinstance(labels, (ClassPrefix, TextPrefix)) else ClassPrefix(labels)


def _copied_rows(model, prefilled: list, rows, max_length: int) -> list:
    """A cache of `max_length` positions for the decode rows whose prefix keys and values are
    rows `rows` of the prefilled cache."""
    cache = model.make_cache(rows.shape[0], max_length)
    for layer, source in zip(cache, prefilled):
        end = source.offset
        layer.keys[:, :, :end] = source.keys[rows][:, :, :end]
        layer.values[:, :, :end] = source.values[rows][:, :, :end]
        layer.offset = end
    return cache


def decode(model, condition, plan: NextTokenPlan, draws, xp=MLX) -> Iterator:
    """The decoding loop in the namespace `xp`: yields the sampled ids (B, 1) of each token.
    `condition` is a ClassPrefix, a TextPrefix, or class labels: the loop asks it for the
    prefill's and the steps' model arguments and knows nothing of the family."""
    if plan.num_tokens < 1:
        raise ValueError("the number of tokens must be at least 1")
    condition = as_condition(condition)
    guided = plan.cfg_scale != 1.0
    arguments = condition.prefill(model, guided, xp)
    rows = condition.rows(guided, xp)
    prefix = condition.prefix_length(model.config)
    context = prefix + plan.num_tokens
    batch = next(iter(arguments.values())).shape[0]
    prefilled = model.make_cache(batch, context if rows is None else prefix)
    empty = xp.zeros((batch, 0), dtype=xp.ids)
    logits = model(empty, **arguments, cache=prefilled)[:, -1]
    if rows is None:
        cache = prefilled
    else:
        logits, cache = logits[rows], _copied_rows(model, prefilled, rows, context)
    step = condition.step(guided, xp)
    try:
        for i in range(plan.num_tokens):
            if guided:
                logits = guide(logits, plan.cfg_scale, xp)
            token = xp.astype(sample_token(logits, plan, draws, i, xp), xp.ids)[:, None]
            if i + 1 < plan.num_tokens:
                # queue the next forward pass, then wait for this token alone: the yielded
                # token is computed (a loop timing each token waits for all it times) while
                # the next pass runs behind it
                logits = model(doubled(token, xp) if guided else token, cache=cache,
                               **step)[:, -1]
                xp.async_eval(logits)
            xp.eval(token)
            yield token
    finally:
        # a consumer that stops early (a timed loop's step budget) leaves no pass running
        xp.eval(logits)


def iterate(model, labels, plan: NextTokenPlan, *, seed: int | None = None,
            key: mx.array | None = None, first_index: int = 0) -> Iterator[mx.array]:
    """Yield the batch of sampled token ids (B, 1) after each decoding step.

    `labels` are class labels (B,), or a ClassPrefix or TextPrefix of B images. They are
    images `first_index`, ... of a run; image i's token j is drawn from the j-th of
    `num_tokens` keys split from its key (`keys.image_keys` of `seed` or `key`, or `key`
    (B, 2) itself), so an image's tokens do not depend on the batch it is sampled in.
    """
    condition = as_condition(labels)
    keys = image_keys(condition.batch, seed=seed, key=key, first=first_index)
    return decode(model, condition, plan, TokenDraws(keys, max(plan.num_tokens, 1)))


def generate(model, labels, plan: NextTokenPlan, *, seed: int | None = None,
             key: mx.array | None = None, first_index: int = 0, on_step=None) -> mx.array:
    """Token ids (B, num_tokens) sampled in raster order; randomness as in `iterate`."""
    tokens = []
    for i, token in enumerate(iterate(model, labels, plan, seed=seed, key=key,
                                      first_index=first_index)):
        tokens.append(token)
        if on_step:
            on_step(i + 1, plan.steps)
    return mx.concatenate(tokens, axis=1)
