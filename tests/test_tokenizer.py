"""PromptTokenizer gives the token ids and attention masks of transformers' CLIPTokenizer on a
real (tiny) CLIP vocabulary, from vocab.json + merges.txt and from tokenizer.json; it truncates
as transformers does and says what it cut; broken folders get one sentence."""

import json
import logging

import numpy as np
import pytest

from clip_tokenizer_files import reference_tokenizer, write_clip_tokenizer
from mlx_imgen.text.tokenizer import PromptTokenizer

LONG = ("a highly detailed photograph of a red fox sleeping under a pine tree in the snow, "
        "soft morning light, shallow depth of field, 35mm film, grain, " * 4)
PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT Riding A Horse",
    "HELLO WORLD",
    "hello, world! how are you?",
    "what?!... no way!!!",
    "it's the dog's ball; they're here, we've seen it, I'm sure, you'll see, he'd go",
    "don't stop-believing (1987) [remastered] {live} <tag> #1 @home $5 50% a&b",
    "café crème brûlée à la mode, naïve façade, Ångström",
    "Straße über Ärger, ÉCOLE",
    "e\u0301te\u0301 composed from combining accents",
    "東京タワーの夜景",
    "一只猫坐在窗台上",
    "고양이 사진",
    "кошка на крыше",
    "a cat 🐱 and a dog 🐶 under 🌧️ rain",
    "👩‍👩‍👧‍👦 family emoji with joiners",
    "numbers 0 1 12 123 3.14159 1,000,000 2026-11-26",
    "ⅻ ² ³ ½ Arabic ٣ digits",
    "tabs\tand\nnewlines\r\nand   many    spaces",
    "   leading and trailing spaces   ",
    "",
    " ",
    "!",
    "!!!!!!",
    "'s 't 're 've 'm 'll 'd",
    "<|startoftext|> a literal start token",
    "a literal end token <|endoftext|> in the middle",
    "ALL CAPS WITH PUNCTUATION!!! AND ??? MARKS",
    "mixed: camelCaseWords snake_case_words kebab-case-words",
    "url https://example.com/path?q=1&b=2",
    "zero\u200bwidth space and non\u00a0breaking space",
    LONG,
    LONG.upper(),
    " ".join(str(i) for i in range(200)),
    "🐱" * 60,
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {"merges": write_clip_tokenizer(root / "merges", tokenizer_json=False),
            "json": write_clip_tokenizer(root / "json", tokenizer_json=True),
            "bang": write_clip_tokenizer(root / "bang", tokenizer_json=False, pad_token="!")}


@pytest.fixture(scope="module")
def reference(folders):
    return reference_tokenizer(folders["merges"])


def test_fixture_is_a_real_clip_vocabulary(folders):
    vocab = json.loads((folders["merges"] / "vocab.json").read_text(encoding="utf-8"))
    merges = (folders["merges"] / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) > 200
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and len(vocab) > 700
    assert list(vocab)[-2:] == ["<|startoftext|>", "<|endoftext|>"]


@pytest.mark.parametrize("source", ["merges", "json"])
def test_ids_and_masks_match_transformers_padded_to_77(folders, reference, source, caplog):
    tokenizer = PromptTokenizer.from_folder(folders[source])
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True)
    with caplog.at_level(logging.WARNING):
        got = tokenizer(PROMPTS)
    assert got.input_ids.dtype == np.int32 and got.attention_mask.dtype == np.int32
    assert got.input_ids.shape == (len(PROMPTS), 77)
    for prompt, ids, mask, want_ids, want_mask in zip(PROMPTS, got.input_ids, got.attention_mask,
                                                      expected["input_ids"],
                                                      expected["attention_mask"]):
        assert ids.tolist() == want_ids, prompt
        assert mask.tolist() == want_mask, prompt
    # byte fallback, not the unknown token, for text the tiny vocabulary never saw
    row = PROMPTS.index("東京タワーの夜景")
    assert got.input_ids[row][got.attention_mask[row] == 1].tolist().count(tokenizer.eos_id) == 1
    assert got.truncated[PROMPTS.index(LONG)].startswith("the snow, soft morning light")


def test_longest_padding_and_no_truncation_needed_match_transformers(folders, reference):
    short = [p for p in PROMPTS if len(reference(p)["input_ids"]) <= 77]
    got = PromptTokenizer.from_folder(folders["merges"])(short, padding="longest")
    expected = reference(short, padding="longest")
    assert got.input_ids.tolist() == expected["input_ids"]
    assert got.attention_mask.tolist() == expected["attention_mask"]
    assert got.truncated == [""] * len(short)


def test_truncation_keeps_start_first_tokens_and_end_and_says_what_was_cut(folders, reference,
                                                                          caplog):
    tokenizer = PromptTokenizer.from_folder(folders["merges"])
    full = reference(LONG)["input_ids"]
    assert len(full) > 77
    with caplog.at_level(logging.WARNING, logger="mlx_imgen.text.tokenizer"):
        got = tokenizer(["a cat", LONG], max_length=20)
    assert got.input_ids[1].tolist() == full[:19] + [tokenizer.eos_id]
    assert got.attention_mask[1].tolist() == [1] * 20
    assert got.truncated[0] == ""
    kept = tokenizer.decode(full[1:19])  # 18 tokens end inside a word in this vocabulary
    assert LONG.startswith(kept) and not LONG.startswith(kept + " ")
    assert got.truncated[1] == LONG[len(kept):].strip()
    assert [r.getMessage() for r in caplog.records] == [
        f"prompt 2 was cut to the 20 tokens the text encoder takes; dropped: {got.truncated[1]!r}"]


def test_bang_pad_token_pads_with_its_id_and_matches_transformers(folders):
    tokenizer = PromptTokenizer.from_folder(folders["bang"])
    assert tokenizer.pad_id == 0 and tokenizer.eos_id != 0
    expected = reference_tokenizer(folders["bang"])(PROMPTS, padding="max_length", max_length=77,
                                                    truncation=True)
    got = tokenizer(PROMPTS)
    assert got.input_ids.tolist() == expected["input_ids"]
    assert got.attention_mask.tolist() == expected["attention_mask"]
    row = got.input_ids[0].tolist()
    assert row[row.index(tokenizer.eos_id) + 1:] == [0] * (77 - row.index(tokenizer.eos_id) - 1)


def test_properties_come_from_the_folder(folders):
    tokenizer = PromptTokenizer.from_folder(folders["json"])
    vocab = json.loads((folders["json"] / "vocab.json").read_text(encoding="utf-8"))
    assert tokenizer.bos_id == vocab["<|startoftext|>"]
    assert tokenizer.eos_id == tokenizer.pad_id == vocab["<|endoftext|>"]
    assert tokenizer.max_length == 77 and tokenizer.vocab_size == len(vocab)


def _copy(source, target, drop=(), replace=None):
    target.mkdir()
    for path in source.iterdir():
        if path.name not in drop:
            (target / path.name).write_bytes(path.read_bytes())
    for name, data in (replace or {}).items():
        (target / name).write_bytes(data)
    return target


@pytest.mark.parametrize("case", [
    "missing", "empty", "vocab-only", "bad-json", "bad-tokenizer-json", "vocab-not-a-map",
    "merge-outside-vocab", "bad-merges-line", "not-utf8", "config-not-object", "no-end-token"])
def test_broken_folders_are_refused_in_one_sentence(folders, tmp_path, case):
    source = folders["merges"]
    target = tmp_path / case
    if case == "empty":
        target.mkdir()
    elif case == "vocab-only":
        _copy(source, target, drop=("merges.txt",))
    elif case == "bad-json":
        _copy(source, target, replace={"vocab.json": b'{"a": 1'})
    elif case == "bad-tokenizer-json":
        _copy(folders["json"], target, replace={"tokenizer.json": b'{"model": {"type": "BPE"'})
    elif case == "vocab-not-a-map":
        _copy(source, target, replace={"vocab.json": b'["a", "b"]'})
    elif case == "merge-outside-vocab":
        _copy(source, target, replace={"merges.txt": b"#version: 0.2\nzz\xc3\xa9 q\n"})
    elif case == "bad-merges-line":
        _copy(source, target, replace={"merges.txt": b"#version: 0.2\na b c\n"})
    elif case == "not-utf8":
        _copy(source, target, replace={"merges.txt": b"#version: 0.2\n\xff\xfe b\n"})
    elif case == "config-not-object":
        _copy(source, target, replace={"tokenizer_config.json": b"[77]"})
    elif case == "no-end-token":
        vocab = json.loads((source / "vocab.json").read_text(encoding="utf-8"))
        del vocab["<|endoftext|>"]
        _copy(source, target, replace={"vocab.json": json.dumps(vocab).encode()})
    with pytest.raises(ValueError) as err:
        PromptTokenizer.from_folder(target)
    message = str(err.value)
    assert str(target) in message and "\n" not in message and message.count(". ") == 0


def test_options_out_of_range_are_refused(folders):
    tokenizer = PromptTokenizer.from_folder(folders["merges"])
    with pytest.raises(ValueError, match="padding must be one of max_length, longest"):
        tokenizer(["a"], padding="right")
    with pytest.raises(ValueError, match="max_length must leave room"):
        tokenizer(["a"], max_length=2)
