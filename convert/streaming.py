"""The transformer's weights loaded one tensor at a time: cast, and quantized where asked, as
they stream in, so no float copy of the whole model (nor the float and quantized models
together) is ever held."""

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_imgen.backbone import BackboneConfig, Transformer
from mlx_imgen.quantize import (apply_structure, quantizable_layers, quantization_record,
                                quantize_weight)
from mlx_imgen.weights.dtypes import cast
from mlx_imgen.weights.keymap import KeyMismatchError, as_mlx, check_shapes, check_weights, shape_of


def stream_weights(backbone: BackboneConfig, sources: dict, dtype: str | None,
                   quantize: int | None, group_size: int, what: str = "checkpoint",
                   model_class=Transformer):
    """(weights, quantization record) of the transformer, loaded one tensor at a time.

    `sources` maps keys to tensors or to zero-argument callables that load them (a lazy key
    map); it is emptied as it goes, so each float tensor is freed once it is cast to `dtype`
    (None keeps it) and, for the layers quantize_model would quantize, quantized. The float
    model and the quantized one never coexist. Keys and shapes are checked before anything
    loads. `model_class` builds the model from `backbone` (a family's own, such as the U-ViT).
    """
    model = model_class(backbone)  # structure only: MLX initialises parameters lazily
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    # the key-and-shape pass: a file that does not fit fails before any tensor is read
    check_shapes(model, {k: shape_of(v) for k, v in sources.items()}, what)
    record, layers = None, set()
    if quantize:
        record = quantization_record(quantize, group_size,
                                     quantizable_layers(model, quantize, group_size))
        layers = {f"{path}.weight" for path in record["modules"]}
    weights = {}
    for key in list(sources):
        array = as_mlx(sources.pop(key))
        array = cast(array, dtype)
        if array.shape != expected[key]:  # a lying file: its data disagree with its header
            raise KeyMismatchError(f"The {what} does not fit the model: {key} loads as "
                                   f"{tuple(array.shape)}, not {tuple(expected[key])}")
        if key in layers:
            parts = quantize_weight(array, quantize, group_size)
            new = {key[: -len("weight")] + name: v for name, v in parts.items()}
        else:
            new = {key: array}
        mx.eval(new)
        weights.update(new)
        del array, new
    if not quantize:
        return weights, None
    apply_structure(model, record)
    check_weights(model, weights, what)
    # the order the in-memory quantized model lists its parameters in
    return {k: weights[k] for k, _ in tree_flatten(model.parameters())}, record
