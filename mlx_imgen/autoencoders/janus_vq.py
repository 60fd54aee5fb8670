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

# where each layout keeps the tokenizer in the whole model's state dict
PREFIXES = {"original": "gen_vision_model.", "transformers": "model.vqmodel."}


def llamagen_name(key: str) -> str:
    """A transformers JanusVQVAE key in LlamaGen's VQModel names (LlamaGen keys pass through)."""
    for pattern, target in _RENAMES:
        key, n = pattern.subn(target, key)
        if n:
            break
    return key


def vq_state(state: dict, layout: str) -> dict:
    """The tokenizer's tensors of a Janus checkpoint `state` (either layout), keyed in LlamaGen's
    names; values are passed through untouched (lazy tensors stay unread)."""
    prefix = PREFIXES[layout]
    found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not found:
        raise ValueError(f"this Janus checkpoint holds no image tokenizer (no {prefix}* keys); "
                         "pass the complete checkpoint, every shard included")
    if layout == "transformers":
        found = {llamagen_name(k): v for k, v in found.items()}
    return found


def detect_layout(state: dict) -> str | None:
    """Which layout's tokenizer prefix `state` holds."""
    return next((name for name, prefix in PREFIXES.items()
                 if any(k.startswith(prefix) for k in state)), None)
