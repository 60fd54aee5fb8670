"""The one policy for configurations read from JSON (a converted folder's config.json).

A key the class does not have is refused: no version ever wrote one, so it is a typo or a file
from elsewhere, and dropping it would build a different model in silence. A key that is absent
takes the field's default, which is how a folder converted before a field existed still loads.
Tuple fields travel as JSON lists.
"""

import typing
from dataclasses import MISSING, asdict, fields


class DictConfig:
    """Mixin for configuration dataclasses: `to_dict` for config.json, `from_dict` back."""

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}: "
                             "convert the model again with this mlx-imgen, or remove the key")
        missing = [name for name, f in known.items() if name not in values
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"the config.json of a {cls.__name__} lacks "
                             f"{', '.join(map(repr, missing))}; convert the model again")
        return cls(**{key: tuple(value) if typing.get_origin(known[key].type) is tuple
                      and value is not None else value for key, value in values.items()})
