"""Measure what quantization costs a converted float pipeline: quantize copies of its
transformer in memory and compare their outputs with the float model's on a fixed input. It
builds Pipelines, so it sits above the pipeline (the CLI's `info --check` calls it)."""

from mlx_imgen.pipeline import Pipeline
from mlx_imgen.quantize import fixed_inputs, output_error, weight_bytes


def check_quantization(folder, bits_list: list[int], group_size: int) -> list[dict]:
    """Quantize copies of a float pipeline's transformer and measure their error on a fixed
    input against the float model."""
    float_pipe = Pipeline(folder)
    time_scale = 1000.0
    if float_pipe.paradigm == "diffusion":
        time_scale = getattr(float_pipe.plan()[0], "time_scale", time_scale)
    inputs = fixed_inputs(float_pipe.transformer, time_scale)
    reference = float_pipe.transformer(*inputs)
    float_bytes = weight_bytes(float_pipe.transformer)
    token_model = float_pipe.config.input == "tokens"
    rows = []
    for bits in bits_list:
        pipe = Pipeline(folder)
        pipe.quantize(bits, group_size)
        out = pipe.transformer(*inputs)
        q_bytes = weight_bytes(pipe.transformer)
        rows.append({"bits": bits, "group size": group_size, "weights MB": q_bytes / 1e6,
                     "share of float weights": q_bytes / float_bytes,
                     **output_error(reference, out, token_model)})
    return rows
