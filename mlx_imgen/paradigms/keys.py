"""Per-image random keys: every random number of image i comes from a key derived from the
run's seed and i alone, so a seed gives the same images whatever batch samples them.

MLX's random functions take one key; `per_image` maps one over the batch's keys (mx.vmap),
which draws for every image at once exactly what a call with that image's key alone draws.
"""

from typing import Callable

import mlx.core as mx


def image_keys(count: int, *, seed: int | None = None, key: mx.array | None = None,
               first: int = 0) -> mx.array:
    """(count, 2) keys of the images `first`, ..., `first + count - 1` of a run.

    The run's key is `key` (shape (2,)) or else mx.random.key(seed) (seed 0 by default).
    Image i's key folds i into it: the run key is hashed (one threefry split) to two words, i
    is XORed into the second, and the pair is hashed again. `key` of shape (count, 2) is taken as the images' own
    keys.
    """
    if key is not None and key.ndim == 2:
        if key.shape != (count, 2):
            raise ValueError(f"expected {count} image keys of shape (2,), got an array of "
                             f"shape {tuple(key.shape)}")
        return key
    run = key if key is not None else mx.random.key(0 if seed is None else seed)
    mixed = _hash(run)
    index = mx.arange(first, first + count).astype(mx.uint32)
    folded = mx.stack([mx.broadcast_to(mixed[0], index.shape), mixed[1] ^ index], axis=1)
    return mx.vmap(_hash)(folded)


def _hash(key: mx.array) -> mx.array:
    return mx.random.split(key, 1)[0]


def split_each(keys: mx.array, num: int) -> mx.array:
    """(B, num, 2): `num` independent keys from each image's key."""
    return mx.vmap(lambda k: mx.random.split(k, num))(keys)


def per_image(draw: Callable[..., mx.array], keys: mx.array, shape: tuple, **kwargs) -> mx.array:
    """(B, *shape): `draw(shape, key=k, **kwargs)` for each image's key k, e.g.
    `per_image(mx.random.normal, keys, (32, 32, 4))`."""
    return mx.vmap(lambda k: draw(tuple(shape), key=k, **kwargs))(keys)


def keys_of(images: list[tuple[int, int]]) -> mx.array:
    """(B, 2) keys of images given as (seed, index) pairs, each the key `image_keys` gives
    image `index` of the run with `seed` (runs of consecutive indices on one seed at once)."""
    if not images:
        raise ValueError("no images to draw keys for")
    groups, start = [], 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i] != (images[i - 1][0], images[i - 1][1] + 1):
            seed, first = images[start]
            groups.append(image_keys(i - start, seed=seed, first=first))
            start = i
    return mx.concatenate(groups) if len(groups) > 1 else groups[0]
