"""Generate ImageNet classes with DiT-XL/2 (DDPM, 50 steps) and SiT-XL/2 (Heun ODE, 32 steps).

The first run downloads facebook/DiT-XL-2-256 and stabilityai/sd-vae-ft-mse from the Hugging
Face hub and converts them into ~/.cache/mlx-imgen/models. SiT-XL-2-256.pt has no hub repo:
download it from the SiT README's link and convert it once with
`mlx-imgen convert path/to/SiT-XL-2-256.pt --family sit --out sit-xl-2-256`; the script uses
that folder when it exists. DiT-XL/2's weights are CC-BY-NC 4.0 (non-commercial use only).
"""

from pathlib import Path

import mlx_imgen

CLASSES = [207, 360]  # golden retriever, otter


def progress(done: int, total: int) -> None:
    print(f"\rstep {done}/{total}", end="", flush=True)


def save(images, prefix: str) -> None:
    print()
    for label, image in zip(CLASSES, images):
        image.save(f"{prefix}-{label}.png")
        print(f"wrote {prefix}-{label}.png ({image.size[0]}x{image.size[1]})")


dit = mlx_imgen.load("dit-xl-2-256")
# upstream guides the first 3 latent channels; cfg_channels="all" guides all 4
save(dit.generate(CLASSES, seed=0, sampler="ddpm", steps=50, cfg=4.0, on_step=progress), "dit")

if Path("sit-xl-2-256").is_dir():
    sit = mlx_imgen.load("sit-xl-2-256")
    save(sit.generate(CLASSES, seed=0, sampler="heun", steps=32, cfg=4.0, on_step=progress), "sit")
