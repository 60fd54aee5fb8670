"""Converted pipeline folders of tiny random models, one per family, written directly with
the converter's writer (no checkpoint to convert): fast enough for end-to-end generate tests."""

from pathlib import Path

from mlx.utils import tree_flatten

from conftest import build, randomize_autoencoder
from mlx_imgen import __version__, families
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.autoencoders.kl import KLConfig
from mlx_imgen.autoencoders.vq import VQConfig
from mlx_imgen.convert.writer import write_pipeline
from mlx_imgen.families import dit, llamagen, maskgit

CODEBOOK = 64
CLASSES = 10
# a 4x4 token grid: 16 tokens, fewer than Halton-MaskGIT's default 32 steps
BACKBONES = {
    "llamagen": lambda: llamagen.backbone_config(2, 32, 4, 64, vocab_size=CODEBOOK,
                                                 num_classes=CLASSES, grid_size=4),
    "maskgit": lambda: maskgit.backbone_config(2, 32, 4, 64, codebook_size=CODEBOOK,
                                               num_classes=CLASSES, grid_size=4),
    "dit": lambda: dit.backbone_config(2, 32, 4, latent_size=8, num_classes=CLASSES),
    "sit": lambda: dit.backbone_config(2, 32, 4, latent_size=8, num_classes=CLASSES),
}
AUTOENCODER_CONFIGS = {
    "vq": VQConfig(codebook_size=CODEBOOK, codebook_embed_dim=8, ch=32, ch_mult=(1, 2),
                   z_channels=16, num_res_blocks=1),
    "kl": KLConfig(block_out_channels=(8, 16), layers_per_block=1, norm_groups=4),
}


def write_tiny_pipeline(out: Path, family: str, seed: int = 0) -> Path:
    fam = families.get(family)
    backbone = BACKBONES[family]()
    transformer = build(backbone, seed)
    kind = AUTOENCODERS[fam.autoencoder]
    ae_config = AUTOENCODER_CONFIGS[fam.autoencoder]
    autoencoder = randomize_autoencoder(kind.model(ae_config), seed)
    settings = {"dtype": "float32", "quantization": None, "mlx_imgen_version": __version__}
    source = {"repo": "example/tiny", "file": f"{family}.pt", "revision": None,
              "sha256": f"{seed:064x}"}
    ae_source = {"repo": "example/tiny", "file": f"{fam.autoencoder}.pt", "revision": None,
                 "sha256": f"{seed + 1:064x}"}
    index = {"family": family, "paradigm": fam.paradigm, "alias": None, "license": "MIT",
             "sampling": fam.sampling, **settings}
    components = {
        "transformer": ({"family": family, "backbone": backbone.to_dict(), "source": source,
                         **settings}, dict(tree_flatten(transformer.parameters()))),
        "autoencoder": ({"kind": fam.autoencoder, "config": ae_config.to_dict(),
                         "source": ae_source, **settings},
                        dict(tree_flatten(autoencoder.parameters()))),
    }
    return write_pipeline(Path(out), index, components)
