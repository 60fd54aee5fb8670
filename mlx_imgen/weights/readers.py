"""Read upstream checkpoints (.pt/.pth through the restricted unpickler, .safetensors) as flat
state dicts whose values load lazily, choosing among the weight sets a training checkpoint holds."""

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx

from .torch_pickle import CheckpointError, LazyTensor, flatten_state_dict, load_pt

# The weight sets a training checkpoint can hold, each under the names training scripts give
# it: DDP "model", Halton-MaskGIT "model_state_dict", DeepSpeed "module", Lightning-style
# "state_dict"; the EMA copy under "ema". FSDP checkpoints and released files may be a raw
# state dict, which holds no named set.
WEIGHT_SETS = {"ema": ("ema",), "model": ("model", "model_state_dict", "module", "state_dict")}
RAW = "raw"  # the set name recorded for a file that is one raw state dict
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class Checkpoint:
    """A checkpoint's chosen weights: `state` flat {key: lazy tensor}, `weight_set` the set
    taken ("ema", "model" or "raw"), `entry` the top-level key it sat under, `sets` every set
    the file holds, and `args` the training arguments stored beside them (a plain dict)."""
    path: Path
    state: dict = field(default_factory=dict)
    weight_set: str = RAW
    entry: str | None = None
    args: dict = field(default_factory=dict)
    objects: dict = field(default_factory=dict, repr=False)  # set name -> (entry, nested dict)

    @property
    def sets(self) -> tuple[str, ...]:
        return tuple(self.objects)

    def select(self, weights: str | None = None, prefer: tuple[str, ...] = ("model", "ema")):
        """Take the set `weights` names, refused when the file does not hold it, or else the
        first set of `prefer` that it holds; returns self."""
        if weights is not None and weights not in WEIGHT_SETS:
            raise CheckpointError(f"unknown weight set {weights!r}; choose "
                                  f"{' or '.join(WEIGHT_SETS)}")
        if weights is not None and weights not in self.objects:
            holds = (f"holds the weight sets {', '.join(self.objects)}" if self.objects
                     else "is a single state dict with no named weight sets")
            fix = (f"pass --weights {' or '.join(self.objects)}" if self.objects
                   else "leave out --weights")
            raise CheckpointError(f"{self.path.name} {holds}, not {weights!r}; {fix}")
        if not self.objects:
            return self
        chosen = weights or next((n for n in prefer if n in self.objects), next(iter(self.objects)))
        self.weight_set = chosen
        self.entry, nested = self.objects[chosen]
        self.state = flatten_state_dict(nested)
        if not self.state:
            raise CheckpointError(f"{self.path} holds no tensors under {self.entry!r}; pass a "
                                  "model checkpoint")
        return self


def read_checkpoint(path: str | os.PathLike, weights: str | None = None,
                    prefer: tuple[str, ...] = ("model", "ema")) -> Checkpoint:
    """A checkpoint with one weight set chosen (see Checkpoint.select); tensors load lazily."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass the path of a downloaded checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a checkpoint file (.pt, .pth or "
                              ".safetensors), or a converted folder to `mlx-imgen info`")
    if path.suffix == ".safetensors":
        try:
            state = dict(mx.load(str(path)))
        except Exception as err:  # noqa: BLE001 - mx.load raises bare RuntimeError/ValueError
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); "
                                  "download it again") from None
        return Checkpoint(path, state).select(weights, prefer)
    obj = load_pt(path)
    checkpoint = Checkpoint(path, args=_stored_args(obj), objects=_weight_sets(obj))
    if not checkpoint.objects:
        checkpoint.state = flatten_state_dict(obj) if isinstance(obj, dict) else {}
        if not checkpoint.state:
            raise CheckpointError(f"{path} holds no tensors; pass a model checkpoint")
    return checkpoint.select(weights, prefer)


def read_state_dict(path: str | os.PathLike, weights: str | None = None,
                    prefer: tuple[str, ...] = ("model", "ema")) -> dict:
    """Flat {key: tensor} of a checkpoint (see read_checkpoint)."""
    return read_checkpoint(path, weights, prefer).state


def _weight_sets(obj) -> dict[str, tuple[str, dict]]:
    """{set name: (top-level key, nested dict)} of the weight sets a loaded checkpoint holds."""
    if not isinstance(obj, dict):
        return {}
    held = {}
    for name, keys in WEIGHT_SETS.items():
        entry = next((k for k in keys if isinstance(obj.get(k), dict)
                      and any(_is_tensor(v) for v in obj[k].values())), None)
        if entry is not None:
            held[name] = (entry, obj[entry])
    return held


def _stored_args(obj) -> dict:
    """The training arguments a checkpoint stores beside its weights (DiT's and SiT's train.py
    save their argparse namespace as "args"), as plain values; {} when there are none."""
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(args, SimpleNamespace):
        args = vars(args)
    if not isinstance(args, dict):
        return {}
    return {str(k): v for k, v in args.items()
            if v is None or isinstance(v, (bool, int, float, str))}


def _is_tensor(value) -> bool:
    return isinstance(value, (LazyTensor, mx.array)) or isinstance(value, dict)


def shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}
