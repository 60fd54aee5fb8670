"""The prompt suite `compare` generates: the built-in one (suite.jsonl, written for this project:
prompts in categories, each with captions that are minimally wrong for it) or a user's file."""

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CATEGORIES = ("single_object", "two_objects", "counting", "colors", "color_attribution",
              "position", "long")
CUSTOM = "custom"  # the category of a plain-text prompt, or a JSONL line that names none
BUILTIN_FILE = "suite.jsonl"
FIELDS = ("id", "category", "prompt", "distractors")


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    category: str
    text: str
    distractors: tuple[str, ...] = ()  # captions that are wrong for the image `text` asks for


def load_suite(path: str | os.PathLike | None = None) -> list[SuitePrompt]:
    """The built-in suite (path None), or a user's file: JSONL lines in the built-in format
    (a file named *.jsonl; only "prompt" is required), or plain text, one prompt a line (blank
    lines skipped; category "custom", no distractors). A bad file raises ValueError naming the
    file and the line."""
    if path is None:
        text = resources.files(__package__).joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
        return _parse_jsonl(text, f"the built-in suite ({BUILTIN_FILE})")
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"prompt file {path} {what}; pass a .jsonl suite or a text file with "
                         "one prompt a line")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"prompt file {path} line {line} is not UTF-8 text; save the file as "
                         "UTF-8") from None
    prompts = (_parse_jsonl(text, str(path)) if path.suffix.lower() == ".jsonl"
               else _parse_lines(text, str(path)))
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts; write one prompt a line, or "
                         "JSONL lines with a \"prompt\"")
    return prompts


def _same_to_clip(a: str, b: str) -> bool:
    # CLIP's tokenizer lowercases and splits on whitespace: such texts encode alike
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _parse_lines(text: str, where: str) -> list[SuitePrompt]:
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            raise ValueError(f"{where} line {number} looks like JSON; name the file *.jsonl to "
                             "read it as a suite, or write plain prompts")
        prompts.append(SuitePrompt(f"{CUSTOM}-{len(prompts) + 1:03d}", CUSTOM, line))
    return prompts


def _parse_jsonl(text: str, where: str) -> list[SuitePrompt]:
    prompts, seen = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        prompt = _prompt_from_line(line, f"{where} line {number}", len(prompts) + 1)
        if prompt.id in seen:
            raise ValueError(f"{where} line {number} repeats the id {prompt.id!r} of line "
                             f"{seen[prompt.id]}; give every prompt its own id")
        seen[prompt.id] = number
        prompts.append(prompt)
    return prompts


def _prompt_from_line(line: str, where: str, position: int) -> SuitePrompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err.msg}); write one JSON object a "
                         "line") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where} is not a JSON object; write {{\"prompt\": ...}} a line")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where} has the unknown field {unknown[0]!r}; use only "
                         f"{', '.join(FIELDS)}")
    text = row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where} has an empty or missing \"prompt\"; describe the image")
    category = row.get("category", CUSTOM)
    if category not in (*CATEGORIES, CUSTOM):
        raise ValueError(f"{where} has the unknown category {category!r}; use one of "
                         f"{', '.join((*CATEGORIES, CUSTOM))}")
    prompt_id = row.get("id", f"{CUSTOM}-{position:03d}")
    if not isinstance(prompt_id, str) or not prompt_id.strip():
        raise ValueError(f"{where} has an empty \"id\"; give it a name such as "
                         f"\"{CUSTOM}-{position:03d}\", or leave the field out")
    distractors = row.get("distractors", [])
    if not isinstance(distractors, list) or not all(isinstance(d, str) and d.strip()
                                                    for d in distractors):
        raise ValueError(f"{where} has \"distractors\" that are not a list of non-empty "
                         "captions; write a list of texts, or leave the field out")
    for i, distractor in enumerate(distractors):
        if _same_to_clip(distractor, text):
            raise ValueError(f"{where} has a distractor equal to the prompt ({distractor!r}); "
                             "a distractor must describe a different image")
        if any(_same_to_clip(distractor, earlier) for earlier in distractors[:i]):
            raise ValueError(f"{where} repeats the distractor {distractor!r}; list each once")
    return SuitePrompt(prompt_id, category, text.strip(), tuple(d.strip() for d in distractors))
