"""Janus-Pro's image tokenizer as it sits inside a Janus checkpoint: LlamaGen's VQ-16 under
`gen_vision_model.` in deepseek-ai's own files (LlamaGen's names), or under `model.vqmodel.` in
the transformers layout, whose JanusVQVAE renames LlamaGen's modules. Both come out in LlamaGen's
names, so vq.py's key map and config inference serve them unchanged."""

import re

# transformers' JanusVQVAE names -> LlamaGen's (the same modules in the same order: its `up`
# list starts at the lowest resolution, as LlamaGen's decoder conv_blocks do)
_RENAMES = (
    (re.compile(r"^((?:en|de)coder)\.(?:down|up)\.(\d+)\.block\."), r"\1.conv_blocks.\2.res."),
    (re.compile(r"^((?:en|de)coder)\.(?:down|up)\.(\d+)\."), r"\1.conv_blocks.\2."),
    (re.compile(r"^((?:en|de)coder)\.mid\.block_1\."), r"\1.mid.0."),
    (re.compile(r"^((?:en|de)coder)\.mid\.attn_1\."), r"\1.mid.1."),
    (re.compile(r"^((?:en|de)coder)\.mid\.block_2\."), r"\1.mid.2."),
)


def llamagen_name(key: str) -> str:
    """A transformers JanusVQVAE key in LlamaGen's VQModel names; LlamaGen's own keys (no
    down/up/block_N names) pass through unchanged."""
    for pattern, target in _RENAMES:
        key, n = pattern.subn(target, key)
        if n:
            break
    return key


def vq_state(state: dict, prefix: str) -> dict:
    """The tokenizer's tensors of a Janus checkpoint `state`, those under `prefix`
    (deepseek-ai's `gen_vision_model.` or transformers' `model.vqmodel.`), keyed in LlamaGen's
    names; values pass through untouched (lazy tensors stay unread)."""
    found = {llamagen_name(k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}
    if not found:
        raise ValueError(f"this Janus checkpoint holds no image tokenizer (no {prefix}* keys); "
                         "pass the complete checkpoint, every shard included")
    return found
