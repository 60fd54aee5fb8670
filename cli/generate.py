"""`mlx-imgen generate`: sample images and write PNGs with their parameters in the metadata."""

import json
import os
import shlex
import sys
from pathlib import Path

import typer
from PIL import Image, PngImagePlugin
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mlx_imgen.imagenet import class_index
from mlx_imgen.io import atomic_write_bytes
from mlx_imgen.prompts import (Prompt, check_condition, check_prompt, image_seeds,
                               read_prompts)

from .errors import loading, user_errors
from .validate import (BATCH, GUIDANCE, IMAGES, INDEX, MAX_IMAGES, SEED, STEPS, TEMPERATURE, TOP_K, TOP_P,
                       check_options, group_sizes, quantize_bits)

console = Console(stderr=True)


def output_paths(output: Path, count: int, grid: bool) -> list[Path]:
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output {output} must end in .png")
    if grid or count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    columns = columns or min(len(images), 4)
    rows = -(-len(images) // columns)
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w, rows * h))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * w, (i // columns) * h))
    return sheet


def png_bytes(image: Image.Image, parameters: dict) -> bytes:
    import io

    meta = PngImagePlugin.PngInfo()
    for key, value in parameters.items():
        meta.add_text(key, value if isinstance(value, str) else json.dumps(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()


def model_family(model: str):
    """The family of an alias (its card) or of a converted folder (its model_index.json),
    read without loading or converting anything; None where neither names one."""
    from mlx_imgen import families
    from mlx_imgen.pipeline import INDEX_FILE
    from mlx_imgen.registry import CARDS
    from mlx_imgen.weights.jsonfile import read_json

    if (Path(model) / INDEX_FILE).is_file():
        name = read_json(Path(model) / INDEX_FILE).get("family")
    else:
        name = CARDS[model].family if model in CARDS else None
    return families.FAMILIES.get(name) if isinstance(name, str) else None


def run_prompts(model: str, classes: list[str], texts: list[str], prompts_file: Path | None,
                negative: str | None) -> list[Prompt] | None:
    """A text model's prompts (None for a class model), with every refusal made before the
    model loads or converts: a class model given prompts, a text model given --class, an empty
    prompt, a bad prompt file."""
    if texts and prompts_file is not None:
        raise ValueError("pass --prompt or --prompts FILE, not both")
    family = model_family(model)
    if family is None:
        return None  # not a model: loading it says why
    check_condition(model, family.condition, classes=classes,
                    prompts=texts or prompts_file is not None, negative=negative,
                    prompt_flag="--prompts" if prompts_file is not None else "--prompt")
    if family.condition != "text":
        return None
    if prompts_file is not None:
        return read_prompts(prompts_file)
    if not texts:
        raise ValueError(f"{model} is a text-to-image model: pass --prompt TEXT or --prompts FILE")
    return [Prompt(check_prompt(text)) for text in texts]


# the template's tokens around a prompt (Janus-Pro's: BOS, role tags, <begin_of_image>), rounded up
TEMPLATE_TOKENS = 16


def prompt_token_bound(prompts, negative: str | None = None) -> int | None:
    """An upper bound on the longest prompt row in tokens (the run's `negative` prompt
    included), before any tokenizer is loaded: a byte-level tokenizer makes at most one token
    per UTF-8 byte. None without prompts."""
    if not prompts:
        return None
    texts = [t for p in prompts for t in (p.text, p.negative, negative) if t is not None]
    return max(len(t.encode("utf-8")) for t in texts) + TEMPLATE_TOKENS


def check_generate_options(model: str, options: dict) -> None:
    """Every option in range, and each one applies to the model, before anything is loaded."""
    from mlx_imgen.memory import generation_estimate, model_shape, refuse_if_too_big
    from mlx_imgen.pipeline import INDEX_FILE, default_decode_batch
    from mlx_imgen.weights.dtypes import resolve_dtype
    from mlx_imgen.weights.jsonfile import read_json

    o = options
    check_options({
        "--n": (o["n"], IMAGES), "--batch-size": (o["batch_size"], BATCH),
        "--decode-batch-size": (o["decode_batch_size"], BATCH), "--seed": (o["seed"], SEED),
        "--steps": (o["steps"], STEPS), "--cfg": (o["cfg"], GUIDANCE),
        "--temperature": (o["temperature"], TEMPERATURE), "--top-k": (o["top_k"], TOP_K),
        "--top-p": (o["top_p"], TOP_P), "--quantize": (o["quantize"], quantize_bits()),
        "--group-size": (o["group_size"], group_sizes()), "--index": (o["index"], INDEX)})
    count = o["count"]
    if count > MAX_IMAGES:
        asked = (f"{len(o['run'])} prompts" if o["run"] is not None
                 else f"{len(o['classes'])} classes")
        raise ValueError(f"--n {o['n']} for each of {asked} is {count} images; one run writes "
                         f"at most {MAX_IMAGES}")
    channels = o["cfg_channels"]
    if channels is not None and channels != "all" and not (channels.isdigit() and int(channels) > 0):
        raise ValueError(f"--cfg-channels must be 'all' or a positive number of channels (DiT "
                         f"guides 3), got {channels!r}")
    dtype = resolve_dtype(o["dtype"])
    folder = Path(model)
    if (folder / INDEX_FILE).is_file():
        index = read_json(folder / INDEX_FILE)
        if o["dtype"] is not None:
            raise ValueError(f"--dtype does not apply to the converted folder {folder}: its dtype "
                             f"({index.get('dtype')}) was fixed when it was converted; drop "
                             "--dtype, or convert again with `mlx-imgen convert ... --dtype`")
        quant = index.get("quantization")
        if o["quantize"] and quant:
            raise ValueError(f"--quantize does not apply to {folder}: it is already quantized "
                             f"({quant.get('bits')}-bit); drop --quantize, or quantize the "
                             "float folder it came from")
    batch = o["batch_size"] or count
    decode_batch = default_decode_batch(batch, o["decode_batch_size"], o["low_memory"])
    shape = model_shape(model, dtype)
    refuse_if_too_big(generation_estimate(shape, count, batch, decode_batch,
                                          prompt_tokens=prompt_token_bound(o["run"],
                                                                           o["negative_prompt"])),
                      f"generating {count} images of {shape.image_size} px, {batch} at a time,",
                      "lower --batch-size or --n, or pass --low-memory")


def _flags(sampling: dict, dtype: str | None, quantize: int | None, group_size: int) -> list:
    """The command-line options that give these sampling options and model settings."""
    flags = [item for key, value in sampling.items()
             for item in (f"--{key.replace('_', '-')}", str(value))]
    if dtype:
        flags += ["--dtype", dtype]
    if quantize:
        flags += ["--quantize", str(quantize), "--group-size", str(group_size)]
    return flags


def generate(
    model: str = typer.Argument(..., help="An alias or a converted pipeline folder."),
    classes: list[str] = typer.Option(None, "--class", help="ImageNet class id or name, e.g. 207 "
                                      "or 'golden retriever' (repeatable); class-conditional "
                                      "models."),
    prompt: list[str] = typer.Option(None, "--prompt", help="What to draw (repeatable); "
                                     "text-to-image models."),
    negative_prompt: str = typer.Option(None, "--negative-prompt", help="What to steer away "
                                        "from, for every prompt without its own."),
    prompts_file: Path = typer.Option(None, "--prompts", help="A file of prompts: one per line, "
                                      "or JSONL with \"prompt\" and optional \"seed\" and "
                                      "\"negative_prompt\"."),
    n: int = typer.Option(1, "--n", help="Images per class or prompt (or random classes if "
                          "none given)."),
    batch_size: int = typer.Option(None, help="Images sampled together (default: all)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same images."),
    index: int = typer.Option(0, help="Index of the first image in the run of --seed: "
                              "regenerates image I of a run alone (its PNG says how)."),
    steps: int = typer.Option(None, help="Sampling steps (masked-token and diffusion); for "
                              "SiT's ODE solvers, solver steps: --steps 10 is upstream's "
                              "--num-sampling-steps 11."),
    cfg: float = typer.Option(None, help="Classifier-free guidance scale s of uncond + s * "
                              "(cond - uncond), for every model; 1 turns guidance off. "
                              "Halton-MaskGIT's published w is s - 1."),
    temperature: float = typer.Option(None, help="Sampling temperature. Next-token divides the "
                                      "logits by it (0 = greedy); Halton-MaskGIT multiplies "
                                      "them, as upstream does."),
    top_k: int = typer.Option(None, help="Keep the k most likely tokens (0 = all)."),
    top_p: float = typer.Option(None, help="Keep the smallest set with this probability."),
    sampler: str = typer.Option(None, help="Paradigm sampler variant, where the model has several."),
    output: Path = typer.Option(Path("image.png"), "--output", "--out",
                                help="PNG path; several images get -0, -1, ..."),
    grid: bool = typer.Option(False, help="Write one grid image instead of one PNG per image."),
    force: bool = typer.Option(False, help="Overwrite existing images."),
    dtype: str = typer.Option(None, help="Weights dtype when converting an alias on first use."),
    quantize: int = typer.Option(None, help="Quantize the transformer on the fly (8 or 4 bits)."),
    group_size: int = typer.Option(64, help="Quantization group size (32, 64 or 128)."),
    low_memory: bool = typer.Option(False, help="Free the transformer before decoding, decode "
                                    "one image at a time, keep MLX's cache small."),
    decode_batch_size: int = typer.Option(None, help="Images decoded together (default: the "
                                          "sampling batch; one on the CPU)."),
    cfg_channels: str = typer.Option(None, help="Diffusion: guide the first 3 latent channels "
                                     "as DiT does ('3') or all of them ('all')."),
    shift: float = typer.Option(None, help="Flow-matching time shift (Sana: 3 by default)."),
    width: int = typer.Option(None, help="Image width in px, for a model that samples any size "
                              "(Sana: a multiple of 32; default the model's size)."),
    height: int = typer.Option(None, help="Image height in px (see --width)."),
):
    """Generate images of ImageNet classes, or of prompts with a text-to-image model."""
    from mlx_imgen.loading import load

    with user_errors():
        run = run_prompts(model, classes, prompt, prompts_file, negative_prompt)
        classes = [class_index(c) for c in classes or []]
        count = n * len(run if run is not None else classes) if run or classes else n
        check_generate_options(model, locals())
        paths = output_paths(output, count, grid)
        existing = [p for p in paths if p.exists()]
        if existing and not force:
            raise ValueError(f"{existing[0]} already exists; pass --force to overwrite it")
        if not output.parent.exists():
            raise ValueError(f"folder {output.parent} does not exist; create it first")
        if not os.access(output.parent, os.W_OK):
            raise ValueError(f"cannot write {output}: folder {output.parent} is not writable; "
                             "choose another --output")
        with console.status(f"loading {model}"), loading(model):
            pipe = load(model, dtype=dtype, quantize=quantize, group_size=group_size)
        # n images of each prompt; a class model without --class: n classes drawn from the
        # seed among the model's own
        image_prompts = None if run is None else [p for p in run for _ in range(n)]
        labels = None
        if image_prompts is None:
            labels = [c for c in classes for _ in range(n)] or \
                pipe.random_classes(n, seed=seed, first=index)
            pipe.check_classes(labels)
        overrides = dict(cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p,
                         steps=steps, sampler=sampler, shift=shift,
                         cfg_channels=int(cfg_channels) if cfg_channels and cfg_channels.isdigit()
                         else cfg_channels)
        plan, sampling = pipe.plan(**overrides)
        given = {k: v for k, v in overrides.items() if v is not None}
        unit = "tokens" if pipe.paradigm == "next-token" else "steps"
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console,
                      disable=not console.is_terminal) as progress:
            task = progress.add_task(f"{pipe.paradigm} {unit}", total=None)

            def on_step(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            images = pipe.generate(labels, prompts=image_prompts,
                                   negative_prompt=negative_prompt, seed=seed,
                                   first_index=index, batch_size=batch_size,
                                   on_step=on_step, low_memory=low_memory, plan=plan,
                                   decode_batch_size=decode_batch_size, width=width,
                                   height=height)
        record = pipe.provenance(plan, sampling, seed=seed, prompts=run)
        quant = record["quantization"]
        parameters = {"model": model, **sampling, **record,
                      **({"classes": labels} if labels is not None else {}),
                      "quantization": f"{quant['bits']}-bit" if quant else "none",
                      "command": shlex.join(sys.argv), "software": "mlx-imgen"}
        if negative_prompt is not None:
            parameters["negative_prompt"] = negative_prompt
        if quant:
            parameters["quantization_group_size"] = quant["group_size"]
        if grid:
            images = [make_grid(images)]
        flags = _flags(given, dtype, quantize, group_size)
        flags += [item for flag, value in (("--width", width), ("--height", height))
                  if value is not None for item in (flag, str(value))]
        keys = None if image_prompts is None else image_seeds(image_prompts, seed=seed,
                                                              first_index=index)
        for i, (path, image) in enumerate(zip(paths, images)):
            meta = dict(parameters)
            if not grid:
                meta.update(image_record(i, labels, image_prompts, keys, seed=seed,
                                         first_index=index, model=model,
                                         negative=negative_prompt, flags=flags))
            atomic_write_bytes(path, png_bytes(image, meta))
            console.print(f"wrote {path}")


def image_record(i: int, labels: list[int] | None, image_prompts: list[Prompt] | None,
                 keys: list[tuple[int, int]] | None, *, seed: int, first_index: int, model: str,
                 negative: str | None, flags: list) -> dict:
    """Image i's own metadata: its class or prompt, its seed and index, and the command that
    makes it alone (the run's seed and its index in the run; a JSONL prompt's own seed)."""
    if image_prompts is None:
        alone = ["--class", str(labels[i]), "--seed", str(seed), "--index", str(first_index + i)]
        own = {"class": labels[i], "index": first_index + i}
    else:
        prompt = image_prompts[i]
        image_seed, image_index = keys[i]
        negative = prompt.negative if prompt.negative is not None else negative
        alone = ["--prompt", prompt.text, *(["--negative-prompt", negative] if negative else []),
                 "--seed", str(image_seed), "--index", str(image_index)]
        own = {"prompt": prompt.text, "seed": image_seed, "index": image_index,
               **({"negative_prompt": negative} if negative is not None else {})}
    return {**own, "regenerate": shlex.join(["mlx-imgen", "generate", model, *alone, *flags])}
