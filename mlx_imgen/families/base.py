"""What a family is: one declared object naming its paradigm, autoencoder, license, checkpoint
layouts (signature keys, key map, config inference), published sizes and sampling preset table.
The wrapper-prefix stripping and the head-count inference are written here once for all."""

from dataclasses import dataclass, field
from typing import Callable

from mlx.utils import tree_flatten

from mlx_imgen.backbone import BackboneConfig, Transformer
from mlx_imgen.paradigms import presets
from mlx_imgen.weights.keymap import KeyMap, shape_of, strip_prefixes


@dataclass(frozen=True)
class Layout:
    """One way a family's checkpoints are written (upstream's own files, a diffusers port)."""
    name: str
    signature: tuple[str, ...]       # keys every checkpoint of this layout holds
    keymap: KeyMap
    infer_config: Callable[[dict, dict], BackboneConfig]  # (stripped state, hints) -> config
    complete: Callable[[dict], dict] | None = None  # adds keys a file may leave out (a tie)


@dataclass(frozen=True)
class Family:
    name: str
    title: str                       # how messages name it ("Halton-MaskGIT")
    paradigm: str
    autoencoder: str                 # the autoencoder kind it decodes with ("vq", "kl")
    license: str | None
    layouts: tuple[Layout, ...]
    sizes: dict                      # published size name -> (depth, width, heads)
    config_for: Callable[[str, int], BackboneConfig]  # (size, image size) -> random-weight config
    preset_table: str                # its table in paradigms.presets
    # the weight set its upstream samples from first, of a training checkpoint's sets
    samples_from: tuple[str, ...] = ("model", "ema")
    heads_by_width: dict = field(default_factory=dict)
    # what an image is asked for by: "class" (ImageNet ids) or "text" (prompts)
    condition: str = "class"
    # a text family's prompting from its pipeline's tokenizer folder (text.janus.JanusPrompts,
    # text.clip_prompts.CLIPPrompts): its `condition(pairs, images, names=, plan=, config=,
    # text_encoder=)` builds the sampler's condition; None: no text-to-image sampler yet
    prompting: Callable | None = None
    # (model type, config) of a text tower the family runs itself (aMUSEd's CLIP-L text with
    # projection), for random-weight pipelines and memory estimates; None: it has none
    text_encoder: tuple | None = None
    # stand-in prompts for profiling it without a tokenizer: (text encoder, batch) ->
    # text.stand_in.StandInText (text.clip_prompts.CLIPStandIn, text.gemma_prompts.GemmaStandIn)
    stand_in_text: Callable | None = None
    # the transformer's config dataclass and module: the shared Transformer for every family
    # but one with its own architecture around the backbone's Blocks (aMUSEd's U-ViT)
    config_class: type = BackboneConfig
    model_class: type = Transformer

    @property
    def signature(self) -> tuple[str, ...]:
        """The signature keys, as an error message lists them."""
        if len(self.layouts) == 1:
            return self.layouts[0].signature
        first, *others = self.layouts
        return tuple(f"{key} (or {' or '.join(f'{o.name} {o.signature[i]}' for o in others)})"
                     for i, key in enumerate(first.signature))

    @property
    def sampling(self) -> dict:
        """The sampling defaults a converted folder records."""
        return presets.defaults(self.preset_table)

    def layout(self, state: dict) -> Layout | None:
        keys = set(strip_prefixes(state))
        return next((lay for lay in self.layouts if all(k in keys for k in lay.signature)), None)

    def is_checkpoint(self, state: dict) -> bool:
        return self.layout(state) is not None

    def _layout_and_state(self, state: dict) -> tuple[Layout, dict]:
        state = strip_prefixes(state)
        layout = self.layout(state)
        if layout is None:
            raise ValueError(f"this is not a {self.name} checkpoint: expected keys "
                             f"{', '.join(self.signature)}")
        return layout, layout.complete(state) if layout.complete else state

    def infer_config(self, state: dict, hints: dict) -> BackboneConfig:
        layout, state = self._layout_and_state(state)
        return layout.infer_config(state, hints)

    def weights_from_upstream(self, state: dict, lazy: bool = False) -> dict:
        """Backbone weights, or with `lazy` Deferred tensors that load them one by one."""
        layout, state = self._layout_and_state(state)
        return layout.keymap.apply(state, lazy=lazy)

    def make_plan(self, config: BackboneConfig, sampling: dict):
        return presets.make_plan(self.preset_table, config, sampling)

    def heads(self, width: int, hints: dict, given: int | None = None,
              attention_width: int | None = None) -> int:
        """The head count: given (config.json), from `hints`, or from upstream's size table;
        it must divide the attention width (the model width unless given)."""
        heads = given or hints.get("heads") or self.heads_by_width.get(width)
        if heads is None:
            raise ValueError(f"cannot tell the head count of a {width}-wide {self.title} model; "
                             "pass --config '{\"heads\": N}'")
        inner = attention_width or width
        if inner % heads:
            what = "attention width" if attention_width else "width"
            raise ValueError(f"{heads} heads do not divide the {what} {inner}; fix --config heads")
        return heads


# the tokenizer's and the VAE's downsampling, which turn an image size into a grid
TOKEN_STRIDE = 16
LATENT_STRIDE = 8


def grid_from_image_size(image_size, stride: int = TOKEN_STRIDE) -> int:
    """The token grid of an image size, refused where the stride does not divide it."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"--config image_size must be a whole number, got {image_size!r}")
    if image_size < stride or image_size % stride:
        raise ValueError(f"the image size {image_size} px is not a multiple of the tokenizer's "
                         f"{stride} px cells; pass a multiple of {stride}, such as 256 or 384")
    return image_size // stride


def check_config_fits(config, mapped: dict, model_class, what: str = "transformer/config.json"
                      ) -> None:
    """A config.json read beside the weights must give the model the weights' every key and
    shape: the first mismatch is refused in one sentence. The model is only built to read its
    parameter shapes; nothing is evaluated."""
    expected = {k: v.shape for k, v in tree_flatten(model_class(config).parameters())}
    for key, value in mapped.items():
        shape = shape_of(value)
        if key not in expected or tuple(expected[key]) != shape:
            wanted = tuple(expected[key]) if key in expected else "no such tensor"
            raise ValueError(f"{what} does not fit the weights: {key} is {shape} in the weights "
                             f"but {wanted} by the config; pass the config.json of these weights")
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise ValueError(f"{what} does not fit the weights: the config needs {missing[0]}, which "
                         "the weights lack; pass the config.json of these weights")
