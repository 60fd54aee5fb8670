"""What every diffusion solver shares: the model's guided prediction and the run's noise."""

from typing import Callable

import mlx.core as mx

from ..arrays import MLX
from ..conditions import ClassLabels, as_condition
from ..guidance import doubled, guide, with_null
from ..keys import per_image, split_each

Predict = Callable[[mx.array, float], mx.array]


def guided_prediction(model, labels, cfg_scale: float, time_scale: float = 1.0,
                      keep_channels: int | None = None, guided_channels: int | None = None, *,
                      upstream_batch: bool = False, xp=MLX) -> Predict:
    """The prediction for latents x at time t, with the null condition in the same batch for CFG.

    `labels` is class labels (or ClassLabels): the model is called model(x, labels, timesteps),
    the null class in the labels' second half under CFG. Any other condition object
    (conditions.py, e.g. CrossAttentionText) gives keyword arguments instead:
    model(x, timesteps=timesteps, **condition.arguments(...)), laid out [cond, null] under CFG.

    `keep_channels` keeps the leading output channels (None: as many as x has). CFG mixes the
    leading `guided_channels` (None: as many as x has); the other channels come from the
    conditional pass, as DiT's and SiT's `forward_with_cfg` guide 3 of 4 latent channels.
    With `upstream_batch`, x is that function's batch [x, x']: the model sees [x, x], and the
    second half of the result keeps the unconditional values outside the guided channels. Only
    an adaptive solver needs it, because its error norm spans the whole batch.
    """
    use_cfg = cfg_scale != 1.0
    if upstream_batch and not use_cfg:
        raise ValueError("the upstream CFG batch exists only with guidance (cfg_scale != 1)")
    call = _model_call(model, as_condition(labels), use_cfg, xp)

    def predict(x, t: float):
        first = x[: x.shape[0] // 2] if upstream_batch else x
        inputs = doubled(first, xp) if use_cfg else first
        timesteps = xp.full((inputs.shape[0],), t * time_scale, dtype=xp.float32)
        out = call(inputs, timesteps)[..., :keep_channels or x.shape[-1]]
        if not use_cfg:
            return xp.astype(out, x.dtype)
        g = guided_channels or x.shape[-1]
        mixed = guide(out[..., :g], cfg_scale, xp)
        if g >= out.shape[-1]:
            return xp.astype(doubled(mixed, xp) if upstream_batch else mixed, x.dtype)
        cond, uncond = xp.split(out[..., g:], 2, axis=0)
        result = xp.concatenate([mixed, cond], axis=-1)
        if upstream_batch:
            result = xp.concatenate([result, xp.concatenate([mixed, uncond], axis=-1)])
        return xp.astype(result, x.dtype)

    return predict


def _model_call(model, condition, guided: bool, xp):
    """model(inputs, timesteps) with the condition's rows (doubled with the null ones when
    guided) bound once: class labels positionally, as class-conditional backbones take them,
    any other condition as keyword arguments."""
    if isinstance(condition, ClassLabels):
        labels = condition.labels
        labels = with_null(labels, model.null_class, xp) if guided else labels
        return lambda inputs, timesteps: model(inputs, labels, timesteps)
    arguments = condition.arguments(model, guided, xp)
    return lambda inputs, timesteps: model(inputs, timesteps=timesteps, **arguments)


def guided_velocity(model, labels: mx.array, cfg_scale: float, time_scale: float = 1000.0,
                    out_channels: int | None = None, guided_channels: int | None = None) -> Predict:
    """Velocity of a class-conditional backbone with CFG; `out_channels` keeps the leading
    channels of the prediction (learned-sigma models emit more)."""
    return guided_prediction(model, labels, cfg_scale, time_scale, out_channels, guided_channels)


class Noise:
    """Every random number of one diffusion run, each image's from its own key: `keys` (B, 2)
    (`keys.image_keys`) each split into steps + 1, the initial noise's first, then step i's.
    A torch run passes an object with the same `step` method."""

    def __init__(self, keys: mx.array, steps: int):
        self._keys = split_each(keys, steps + 1)

    def start(self, latent_shape: tuple) -> mx.array:
        """Standard normal latents (B, H, W, C) to start from."""
        return per_image(mx.random.normal, self._keys[:, 0], latent_shape)

    def step(self, i: int, shape: tuple, dtype=mx.float32) -> mx.array:
        """Step i's standard normal noise of `shape` (B, H, W, C)."""
        if shape[0] != self._keys.shape[0]:
            raise ValueError(f"this noise holds keys for {self._keys.shape[0]} images, not "
                             f"{shape[0]}")
        return per_image(mx.random.normal, self._keys[:, 1 + i], shape[1:], dtype=dtype)
