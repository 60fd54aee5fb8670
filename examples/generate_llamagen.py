"""Generate two ImageNet classes with LlamaGen-L (384 px) and save them as PNGs.

The first run downloads c2i_L_384.pt and vq_ds16_c2i.pt from the Hugging Face hub and converts
them into ~/.cache/mlx-imgen/models; later runs reuse the conversion.
"""

import mlx_imgen

pipe = mlx_imgen.load("llamagen-c2i-l-384")
images = pipe.generate([207, 360], seed=0, cfg=4.0, top_k=2000, temperature=1.0,
                       on_step=lambda done, total: print(f"\rtoken {done}/{total}", end=""))
print()
for label, image in zip([207, 360], images):
    image.save(f"llamagen-{label}.png")
    print(f"wrote llamagen-{label}.png ({image.size[0]}x{image.size[1]})")
