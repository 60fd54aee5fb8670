"""The prompt suite: the built-in file has every category in number, unique ids and distractors
that are wrong captions (distinct from the prompt and from each other); a user's JSONL or plain
text file loads; a bad file is refused with one sentence naming the file and the line."""

import json
from collections import Counter

import pytest

from mlx_imgen.study.suite import CATEGORIES, SuitePrompt, load_suite


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def test_the_builtin_suite_has_every_category_in_number_and_unique_ids():
    suite = load_suite()
    counts = Counter(p.category for p in suite)
    assert set(counts) == set(CATEGORIES)
    assert min(counts.values()) >= 25 and len(suite) >= 210, counts
    assert len({p.id for p in suite}) == len(suite)
    assert len({_norm(p.text) for p in suite}) == len(suite)  # no prompt asked twice
    assert all(p.id.startswith(p.category + "-") for p in suite)


def test_the_builtin_distractors_are_distinct_wrong_captions():
    for prompt in load_suite():
        assert 3 <= len(prompt.distractors) <= 5, prompt
        texts = [_norm(t) for t in (prompt.text, *prompt.distractors)]
        assert len(set(texts)) == len(texts), prompt
        # minimally different: each distractor keeps most of the prompt's words
        words = set(texts[0].split())
        for distractor in texts[1:]:
            assert len(words & set(distractor.split())) >= len(words) / 2, (prompt, distractor)


def test_builtin_long_prompts_are_descriptive_and_bindings_are_swapped():
    suite = load_suite()
    for prompt in (p for p in suite if p.category == "long"):
        assert 2 <= prompt.text.count(". ") + 1 <= 3 and len(prompt.text.split()) >= 25, prompt
    # colour attribution: one distractor swaps the two colours between the objects
    for prompt in (p for p in suite if p.category == "color_attribution"):
        assert any(sorted(d.split()) == sorted(prompt.text.split()) for d in prompt.distractors)


def test_a_user_jsonl_file_and_a_plain_text_file_load(tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "category": "colors", "prompt": "a red cup",
                                 "distractors": ["a blue cup", "a green cup", "a red bowl"]})
                     + "\n\n" + json.dumps({"prompt": "a fox"}) + "\n", encoding="utf-8")
    assert load_suite(jsonl) == [
        SuitePrompt("a", "colors", "a red cup", ("a blue cup", "a green cup", "a red bowl")),
        SuitePrompt("custom-002", "custom", "a fox")]
    plain = tmp_path / "prompts.txt"
    plain.write_text("a red cup\n\n  a fox in the snow  \n", encoding="utf-8")
    assert load_suite(plain) == [SuitePrompt("custom-001", "custom", "a red cup"),
                                 SuitePrompt("custom-002", "custom", "a fox in the snow")]


GOOD = json.dumps({"id": "x", "category": "colors", "prompt": "a red cup",
                   "distractors": ["a blue cup"]})
BAD_FILES = {
    "missing": (None, "does not exist"),
    "not utf-8": (b"a red cup\n\xff\xfe a cat\n", "line 2 is not UTF-8"),
    "bad json": (f"{GOOD}\n{{\"prompt\": \n", "line 2 is not valid JSON"),
    "not an object": ("[1, 2]\n", "line 1 is not a JSON object"),
    "unknown category": ('{"prompt": "a cat", "category": "animals"}\n',
                         "line 1 has the unknown category 'animals'"),
    "unknown field": ('{"prompt": "a cat", "caption": "x"}\n', "unknown field 'caption'"),
    "duplicate id": (f"{GOOD}\n\n{GOOD}\n", "line 3 repeats the id 'x' of line 1"),
    "empty prompt": ('{"prompt": "  "}\n', "line 1 has an empty or missing \"prompt\""),
    "distractor equal to the prompt": ('{"prompt": "a red cup", "distractors": ["A  red cup"]}\n',
                                       "line 1 has a distractor equal to the prompt"),
    "repeated distractor": ('{"prompt": "a red cup", "distractors": ["a cat", "a cat"]}\n',
                            "repeats the distractor"),
    "distractors not texts": ('{"prompt": "a red cup", "distractors": "a cat"}\n',
                              "not a list of non-empty captions"),
    "empty file": ("\n\n", "holds no prompts"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_one_sentence_naming_the_file_and_line(tmp_path, case):
    content, phrase = BAD_FILES[case]
    path = tmp_path / "suite.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as refused:
        load_suite(path)
    message = str(refused.value)
    assert str(path) in message and phrase in message and "\n" not in message


def test_a_plain_file_of_json_lines_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "suite.txt"
    path.write_text(GOOD + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 looks like JSON; name the file"):
        load_suite(path)
