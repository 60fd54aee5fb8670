"""Quantize a transformer's linear layers and embeddings with MLX's affine quantization, and
rebuild the same structure when a quantized folder is loaded again."""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def check_settings(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"--quantize {bits} is not supported; MLX quantizes to "
                         f"{', '.join(map(str, BITS))} bits")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"--group-size {group_size} is not supported; use "
                         f"{', '.join(map(str, GROUP_SIZES))}")


def _quantizable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding)) and hasattr(module, "to_quantized")


def quantizable_layers(model: nn.Module, bits: int, group_size: int) -> list[str]:
    """Paths of the Linear and Embedding layers that quantize_model quantizes (only the
    parameters' shapes are read, so a model whose weights were never evaluated will do).

    The group size must divide the model's width. A layer whose input width it does not divide
    (Halton-MaskGIT small's 510-wide attention output) is one the kernels do not accept, and
    stays in float.
    """
    check_settings(bits, group_size)
    width = model.config.width
    if width % group_size:
        raise ValueError(f"--group-size {group_size} does not divide the width {width} of this "
                         "model's layers; choose a group size that divides it (32 or 64)")
    return [path for path, m in model.named_modules()
            if _quantizable(m) and m.weight.shape[-1] % group_size == 0]


def quantize_model(model: nn.Module, bits: int, group_size: int) -> list[str]:
    """Quantize the Linear and Embedding layers in place; returns their paths for config.json."""
    paths = quantizable_layers(model, bits, group_size)
    apply_structure(model, quantization_record(bits, group_size, paths))
    return paths


def quantize_weight(weight: mx.array, bits: int, group_size: int) -> dict[str, mx.array]:
    """One layer's weight as the parameters of its quantized layer, as nn.quantize makes them."""
    quantized, scales, biases = mx.quantize(weight, group_size, bits, mode="affine")
    return {"weight": quantized, "scales": scales, "biases": biases}


# Below this many input rows MLX's CPU quantized matmul beats dequantizing the weight first:
# its scalar kernel costs about as much per weight and row as the dequantization costs per
# weight, so from a handful of rows on (every forward but a batch-1 decode step) dequantizing
# and running the BLAS matmul wins, by 20-90x at 512 rows (benchmarks/decode.py measures it).
DEQUANTIZE_MIN_ROWS = 4


class JustInTimeLinear(nn.QuantizedLinear):
    """A quantized linear layer that, on MLX's CPU device and for at least DEQUANTIZE_MIN_ROWS
    rows, dequantizes its weight for the call and multiplies in float: the weight stays
    quantized at rest. Elsewhere (Metal, CUDA, few rows) it is MLX's quantized matmul."""

    def __call__(self, x: mx.array) -> mx.array:
        if mx.default_device() != mx.cpu or x.size < DEQUANTIZE_MIN_ROWS * x.shape[-1]:
            return super().__call__(x)
        weight = mx.dequantize(self["weight"], self["scales"], self.get("biases"),
                               group_size=self.group_size, bits=self.bits, mode=self.mode)
        x = x @ weight.astype(x.dtype).T
        if "bias" in self:
            x = x + self["bias"]
        return x


def apply_structure(model: nn.Module, quantization: dict) -> None:
    """Swap the recorded layers for quantized ones (weights are loaded afterwards)."""
    wanted = set(quantization["modules"])
    nn.quantize(model, group_size=quantization["group_size"], bits=quantization["bits"],
                class_predicate=lambda path, module: path in wanted)
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            # the subclass adds no state, only the CPU path of __call__
            module.__class__ = JustInTimeLinear


def weight_bytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
               for _, m in model.named_modules())


def quantization_record(bits: int, group_size: int, modules: list[str]) -> dict:
    return {"bits": bits, "group_size": group_size, "mode": "affine", "modules": modules}


def relative_error(reference: mx.array, approximate: mx.array) -> float:
    ref, approx = reference.astype(mx.float32), approximate.astype(mx.float32)
    return (mx.linalg.norm((approx - ref).reshape(-1)) /
            mx.maximum(mx.linalg.norm(ref.reshape(-1)), 1e-12)).item()


def fixed_inputs(model: nn.Module, time_scale: float = 1000.0, seed: int = 0) -> tuple:
    """A fixed batch of two inputs for the model: token ids (half masked for a masked-token
    model) or latents with timesteps, plus class labels."""
    config = model.config
    key_tokens, key_mask = mx.random.split(mx.random.key(seed))
    labels = mx.array([1, 2 % config.num_classes])
    if config.input == "patches":
        side = config.grid_size * config.patch_size
        x = mx.random.normal((2, side, side, config.in_channels), key=key_tokens)
        return x, labels, mx.array([0.3, 0.7]) * time_scale
    length = config.num_tokens - 1 if config.causal else config.num_tokens
    tokens = mx.random.randint(0, config.vocab_size, (2, length), key=key_tokens)
    if not config.causal:
        tokens = mx.where(mx.random.uniform(shape=tokens.shape, key=key_mask) < 0.5,
                          model.mask_id, tokens)
    return tokens, labels


def output_error(reference: mx.array, approximate: mx.array, token_model: bool) -> dict:
    """Top-1 agreement and mean KL of the token distributions, or the prediction's relative error."""
    if not token_model:
        return {"relative error": relative_error(reference, approximate)}
    ref = reference.astype(mx.float32)
    approx = approximate.astype(mx.float32)
    log_p = ref - mx.logsumexp(ref, axis=-1, keepdims=True)
    log_q = approx - mx.logsumexp(approx, axis=-1, keepdims=True)
    kl = mx.sum(mx.exp(log_p) * (log_p - log_q), axis=-1)
    agree = mx.mean(mx.argmax(ref, axis=-1) == mx.argmax(approx, axis=-1))
    return {"top-1 agreement": agree.item(), "mean KL": mx.mean(kl).item()}
