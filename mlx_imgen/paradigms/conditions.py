"""What a sampler conditions the model on, as objects that give the model's keyword arguments.

The masked-token and diffusion samplers share them and stay family-free: a condition knows its
batch and lays its rows out [cond, null] for classifier-free guidance (guidance.py's layout).
A bare label array means ClassLabels (`as_condition`).
"""

from .arrays import MLX
from .guidance import with_null


class ClassLabels:
    """A class label per image (B,); the null rows take the model's null class."""

    def __init__(self, labels):
        self.labels = labels

    @property
    def batch(self) -> int:
        return self.labels.shape[0]

    def arguments(self, model, guided: bool, xp=MLX) -> dict:
        return {"labels": with_null(self.labels, model.null_class, xp) if guided else self.labels}


class CrossAttentionText:
    """Encoded prompts the model cross-attends to: `states` (R, L, D) and `pooled` (R, P) of R
    distinct prompts, `null_states` and `null_pooled` their unconditional rows (the negative
    prompt's, or the empty prompt's). Both pooled may be None for a model that reads none.
    `mask` and `null_mask` (R, L), where set, say which of the L positions hold tokens (the
    rest is padding) and reach the model as `context_mask`. `images` (B,) says which row each
    image takes (None: image i takes row i), so n images of one prompt encode it once."""

    def __init__(self, states, pooled, null_states, null_pooled, images=None, *, mask=None,
                 null_mask=None):
        if (pooled is None) != (null_pooled is None):
            raise ValueError("give both the conditional and the unconditional pooled rows, or "
                             "neither")
        if (mask is None) != (null_mask is None):
            raise ValueError("give both the conditional and the unconditional attention masks, "
                             "or neither")
        for name, cond, null in (("states", states, null_states),
                                 ("pooled", pooled, null_pooled),
                                 ("mask", mask, null_mask)):
            if cond is not None and tuple(cond.shape) != tuple(null.shape):
                raise ValueError(f"the conditional {name} {tuple(cond.shape)} and the "
                                 f"unconditional {name} {tuple(null.shape)} differ in shape; "
                                 "encode both with the same text encoder and length")
        if pooled is not None and states.shape[0] != pooled.shape[0]:
            raise ValueError(f"{states.shape[0]} prompts' states but {pooled.shape[0]} pooled "
                             "rows; give one of each per prompt")
        if mask is not None and tuple(mask.shape) != tuple(states.shape[:2]):
            raise ValueError(f"the attention mask {tuple(mask.shape)} does not match the states' "
                             f"prompts and length {tuple(states.shape[:2])}; give one flag per "
                             "token position")
        self.states, self.pooled = states, pooled
        self.null_states, self.null_pooled = null_states, null_pooled
        self.mask, self.null_mask = mask, null_mask
        self.images = images

    @property
    def batch(self) -> int:
        return self.states.shape[0] if self.images is None else self.images.shape[0]

    def _rows(self, x):
        return x if self.images is None else x[self.images]

    def _laid_out(self, cond, null, guided: bool, xp):
        rows = self._rows(cond)
        return xp.concatenate([rows, self._rows(null)]) if guided else rows

    def arguments(self, model, guided: bool, xp=MLX) -> dict:
        """{"context", and "pooled" and "context_mask" where set} laid out [the images' cond
        rows, their null rows] when guided."""
        arguments = {"context": self._laid_out(self.states, self.null_states, guided, xp)}
        if self.pooled is not None:
            arguments["pooled"] = self._laid_out(self.pooled, self.null_pooled, guided, xp)
        if self.mask is not None:
            arguments["context_mask"] = self._laid_out(self.mask, self.null_mask, guided, xp)
        return arguments


CONDITIONS = (ClassLabels, CrossAttentionText)


def as_condition(condition):
    """A condition object as given, or class labels (an array) as ClassLabels."""
    return condition if isinstance(condition, CONDITIONS) else ClassLabels(condition)
