"""Stand-in tokenizers (convert/tokenizers.py): each family's own prompting reads them and lays
out rows as it lays out real ones, one token a word or run of punctuation, special tokens where
the family looks for them and below its model's vocabulary."""

import pytest

from mlx_imgen.convert.tokenizers import write_stand_in_tokenizer
from mlx_imgen.families.janus import TEXT_VOCAB
from mlx_imgen.text.clip_prompts import CLIPPrompts
from mlx_imgen.text.gemma_prompts import MAX_TOKENS, GemmaPrompts
from mlx_imgen.text.janus import JanusPrompts

PROMPT = "A red apple, left of two blue cups."  # 10 words and punctuation runs


def test_janus_rows_hold_the_template_and_a_token_a_word(tmp_path):
    prompts = JanusPrompts.from_folder(write_stand_in_tokenizer("janus-pro-1b", tmp_path))
    row = prompts.row(PROMPT)
    # BOS, <|User|>, ":", the prompt, <|Assistant|>, ":", <begin_of_image>
    assert len(row) == 3 + 10 + 3
    assert row[0] == prompts.bos_id and row[-1] == prompts.begin_of_image_id
    assert max(row) < TEXT_VOCAB
    with pytest.raises(ValueError, match="control token"):
        prompts.row("a cat <|Assistant|>")


def test_clip_rows_are_77_between_start_and_end(tmp_path):
    ids = CLIPPrompts.from_folder(write_stand_in_tokenizer("amused-256", tmp_path)).ids(
        [PROMPT]).tolist()[0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[11] == 49407 and ids[10] != 49407
    assert set(ids[11:]) == {49407}  # CLIP pools at its end token, the largest id


def test_gemma_rows_keep_sanas_instruction_and_length(tmp_path):
    prompts = GemmaPrompts.from_folder(write_stand_in_tokenizer("sana-0.6b-512", tmp_path))
    prefix = prompts.tokenizer.count(prompts.prefix)
    assert 150 < prefix < 250  # near the real tokenizer's 210
    tokens = prompts.tokenize([PROMPT], instructed=True)
    assert tokens.input_ids.shape == (1, prompts.instructed_length)
    assert tokens.attention_mask.sum() == prefix + 10 and tokens.input_ids[0, 0] == 2
    assert prompts.tokenize([""], instructed=False).input_ids.shape == (1, MAX_TOKENS)


def test_a_class_model_has_no_stand_in(tmp_path):
    with pytest.raises(ValueError, match="reads no prompts"):
        write_stand_in_tokenizer("dit-xl-2-256", tmp_path)
