"""A tiny but real CLIP tokenizer folder for the tests: a byte-level BPE trained with
`tokenizers` on a few English sentences, split as CLIP splits words and ending words with
"</w>", written in CLIP's hub layout (vocab.json, merges.txt, the config files) and optionally
as one tokenizer.json.

`write_clip_tokenizer(folder, tokenizer_json=...)` is what other tests import; the training runs
once per process (a few hundred merges take milliseconds)."""

import functools
import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
# CLIP's word split: its two special tokens, English contractions, letter runs, single digits,
# and runs of everything else; whitespace is dropped
CLIP_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
              r"[^\s\p{L}\p{N}]+")

CORPUS = """
A photograph of an astronaut riding a horse on the moon, highly detailed.
A small red fox sleeping under a tree in the snow, soft morning light.
An oil painting of a lighthouse by the sea at sunset, with dramatic clouds.
Two cats playing with a ball of yarn on a wooden floor in a cosy living room.
A bowl of fresh fruit on a kitchen table: apples, oranges, bananas and grapes.
The city at night, neon signs reflected in the wet street after the rain.
A portrait of an old man with a white beard, wearing a hat, looking at the camera.
A mountain lake surrounded by pine trees, the water is calm and clear.
A watercolour of flowers in a vase, roses and tulips in pink and yellow.
A dog running on the beach, the waves are breaking, it's a sunny summer day.
There are three birds sitting on the wire; they're singing in the early morning.
A painting in the style of the old masters, dark background, warm light on the face.
The train station is crowded with people, a clock on the wall shows the time.
A bicycle leaning against a brick wall, a green door and a window with flowers.
A close-up photo of a butterfly on a leaf, macro, shallow depth of field.
A castle on a hill above a village, the road winding through the fields.
An illustration of a robot reading a book in a library, digital art, trending.
A cup of coffee and a croissant on a table in a Parisian café, morning, 35mm film.
"""


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet (GPT-2's, which CLIP shares): printable bytes stand for
    themselves, the others are shifted past 255, in the order CLIP's vocabulary lists them."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return {b: mapping[b] for b in printable + [b for b in range(256) if b not in printable]}


@functools.lru_cache(maxsize=None)
def trained_merges(num_merges: int = 300) -> tuple[tuple[str, str], ...]:
    """Merges learned by `tokenizers`' BPE trainer with CLIP's normalisation and word split."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    alphabet = list(bytes_to_unicode().values())
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    # the vocabulary size the trainer aims for: its alphabet plus the wanted merges
    trainer = trainers.BpeTrainer(vocab_size=2 * len(alphabet) + num_merges, min_frequency=2,
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  show_progress=False)
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines * 3, trainer=trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return tuple(pairs[:num_merges])


def clip_vocab(merges) -> dict[str, int]:
    """CLIP's layout: the 256 byte symbols, the same with "</w>", each merge's result in merge
    order, then the start and end tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            seen.add(left + right)
            tokens.append(left + right)
    tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def write_clip_tokenizer(folder, *, tokenizer_json: bool, pad_token: str = EOS) -> Path:
    """A hub tokenizer folder: vocab.json + merges.txt + the config files, and with
    `tokenizer_json` also the same pipeline saved as tokenizer.json by transformers'
    CLIPTokenizer (the reference the tests compare against)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = trained_merges()
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(merges), ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "model_max_length": MAX_LENGTH, "do_lower_case": True,
         "tokenizer_class": "CLIPTokenizer"}, indent=2))
    if tokenizer_json:
        reference_tokenizer(folder).backend_tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def reference_tokenizer(folder):
    """transformers' CLIPTokenizer from the folder's vocab.json and merges.txt (test-only)."""
    from transformers import CLIPTokenizer
    folder = Path(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return CLIPTokenizer(vocab=json.loads((folder / "vocab.json").read_text(encoding="utf-8")),
                         merges=[tuple(line.split(" ")) for line in
                                 (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
                                 [1:] if line],
                         bos_token=config["bos_token"], eos_token=config["eos_token"],
                         unk_token=config["unk_token"], pad_token=config["pad_token"],
                         model_max_length=config["model_max_length"])
