"""Generate two ImageNet classes with Halton-MaskGIT-L (384 px) and save them as PNGs.

The first run downloads ImageNet_384_large.pth and LlamaGen's vq_ds16_c2i.pt from the Hugging
Face hub and converts them into ~/.cache/mlx-imgen/models; later runs reuse the conversion.
The model decodes the same 24x24 VQ-16 token grid as LlamaGen-L at 384 px, in 32 steps
instead of 576 tokens one by one.
"""

import mlx_imgen

pipe = mlx_imgen.load("maskgit-halton-l-384")
# upstream's published example: Halton order, 32 steps, CFG w 2, temperature 1.0 -> 1.2;
# sampler="halton-config" is its config file (w 3, no randomised order)
images = pipe.generate([1, 7], seed=0, sampler="halton", steps=32, cfg=2.0,
                       on_step=lambda done, total: print(f"\rstep {done}/{total}", end=""))
print()
for label, image in zip([1, 7], images):
    image.save(f"maskgit-{label}.png")
    print(f"wrote maskgit-{label}.png ({image.size[0]}x{image.size[1]})")
