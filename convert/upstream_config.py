"""--config and the training arguments a checkpoint stores, in the project's names or upstream's,
as the hints a family's infer_config reads, and the check of the result against them.

Every value is honoured exactly or refused: an upstream name becomes the project's value it
means (LlamaGen's `n_layer` is the depth, its `block_size` the token count), a value the
weights also tell (depth, width, vocabulary, classes) must agree with them, and a value the
project cannot run (grouped-query attention, a text-conditioned model) is refused.
"""

import math
import re

from mlx_imgen.families import dit, llamagen, maskgit
from mlx_imgen.families.base import LATENT_STRIDE, TOKEN_STRIDE

# the project's own names, per family
PROJECT_NAMES = {
    "llamagen": ("heads", "image_size", "grid_size", "norm_eps", "rope_base"),
    "maskgit": ("heads", "image_size", "grid_size"),
    "dit": ("heads", "image_size", "latent_size", "timestep_freq_shift", "mlp_norm_eps"),
}
PROJECT_NAMES["sit"] = PROJECT_NAMES["dit"]

# training-only upstream arguments: accepted (a pasted args namespace) and without effect here
TRAINING_ONLY = {
    "llamagen": ("initializer_range", "token_dropout_p", "attn_dropout_p", "resid_dropout_p",
                 "ffn_dropout_p", "drop_path_rate", "class_dropout_prob", "caption_dim",
                 "max_batch_size", "max_seq_len", "codebook_embed_dim", "dropout_p"),
    "maskgit": ("dropout", "mask_value", "sched_mode", "sched_pow", "drop_label", "lr", "bsize"),
    "dit": ("data_path", "results_dir", "epochs", "global_batch_size", "global_seed", "vae",
            "num_workers", "log_every", "ckpt_every", "sample_every", "cfg_scale", "wandb", "ckpt",
            "loss_weight", "sample_eps", "train_eps"),
}
TRAINING_ONLY["sit"] = TRAINING_ONLY["dit"]

# bounds that keep a position table of (grid_size ** 2) rows within memory
LARGEST = {"image_size": 4096, "grid_size": 256, "latent_size": 512}


def _refuse(message: str):
    raise ValueError(message)


def _int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _refuse(f"--config {name} must be a whole number, got {value!r}")
    return value


def _square_root(name: str, tokens: int) -> int:
    grid = math.isqrt(_int(name, tokens)) if tokens > 0 else 0
    if grid < 1 or grid * grid != tokens:
        _refuse(f"{name} {tokens} is not a square number of tokens; pass the token count of a "
                "square grid (256 for 16x16)")
    if grid > LARGEST["grid_size"]:
        _refuse(f"{name} {tokens} makes a grid larger than the largest supported, "
                f"{LARGEST['grid_size']}x{LARGEST['grid_size']}")
    return grid


def _project_value(name: str, value):
    """A project-named value of the right type and range (a whole count, a finite number)."""
    if name in ("heads", "image_size", "grid_size", "latent_size"):
        if _int(name, value) < 1:
            _refuse(f"--config {name} must be at least 1, got {value}")
        if name in LARGEST and value > LARGEST[name]:
            _refuse(f"--config {name} {value} is larger than the largest supported, "
                    f"{LARGEST[name]}")
        return value
    if value is None and name == "mlp_norm_eps":  # None: the block norm's eps
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _refuse(f"--config {name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and name != "timestep_freq_shift"):
        _refuse(f"--config {name} must be positive, got {value}")
    return value


def _must(name: str, value, allowed, why: str) -> dict:
    if value not in allowed:
        _refuse(f"{name} {value!r} is not supported: {why}")
    return {}


def _llamagen(name: str, value) -> dict | None:
    simple = {"dim": "width", "n_layer": "depth", "n_head": "heads", "vocab_size": "vocab_size",
              "codebook_size": "vocab_size", "num_classes": "num_classes"}
    if name in simple:
        return {simple[name]: _int(name, value)}
    if name == "block_size":
        return {"grid_size": _square_root(name, value)}
    if name == "n_kv_head":
        return {} if value is None else {"n_kv_head": _int(name, value)}
    if name in ("multiple_of", "ffn_dim_multiplier"):
        return {name: value}
    if name == "cls_token_num":
        return _must(name, value, (1,), "class-to-image models here take one class token")
    if name in ("model_type", "gpt_type"):
        return _must(name, value, ("c2i",), "only class-to-image (c2i) models convert")
    if name == "downsample_size":
        return _must(name, value, (TOKEN_STRIDE,), "the VQ tokenizer downsamples 16x")
    if name == "gpt_model":
        size = str(value).removeprefix("GPT-")
        if size not in llamagen.SIZES:
            _refuse(f"gpt_model {value!r} is not one of GPT-{', GPT-'.join(llamagen.SIZES)}")
        depth, width, heads = llamagen.SIZES[size]
        return {"depth": depth, "width": width, "heads": heads}
    return None


def _maskgit(name: str, value) -> dict | None:
    simple = {"nb_class": "num_classes", "codebook_size": "vocab_size", "register": "registers"}
    if name in simple:
        return {simple[name]: _int(name, value)}
    if name == "img_size":
        return {"image_size": _int(name, value)}
    if name == "vit_size":
        if value not in maskgit.SIZES:
            _refuse(f"vit_size {value!r} is not one of {', '.join(maskgit.SIZES)}")
        depth, width, heads = maskgit.SIZES[value]
        return {"depth": depth, "width": width, "heads": heads}
    if name == "f_factor":
        return _must(name, value, (TOKEN_STRIDE,), "the VQ tokenizer downsamples 16x")
    if name == "proj":
        return _must(name, value, (1,), "no published model patchifies its tokens")
    return None


def _dit(name: str, value) -> dict | None:
    if name == "num_classes":
        return {"num_classes": _int(name, value)}
    if name == "model":
        match = re.fullmatch(r"(?:DiT|SiT)-(S|B|L|XL)/(2|4|8)", str(value))
        if match is None:
            _refuse(f"model {value!r} is not an upstream model name such as DiT-XL/2 or SiT-B/4")
        depth, width, heads = dit.SIZES[match.group(1)]
        return {"depth": depth, "width": width, "heads": heads,
                "patch_size": int(match.group(2))}
    if name == "learn_sigma":
        return {"learn_sigma": bool(value)}
    if name == "path_type":
        return _must(name, value, ("Linear",), "SiT here integrates the linear interpolant")
    if name == "prediction":
        return _must(name, value, ("velocity",), "SiT here predicts the velocity")
    return None


UPSTREAM = {"llamagen": _llamagen, "maskgit": _maskgit, "dit": _dit, "sit": _dit}
UPSTREAM_NAMES = {
    "llamagen": ("dim", "n_layer", "n_head", "n_kv_head", "vocab_size", "block_size",
                 "cls_token_num", "num_classes", "multiple_of", "ffn_dim_multiplier",
                 "model_type", "gpt_model", "gpt_type", "codebook_size", "downsample_size"),
    "maskgit": ("vit_size", "img_size", "f_factor", "nb_class", "codebook_size", "register",
                "proj"),
    "dit": ("model", "num_classes", "learn_sigma", "path_type", "prediction"),
}
UPSTREAM_NAMES["sit"] = UPSTREAM_NAMES["dit"]


def normalise(family: str, values: dict, what: str, strict: bool = True) -> dict:
    """`values` (from `what`: --config, or a checkpoint's stored args) in the project's names.
    Unknown names are refused when `strict`, else skipped (a stored namespace holds more than
    the model); two names for one value must agree."""
    accepted = (*PROJECT_NAMES[family], *UPSTREAM_NAMES[family], *TRAINING_ONLY[family])
    out: dict = {}
    sources: dict = {}
    for name, value in values.items():
        if name in TRAINING_ONLY[family]:
            continue
        if name in PROJECT_NAMES[family]:
            found = {name: _project_value(name, value)}
        else:
            found = UPSTREAM[family](name, value) if name in UPSTREAM_NAMES[family] else None
        if found is None:
            if strict:
                _refuse(f"{what} has the unknown key {name!r} for {family}; accepted keys are "
                        f"{', '.join(sorted(accepted))}")
            continue
        for key, v in found.items():
            if key in out and out[key] != v:
                _refuse(f"{what} gives {sources[key]} and {name}, which disagree on {key} "
                        f"({out[key]!r} and {v!r}); keep one of them")
            out[key], sources[key] = v, name
    return out


def merge(stored: dict, explicit: dict) -> dict:
    """--config over the checkpoint's stored args, refusing a value they disagree on."""
    for key in stored.keys() & explicit.keys():
        if stored[key] != explicit[key]:
            _refuse(f"--config gives {key} {explicit[key]!r} but the checkpoint's stored "
                    f"training args give {stored[key]!r}; drop {key} from --config")
    return {**stored, **explicit}


# hints that name a backbone field which the weights decide: they must agree
CHECKED_FIELDS = ("depth", "width", "heads", "vocab_size", "num_classes", "patch_size",
                  "registers", "grid_size", "norm_eps", "rope_base")


def check(family: str, backbone, hints: dict) -> None:
    """Refuse a hint the converted backbone does not honour exactly."""
    for key in CHECKED_FIELDS:
        if key in hints and hints[key] is not None and getattr(backbone, key) != hints[key]:
            _refuse(f"the configuration asks for {key} {hints[key]!r} but the weights give "
                    f"{getattr(backbone, key)!r}; fix or drop {key}")
    if hints.get("n_kv_head") not in (None, backbone.heads):
        _refuse(f"n_kv_head {hints['n_kv_head']} differs from the {backbone.heads} heads: "
                "grouped-query attention is not supported")
    if "multiple_of" in hints or "ffn_dim_multiplier" in hints:
        hidden = _swiglu_hidden(backbone.width, hints.get("multiple_of", 256),
                                hints.get("ffn_dim_multiplier"))
        if hidden != backbone.mlp_hidden:
            _refuse(f"multiple_of and ffn_dim_multiplier make an MLP {hidden} wide, but the "
                    f"weights' is {backbone.mlp_hidden}; fix or drop them")
    if "learn_sigma" in hints:
        channels = backbone.out_channels or backbone.in_channels
        if hints["learn_sigma"] != (channels == 2 * backbone.in_channels):
            _refuse(f"learn_sigma {hints['learn_sigma']} disagrees with the weights' "
                    f"{channels} output channels")
    image_size = hints.get("image_size")
    if image_size is not None:
        stride = TOKEN_STRIDE if backbone.input == "tokens" else \
            LATENT_STRIDE * backbone.patch_size
        if image_size != backbone.grid_size * stride:
            _refuse(f"the image size {image_size} px does not fit this model's "
                    f"{backbone.grid_size}x{backbone.grid_size} grid of {stride} px cells; "
                    f"pass image_size {backbone.grid_size * stride}")


def _swiglu_hidden(width: int, multiple_of: int, multiplier: float | None) -> int:
    """LlamaGen's FeedForward width: 2/3 of 4x the width, scaled, rounded up to the multiple."""
    hidden = int(2 * 4 * width / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of
