"""The one reader of the JSON files the project reads (model_index.json, config.json, a hub
repo's config.json): one error policy, one sentence naming the file and the fix."""

import json
from pathlib import Path


def read_json(path: str | Path, fix: str = "convert the model again") -> dict:
    """The JSON object in `path`; a missing, unreadable or non-object file raises ValueError
    naming it and `fix`."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is missing or not valid JSON ({err}); {fix}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} is not a JSON object (the file is damaged or incomplete); "
                         f"{fix}")
    return values
