"""Read upstream checkpoints (.pt/.pth through the restricted unpickler, .safetensors) as flat
state dicts whose values load lazily."""

import os
from pathlib import Path

import mlx.core as mx

from .torch_pickle import CheckpointError, LazyTensor, flatten_state_dict, load_pt

# where training scripts nest the weights: DDP "model", DeepSpeed "module", Halton-MaskGIT
# "model_state_dict", Lightning-style "state_dict"; FSDP checkpoints are a raw state dict
NESTING_KEYS = ("model", "model_state_dict", "module", "state_dict")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def read_state_dict(path: str | os.PathLike) -> dict:
    """Flat {key: tensor} of a checkpoint; the weights entry is found under the usual nestings."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass the path of a downloaded checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a checkpoint file (.pt, .pth or "
                              ".safetensors), or a converted folder to `mlx-imgen info`")
    if path.suffix == ".safetensors":
        try:
            return dict(mx.load(str(path)))
        except Exception as err:  # noqa: BLE001 - mx.load raises bare RuntimeError/ValueError
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); "
                                  "download it again") from None
    obj = load_pt(path)
    if isinstance(obj, dict):
        for key in NESTING_KEYS:
            if isinstance(obj.get(key), dict) and any(_is_tensor(v) for v in obj[key].values()):
                obj = obj[key]
                break
    state = flatten_state_dict(obj) if isinstance(obj, dict) else {}
    if not state:
        raise CheckpointError(f"{path} holds no tensors; pass a model checkpoint")
    return state


def _is_tensor(value) -> bool:
    return isinstance(value, (LazyTensor, mx.array)) or isinstance(value, dict)


def shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}
