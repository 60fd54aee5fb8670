"""A tiny random transformers Gemma2Model saved as Sana's hub text_encoder/ holds it (config.json,
two safetensors shards and model.safetensors.index.json), and a tiny tokenizer folder in
Gemma's layout (<pad> 0, <eos> 1, <bos> 2, <unk> 3; BOS put first by the post-processor;
right padding) that transformers' AutoTokenizer and mlx-imgen's PromptTokenizer both read."""

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
VOCAB_SIZE = 512
# grouped key/value heads as the real 2B model (two query heads share each); head_dim is not
# hidden / heads there either; query_pre_attn_scalar is not head_dim and rope_theta not the
# default, so a mix-up shows
TINY = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
            rope_theta=1000.0, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            query_pre_attn_scalar=24, sliding_window=4096, hidden_activation="gelu_pytorch_tanh",
            pad_token_id=0, eos_token_id=1, bos_token_id=2)

CORPUS = """Given a user prompt, generate an enhanced prompt with detailed visual descriptions.
A small, fluffy white cat curled up in a round shape, sleeping on a warm sunny windowsill.
A bustling city street scene at dusk, glowing street lamps and a double-decker bus.
Please generate only the enhanced description for the prompt below.
A red fox asleep under a snowy pine tree, watercolor painting, soft morning light.
An astronaut riding a horse on the moon, highly detailed, cinematic lighting.
"""


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


@functools.lru_cache(maxsize=None)
def tokenizer_json() -> str:
    """A byte-level BPE trained on the corpus and Sana's instruction lines, the four specials
    first (Gemma's ids), and a post-processor that puts <bos> first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from mlx_imgen.text.gemma_prompts import INSTRUCTION

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 12, min_frequency=2,
                                  show_progress=False, special_tokens=[PAD, EOS, BOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line for line in CORPUS.splitlines() + list(INSTRUCTION) if line.strip()]
    tokenizer.train_from_iterator(lines * 3, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))])
    return tokenizer.to_str()


def write_gemma_tokenizer(folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    # Gemma's "no limit" model_max_length, as the hub's tokenizer_config.json writes it
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "add_bos_token": True, "add_eos_token": False, "padding_side": "right",
         "model_max_length": 1000000000000000019884624838656,
         "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    return folder


def reference_tokenizer(folder):
    """transformers' tokenizer of the folder (test-only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
