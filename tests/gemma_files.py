"""A tiny random transformers Gemma2Model saved as Sana's hub text_encoder/ holds it (config.json,
two safetensors shards and model.safetensors.index.json); the tiny tokenizer folder in Gemma's
layout is tests/gemma_tokenizer_files.py's, re-exported here."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from gemma_tokenizer_files import (BOS, CORPUS, EOS, PAD, UNK, VOCAB_SIZE,  # noqa: F401
                                   tokenizer_json, write_gemma_tokenizer)

# grouped key/value heads as the real 2B model (two query heads share each); head_dim is not
# hidden / heads there either; query_pre_attn_scalar is not head_dim and rope_theta not the
# default, so a mix-up shows
TINY = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
            rope_theta=1000.0, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            query_pre_attn_scalar=24, sliding_window=4096, hidden_activation="gelu_pytorch_tanh",
            pad_token_id=0, eos_token_id=1, bos_token_id=2)


def tiny_gemma(seed: int = 0, **overrides):
    """A random fp32 transformers Gemma2Model (eager attention, which soft-caps)."""
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    config = Gemma2Config(**{**TINY, **overrides})
    config._attn_implementation = "eager"
    model = Gemma2Model(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norm weights are zero at init (scale 1 + w): make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def write_text_encoder_folder(model, folder) -> Path:
    """`folder` as the hub's text_encoder/: config.json, two shards and their index."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
         "weight_map": weight_map}, indent=2))
    return folder


def reference_tokenizer(folder):
    """transformers' tokenizer of the folder (test-only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
