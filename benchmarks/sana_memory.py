"""The peak memory of one Sana image through `Pipeline.generate`, random weights of the published
shapes: the transformer quantized to `--bits`, Gemma-2-2B to `--text-bits`, the DC-AE in
float32, `--low-memory` as `mlx-imgen generate --low-memory` runs it.

    .venv/bin/python -m mlx_imgen.blas .venv/bin/python benchmarks/sana_memory.py \
        [--alias sana-1.6b-1024] [--bits 8] [--text-bits 4] [--steps 2] [--low-memory]

Random weights come without Gemma's tokenizer, so prompts go through a stand-in tokenizer in
Gemma's layout, trained here on Sana's instruction lines (the tests' tokenizer): the rows have
the lengths the real pipeline pads them to (the instruction's tokens + 298, and 300), which is
what the memory depends on. Memory does not grow with the step count, so a few steps stand for
the preset's 20. Prints MLX's peak (mx.get_peak_memory) after each stage and the process's
resident peak; `--json` writes them.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

PROMPT = "a red fox asleep under a snowy pine tree, watercolor, soft morning light"


def measure(alias: str, bits: int | None, text_bits: int | None, steps: int,
            low_memory: bool, dtype: str = "float32") -> dict:
    import mlx.core as mx
    from gemma_tokenizer_files import write_gemma_tokenizer  # the tests' stand-in

    from mlx_imgen.devices import cpu_description
    from mlx_imgen.pipeline import Pipeline

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_gemma_tokenizer(os.path.join(folder, "tokenizer"))
        start = time.perf_counter()
        pipe = Pipeline.random(alias, dtype, bits, text_bits=text_bits, tokenizer=tokenizer)
        loaded_gb = mx.get_active_memory() / 1e9
        built_s = time.perf_counter() - start
        mx.reset_peak_memory()
        start = time.perf_counter()
        images = pipe.generate(prompts=[PROMPT], steps=steps, low_memory=low_memory)
        seconds = time.perf_counter() - start
    return {"alias": alias, "bits": bits, "text_bits": text_bits, "dtype": dtype,
            "steps": steps, "low_memory": low_memory, "image": list(images[0].size),
            "weights_gb": loaded_gb, "peak_gb": mx.get_peak_memory() / 1e9,
            "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "build_s": built_s, "generate_s": seconds,
            "device": mx.default_device().type.name, "machine": cpu_description(),
            "mlx": mx.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alias", default="sana-1.6b-1024")
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--text-bits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--low-memory", action="store_true")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = measure(args.alias, args.bits or None, args.text_bits or None, args.steps,
                     args.low_memory, args.dtype)
    print(json.dumps(result, indent=2))
    if args.json:
        from mlx_imgen.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
