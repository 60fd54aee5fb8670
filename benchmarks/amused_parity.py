"""aMUSEd at its published shapes with random weights: the MLX port against diffusers on this
machine's devices, the U-ViT's logits and the VQ-GAN's decode, float32.

    .venv/bin/python benchmarks/amused_parity.py [--sizes 256 512] [--batch 2]

The tests check tiny models of every option (tests/test_amused_transformer.py,
tests/test_diffusers_vq.py); this checks the real depth and widths, and on a GPU the device's
kernels (MLX's CUDA or Metal backend against torch's CUDA, MPS or CPU). torch runs with TF32
off, so both sides compute in float32. Weights: diffusers' initialisation, with the GRN scales
(zero at initialisation, which would hide the ConvNeXt blocks' GRN) drawn at random. Prints one
JSON line per check: the relative max error max|MLX - torch| / max|torch|, and on CUDA the
same error between torch with TF32 on and off (the size of TF32's rounding, for comparison with
an MLX backend that uses TF32: MLX_ENABLE_TF32=0 turns it off in MLX's CUDA backend).
"""

import argparse
import json

import mlx.core as mx
import numpy as np

from amused import parts, torch_device, uvit_kwargs, vq_kwargs
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.families import get
from mlx_imgen.uvit import TEXT_LENGTH, UVit


def _mlx_state(module) -> dict:
    return {k: mx.array(v.detach().float().cpu().numpy()) for k, v in module.state_dict().items()}


def relative_error(ours, theirs) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def uvit_check(size: str, batch: int, device: str) -> dict:
    import torch
    from diffusers import UVit2DModel

    config, _, _ = parts(size)
    torch.manual_seed(0)
    reference = UVit2DModel(**uvit_kwargs(config)).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "channelwise_norm" in name:
                p.normal_(0.0, 0.5)
    family = get("amused")
    state = _mlx_state(reference)
    model = UVit(family.infer_config(state, {"config_json": uvit_kwargs(config)}))
    model.load_weights(list(family.weights_from_upstream(state).items()), strict=True)
    rng = np.random.default_rng(0)
    g = config.grid_size
    tokens = rng.integers(0, config.codebook_size, (batch, g, g))
    tokens[rng.random((batch, g, g)) < 0.5] = config.mask_id
    states = rng.standard_normal((batch, TEXT_LENGTH, config.encoder_hidden_size), np.float32)
    pooled = rng.standard_normal((batch, config.cond_embed_dim), np.float32)
    micro = np.array([[g * 16, g * 16, 0, 0, 6]] * batch, np.float32)
    ours = np.array(model(mx.array(tokens.reshape(batch, -1).astype(np.int32)),
                          context=mx.array(states), pooled=mx.array(pooled),
                          micro_conditions=mx.array(micro)))
    reference = reference.to(device)
    arguments = [torch.from_numpy(a).to(device) for a in (tokens, states, pooled, micro)]

    def theirs():
        with torch.no_grad():
            return reference(*arguments).flatten(2).transpose(1, 2).cpu().numpy()
    return {"check": f"amused-{size} U-ViT logits", "batch": batch,
            **errors(ours, theirs, device)}


def vq_check(size: str, batch: int, device: str) -> dict:
    import torch
    from diffusers import VQModel

    config, vq_config, _ = parts(size)
    torch.manual_seed(1)
    reference = VQModel(**vq_kwargs(vq_config)).eval()
    kind = AUTOENCODERS["diffusers-vq"]
    state = _mlx_state(reference)
    model = kind.model(kind.infer_config(state, config=vq_kwargs(vq_config)))
    model.load_weights(list(kind.weights_from_upstream(state).items()), strict=True)
    g = config.grid_size
    codes = np.random.default_rng(1).integers(0, vq_config.num_vq_embeddings, (batch, g, g))
    ours = np.array(model.decode_codes(mx.array(codes.astype(np.int32))))
    reference = reference.to(device)

    def theirs():
        with torch.no_grad():
            images = reference.decode(torch.from_numpy(codes).to(device), force_not_quantize=True,
                                      shape=(batch, g, g, vq_config.vq_embed_dim)).sample
        return (images.clip(0, 1) * 2 - 1).permute(0, 2, 3, 1).cpu().numpy()
    return {"check": f"amused-{size} VQ-GAN decode", "batch": batch,
            **errors(ours, theirs, device)}


def _tf32(on: bool) -> None:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def errors(ours, theirs, device: str) -> dict:
    """MLX against torch in float32; on CUDA also torch with TF32 against torch without."""
    _tf32(False)
    exact = theirs()
    result = {"relative_max_error": relative_error(ours, exact)}
    if device == "cuda":
        _tf32(True)
        result["torch_tf32_vs_fp32"] = relative_error(theirs(), exact)
        _tf32(False)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=["256", "512"], default=["256", "512"])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    device = torch_device()
    where = {"mlx_device": mx.default_device().type.name, "torch_device": device}
    for size in args.sizes:
        for check in (uvit_check, vq_check):
            print(json.dumps({**check(size, args.batch, device), **where}), flush=True)


if __name__ == "__main__":
    main()
