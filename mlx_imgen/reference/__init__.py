"""The optional PyTorch reference: a torch mirror of the backbone, the paradigms' own sampling
loops run on torch tensors, and diffusers' decoders for the VQ and KL autoencoders; parity tests
and the CUDA/MPS/CPU reference path of `mlx-imgen profile --reference torch`.

Importing this package does not import torch; its submodules do, through `require_torch`.
"""

TORCH_MISSING = ("--reference torch needs PyTorch; install it with "
                 "pip install 'mlx-imgen[reference]'")


def require_torch():
    """The torch module, or ValueError with the one sentence that says which extra to install."""
    try:
        import torch
    except ImportError:
        raise ValueError(TORCH_MISSING) from None
    return torch


def pick_device() -> str:
    """"cuda" when a CUDA device is visible, else "mps" on Apple silicon, else "cpu"."""
    torch = require_torch()
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def torch_dtype(mlx_dtype):
    """The torch dtype of an MLX floating dtype (float32, float16, bfloat16)."""
    import mlx.core as mx
    torch = require_torch()
    table = {mx.float32: torch.float32, mx.float16: torch.float16, mx.bfloat16: torch.bfloat16}
    if mlx_dtype not in table:
        raise ValueError(f"no torch dtype for MLX {mlx_dtype}; the reference mirrors float32, "
                         "float16 and bfloat16 models")
    return table[mlx_dtype]


def to_torch(array, dtype=None):
    """An mx.array as a torch tensor with the same values (bfloat16 goes through float32)."""
    import mlx.core as mx
    import numpy as np
    torch = require_torch()
    floating = mx.issubdtype(array.dtype, mx.floating)
    values = np.array(array.astype(mx.float32) if floating else array)
    tensor = torch.from_numpy(values)
    if floating:
        tensor = tensor.to(dtype or torch_dtype(array.dtype))
    return tensor


def load_mlx_weights(torch_model, mlx_model, *, rename=None, keep=None) -> None:
    """Copy every MLX parameter (those `keep(name)` accepts) into the torch parameter named
    `rename(name)` (default: the same name), strictly.

    Conv weights go from MLX's OHWI to torch's OIHW, and a 1x1 conv into a linear. The names,
    and the shapes after that, must match one to one; otherwise KeyMismatchError lists the
    missing, unexpected and mis-shaped names (`weights.keymap.check_names`).
    """
    from mlx.utils import tree_flatten

    from mlx_imgen.weights.keymap import check_names
    torch = require_torch()
    # the autoencoders give their weights under upstream's names, which the torch models keep
    source = mlx_model.upstream_layout() if hasattr(mlx_model, "upstream_layout") else \
        dict(tree_flatten(mlx_model.parameters()))
    target = torch_model.state_dict()
    arrays = {(rename(name) if rename else name): value for name, value in source.items()
              if keep is None or keep(name)}

    def torch_shape(name: str, shape: tuple) -> tuple:
        if len(shape) != 4:
            return shape
        if name in target and target[name].ndim == 2:  # a 1x1 conv into a linear
            return tuple(target[name].shape)
        return (shape[0], shape[3], shape[1], shape[2])  # conv: OHWI -> OIHW

    shapes = {name: torch_shape(name, tuple(value.shape)) for name, value in arrays.items()}
    check_names({name: tuple(t.shape) for name, t in target.items()}, shapes, "MLX model",
                "torch mirror")
    # one tensor at a time: a copy of the whole model beside both would double the peak
    with torch.no_grad():
        for name, value in arrays.items():
            tensor = to_torch(value)
            if tensor.ndim == 4:
                tensor = tensor.permute(0, 3, 1, 2).reshape(shapes[name])
            target[name].copy_(tensor.to(target[name].dtype))


__all__ = ["TORCH_MISSING", "require_torch", "pick_device", "torch_dtype", "to_torch",
           "load_mlx_weights"]
