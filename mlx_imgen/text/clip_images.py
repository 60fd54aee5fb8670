"""CLIP's image preprocessing, as a hub preprocessor_config.json describes it: RGB (transparency
over white), the shortest side resized (PIL bicubic), a centre crop, rescaled to [0, 1] and
normalised by the channel mean and std. Pillow does the resizing, cropping and compositing."""

import mlx.core as mx
import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# the keys this preprocessing reads, with the defaults of transformers' CLIPImageProcessor
DEFAULTS = dict(do_convert_rgb=True, do_resize=True, size={"shortest_edge": 224},
                resample=Image.Resampling.BICUBIC, do_center_crop=True,
                crop_size={"height": 224, "width": 224}, do_rescale=True,
                rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
                image_std=OPENAI_CLIP_STD)


def _settings(config: dict | None) -> dict:
    values = {**DEFAULTS, **{k: v for k, v in (config or {}).items() if k in DEFAULTS}}
    size, crop = values["size"], values["crop_size"]
    # older configs (openai/clip-vit-large-patch14's) give bare integers: CLIP's size is the
    # shortest edge, its crop a square
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if not (isinstance(size, dict) and (_positive(size.get("shortest_edge"))
                                        or _positive(size.get("height")) and _positive(size.get("width")))):
        raise ValueError(f"preprocessor_config.json's size {size!r} is neither a shortest edge "
                         "nor a height and width; fix the image processor config")
    if not (isinstance(crop, dict) and _positive(crop.get("height")) and _positive(crop.get("width"))):
        raise ValueError(f"preprocessor_config.json's crop_size {crop!r} is not a height and "
                         "width; fix the image processor config")
    try:
        resample = Image.Resampling(values["resample"])
    except ValueError:
        raise ValueError(f"preprocessor_config.json's resample {values['resample']!r} is not a "
                         "PIL resampling filter; fix the image processor config") from None
    for key in ("image_mean", "image_std"):
        if isinstance(values[key], (int, float)):
            values[key] = [values[key]] * 3
        if len(values[key]) != 3 or (key == "image_std" and min(values[key]) <= 0):
            raise ValueError(f"preprocessor_config.json's {key} {values[key]!r} is not three "
                             "numbers (positive for the std); fix the image processor config")
    return {**values, "size": size, "crop_size": crop, "resample": resample}


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, any transparency composited over white (as CLIP's processor does)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)),
                                     rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, size: dict) -> tuple[int, int]:
    """(width, height) after resizing: the shortest edge to size["shortest_edge"] with the
    long edge truncated as the reference does, or the given height and width."""
    if not size.get("shortest_edge"):
        return size["width"], size["height"]
    short, long = sorted((width, height))
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def preprocess_one(image: Image.Image, settings: dict) -> np.ndarray:
    image = to_rgb(image)
    if settings["do_resize"]:
        image = image.resize(resized_size(*image.size, settings["size"]), settings["resample"])
    if settings["do_center_crop"]:
        width, height = image.size
        crop_w, crop_h = settings["crop_size"]["width"], settings["crop_size"]["height"]
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        # pillow pads a box larger than the image with black, as the reference pads with zeros
        image = image.crop((left, top, left + crop_w, top + crop_h))
    pixels = np.asarray(image, dtype=np.float32)
    if settings["do_rescale"]:
        pixels = pixels * np.float32(settings["rescale_factor"])
    if settings["do_normalize"]:
        pixels = (pixels - np.asarray(settings["image_mean"], np.float32)) \
            / np.asarray(settings["image_std"], np.float32)
    return pixels


def preprocess(images: list[Image.Image], config: dict | None = None) -> mx.array:
    """(B, H, W, 3) float32 pixels for CLIP's image tower from PIL images and a
    preprocessor_config.json dict (None: CLIP's defaults). Keys it does not read are ignored."""
    settings = _settings(config)
    if not images:
        raise ValueError("no images to preprocess; pass at least one image")
    arrays = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"image {i} is a {type(image).__name__}, not a PIL image; open it "
                             "with PIL.Image.open first")
        arrays.append(preprocess_one(image, settings))
    if len({a.shape for a in arrays}) > 1:
        raise ValueError("the images preprocess to different sizes; give the processor config "
                         "a crop_size (do_center_crop) or a fixed height and width")
    return mx.array(np.stack(arrays))
