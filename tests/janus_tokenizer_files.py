"""A tiny but real Janus-Pro tokenizer folder for the tests: a byte-level BPE trained with
`tokenizers` on a few English sentences, with Janus-Pro's special tokens added after the
learned vocabulary and a post-processor that puts BOS first (as the hub's LlamaTokenizerFast
does), written as tokenizer.json + tokenizer_config.json + special_tokens_map.json.

`write_janus_tokenizer(folder)` is what other tests import; the training runs once per process.
"""

import functools
import json
from pathlib import Path

from clip_tokenizer_files import CORPUS as CLIP_CORPUS

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
BEGIN_OF_IMAGE = "<begin_of_image>"
END_OF_IMAGE = "<end_of_image>"
IMAGE = "<image_placeholder>"
# the chat roles and tags Janus-Pro's special_tokens_map.json lists as additional special tokens
ADDITIONAL = ["<image_placeholder>", "<patch_placeholder>", "<|ref|>", "<|/ref|>", "<|det|>",
              "<|/det|>", "<|grounding|>", "<|User|>", "<|Assistant|>"]
# the ids after the learned vocabulary, in the order the tiny tokenizer adds them
SPECIALS = [BOS, EOS, PAD, BEGIN_OF_IMAGE, END_OF_IMAGE, *[t for t in ADDITIONAL if t != IMAGE],
            IMAGE]
VOCAB_SIZE = 480  # learned tokens: the 256 bytes and the merges; the specials follow
MODEL_MAX_LENGTH = 16384

# the CLIP fixture's first eight sentences, then two that reach past English
CORPUS = "\n" + "\n".join(CLIP_CORPUS.strip().splitlines()[:8]) + """
A close-up high-contrast photo of an opera house next to a tower, under a blue night sky.
Le renard roux dort sous un arbre enneigé ; 雪の中で眠る赤い狐。
"""


@functools.lru_cache(maxsize=None)
def tokenizer_json() -> str:
    """The trained tokenizer with the specials and the BOS post-processor, as JSON text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines * 3, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in SPECIALS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))])
    return tokenizer.to_str()


def token_ids() -> dict[str, int]:
    """Each special token's id in the tiny tokenizer."""
    added = json.loads(tokenizer_json())["added_tokens"]
    return {item["content"]: item["id"] for item in added}


def write_janus_tokenizer(folder) -> Path:
    """A hub tokenizer folder in Janus-Pro's layout; every id is below `vocab_size()`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                "additional_special_tokens": ADDITIONAL}
    (folder / "special_tokens_map.json").write_text(
        json.dumps(specials, ensure_ascii=False, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "add_bos_token": True, "add_eos_token": False,
         "model_max_length": MODEL_MAX_LENGTH, "tokenizer_class": "PreTrainedTokenizerFast",
         # what transformers' JanusProcessor reads from the tokenizer
         "extra_special_tokens": {"image_token": IMAGE, "boi_token": BEGIN_OF_IMAGE,
                                  "eoi_token": END_OF_IMAGE}},
        ensure_ascii=False, indent=2), encoding="utf-8")
    return folder


def vocab_size() -> int:
    """The tokenizer's whole vocabulary, specials included: a model's text vocabulary must
    hold at least this many rows."""
    return max(token_ids().values()) + 1


def reference_tokenizer(folder):
    """transformers' tokenizer of the folder (test-only)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))
