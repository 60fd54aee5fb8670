"""Prompts as a run takes them: `--prompt` texts or a prompt file (one per line, or JSONL with a
seed and a negative prompt for each), checked before any model loads, and which images a run's
prompts make with which seeds."""

import json
from dataclasses import dataclass
from pathlib import Path

JSONL_KEYS = {"prompt": str, "seed": int, "negative_prompt": str}
MAX_SEED = 2 ** 63 - 1  # MLX keys take 64-bit seeds


@dataclass(frozen=True)
class Prompt:
    text: str
    seed: int | None = None        # its images' own seed (a JSONL "seed"), else the run's
    negative: str | None = None    # its own negative prompt, else the run's

    def record(self) -> dict:
        """As a JSONL line writes it, for provenance and PNG metadata."""
        return {"prompt": self.text, **({"seed": self.seed} if self.seed is not None else {}),
                **({"negative_prompt": self.negative} if self.negative is not None else {})}


def check_prompt(text, what: str = "--prompt") -> str:
    """`text` where a prompt is needed: empty or whitespace-only is refused."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} is empty; describe the image you want, such as --prompt "
                         "'a red fox in the snow'")
    return text


def _is_seed(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


def _prompt_from_json(line: str, where: str) -> Prompt:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err.msg} at column {err.colno}); write "
                         "one object per line, such as {\"prompt\": \"a red fox\", \"seed\": 1}") \
            from None
    if not isinstance(item, dict):
        raise ValueError(f"{where} is a JSON {type(item).__name__}, not an object; write "
                         "{\"prompt\": \"...\"} on each line")
    unknown = [key for key in item if key not in JSONL_KEYS]
    if unknown:
        raise ValueError(f"{where} has the unknown key {unknown[0]!r}; a line takes "
                         f"{', '.join(JSONL_KEYS)}")
    if "prompt" not in item:
        raise ValueError(f"{where} has no \"prompt\"; write {{\"prompt\": \"...\"}} on each line")
    for key in ("prompt", "negative_prompt"):
        if key in item and not isinstance(item[key], str):
            raise ValueError(f"{where}: \"{key}\" must be a string, got {json.dumps(item[key])}")
    if "seed" in item and not _is_seed(item["seed"]):
        raise ValueError(f"{where}: \"seed\" must be a whole number from 0 to {MAX_SEED}, got "
                         f"{json.dumps(item['seed'])}")
    return Prompt(check_prompt(item["prompt"], f"the prompt on {where}"), item.get("seed"),
                  item.get("negative_prompt"))


def read_prompts(path) -> list[Prompt]:
    """The prompts of a file: one per line (blank lines skipped, trailing whitespace dropped),
    or JSONL (a .jsonl file, or one whose first line starts with "{") with "prompt" and
    optional "seed" and "negative_prompt" on each line."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"prompt file {path} is a folder, not a file; pass a text or JSONL file")
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist; check the path")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark from an editor is not a prompt
    except UnicodeDecodeError as err:
        raise ValueError(f"prompt file {path} is not UTF-8 text (byte {err.start} cannot be "
                         "decoded); save it as UTF-8") from None
    lines = [(number, line.rstrip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise ValueError(f"prompt file {path} holds no prompts; write one prompt per line")
    if path.suffix.lower() == ".jsonl" or lines[0][1].lstrip().startswith("{"):
        return [_prompt_from_json(line, f"line {number} of {path}") for number, line in lines]
    return [Prompt(line) for _, line in lines]


def as_prompts(prompts, negative: str | None = None) -> list[Prompt]:
    """Texts or Prompts as Prompts, each checked; `negative` is the run's negative prompt,
    for those without their own."""
    if isinstance(prompts, (str, Prompt)):
        prompts = [prompts]
    out = []
    for i, prompt in enumerate(prompts):
        prompt = prompt if isinstance(prompt, Prompt) else Prompt(prompt)
        check_prompt(prompt.text, f"prompt {i + 1}" if len(prompts) > 1 else "the prompt")
        if negative is not None and prompt.negative is None:
            prompt = Prompt(prompt.text, prompt.seed, negative)
        out.append(prompt)
    if not out:
        raise ValueError("no prompts given; pass at least one")
    return out


def image_seeds(prompts: list[Prompt], *, seed: int, first_index: int = 0) -> list[tuple[int, int]]:
    """(seed, index) of each image, one image for each entry: a prompt with its own seed counts
    its images 0, 1, ... on that seed; the others are images first_index + i of the run with
    `seed`. Either way `--seed S --index I` regenerates an image alone."""
    repeats: dict[Prompt, int] = {}
    keys = []
    for i, prompt in enumerate(prompts):
        if prompt.seed is None:
            keys.append((seed, first_index + i))
        else:
            keys.append((prompt.seed, repeats.get(prompt, 0)))
            repeats[prompt] = repeats.get(prompt, 0) + 1
    return keys


def check_condition(model: str, condition: str, *, classes=None, prompts=None,
                    negative=None, prompt_flag: str = "--prompt") -> None:
    """A class-conditional model takes classes and a text model prompts, never the other:
    one sentence naming the model and what to pass instead."""
    if condition == "class":
        given = prompt_flag if prompts else "--negative-prompt" if negative is not None else None
        if given:
            raise ValueError(f"{model} is a class-conditional model: pass --class (ImageNet ids "
                             f"or names), not {given}")
    elif condition == "text":
        if classes:
            raise ValueError(f"{model} is a text-to-image model: pass --prompt or --prompts, "
                             "not --class")
    else:
        raise ValueError(f"{model} has an unknown condition {condition!r}; convert it again")
