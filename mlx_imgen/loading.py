"""`mlx_imgen.load`: a pipeline folder as given, or an alias converted into the model cache on
first use (as mlx-lm does) and reused after that. It sits above the converter and the pipeline,
which never import it."""

import os
from pathlib import Path

from .convert import converter
from .io import exclusive_target
from .pipeline import INDEX_FILE, Pipeline, refuse_unconverted
from .registry import CARDS, get_card
from .weights.dtypes import resolve_dtype
from .weights.jsonfile import read_json


def cache_root() -> Path:
    if os.environ.get("MLX_IMGEN_CACHE"):
        return Path(os.environ["MLX_IMGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlx-imgen" / "models"


def resolve(model: str, *, dtype: str | None = None, revision: str | None = None) -> Path:
    """A pipeline folder for `model`: the folder itself, or the cached conversion of an alias."""
    path = Path(model)
    if (path / INDEX_FILE).is_file():
        refuse_unconverted(path, read_json(path / INDEX_FILE))
        return path
    if path.is_dir():
        raise ValueError(f"{path} is not a converted pipeline folder (no {INDEX_FILE}); "
                         "create one with `mlx-imgen convert`")
    if model not in CARDS:
        get_card(model)  # raises with suggestions
    folder = cache_root() / f"{model}-{resolve_dtype(dtype)}"
    if not (folder / INDEX_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # a second process asking for the same alias waits for the first one's conversion
        with exclusive_target(folder, wait=True):
            if not (folder / INDEX_FILE).is_file():
                converter.convert(model, folder, dtype=dtype, revision=revision, force=folder.exists())
    return folder


def load(model: str, *, dtype: str | None = None, revision: str | None = None,
         quantize: int | None = None, group_size: int = 64) -> Pipeline:
    """`mlx_imgen.load("llamagen-c2i-l-384")` or `load("path/to/converted")`; `quantize`
    quantizes the transformer in memory (8 or 4 bits, say) after loading."""
    pipe = Pipeline(resolve(model, dtype=dtype, revision=revision))
    if quantize:
        pipe.quantize(quantize, group_size)
    return pipe
