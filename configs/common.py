"""Helpers shared by the experiment configs.

Configs are selected as `--config=configs/<name>.py:key=value,flag` (big_vision style): the text
after the colon reaches `get_config(arg)`, which calls `parse_arg` to turn it into typed values.
"""

import ml_collections


def _typed(text: str, default):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", ""):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses "arch=b32,runlocal" into a ConfigDict, typed like `defaults`.

    A bare word sets a boolean default to True. Unknown keys and badly typed values stop with a
    message naming the key and the known ones.
    """
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        if "=" not in item and not isinstance(defaults[key], bool):
            raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
        try:
            values[key] = _typed(text.strip(), defaults[key])
        except ValueError as error:
            raise ValueError(f"config argument {key!r}: {error}") from None
    return ml_collections.ConfigDict(values)
