"""The dtypes weights are stored and cast to, by name, and the default for this machine."""

import mlx.core as mx

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def default_dtype() -> str:
    """float16 where a GPU runs the model, float32 on the CPU (which has no fast half matmul)."""
    return "float16" if mx.default_device().type == mx.gpu else "float32"


def resolve_dtype(dtype: str | None) -> str:
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return dtype


def cast(array: mx.array, dtype: str | None) -> mx.array:
    """`array` in the named dtype; None keeps its own."""
    return array.astype(DTYPES[dtype]) if dtype else array
