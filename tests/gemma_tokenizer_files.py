"""A tiny tokenizer folder in Gemma's layout (<pad> 0, <eos> 1, <bos> 2, <unk> 3; BOS put first
by the post-processor; right padding) that transformers' AutoTokenizer and mlx-imgen's
PromptTokenizer both read; without torch, so benchmarks/sana_memory.py can use it too."""

import functools
import json
from pathlib import Path

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
VOCAB_SIZE = 512

CORPUS = """Given a user prompt, generate an enhanced prompt with detailed visual descriptions.
A small, fluffy white cat curled up in a round shape, sleeping on a warm sunny windowsill.
A bustling city street scene at dusk, glowing street lamps and a double-decker bus.
Please generate only the enhanced description for the prompt below.
A red fox asleep under a snowy pine tree, watercolor painting, soft morning light.
An astronaut riding a horse on the moon, highly detailed, cinematic lighting.
"""


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
