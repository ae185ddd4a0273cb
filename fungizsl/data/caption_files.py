"""Caption files on disk: the FungalZSL paper's JSON files and JSONL caption files.

Readers return lists of :class:`~fungizsl.data.caption_text.Caption` and raise ValueError naming
the file, the entry (or line) and the field on bad input. Two traps in the FungalZSL files, both
handled at read time:

* ``temperature``. Each split entry carries a ``temperature`` field, but in the released data it
  is a constant per class (spore 300.0, hyphae 340.0, mycelium 365.0). It is a label in disguise:
  any model or feature that sees it can classify perfectly without looking at the image or the
  text. The readers therefore never put it into a :class:`Caption`; it is dropped as the JSON is
  parsed.
* The prompt prefix. Every description starts with the prompt its LLM was given, identical for
  every description of a class. ``strip_prompt=True`` removes it
  (:func:`fungizsl.data.caption_text.strip_prompts`, which explains the detection). A description
  that is nothing but the prompt (the real hyphae files have a few) has no text of its own left;
  such entries are dropped, with a warning, unless ``drop_empty=False``.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Iterator, Mapping, Sequence

from fungizsl.data.caption_text import Caption, strip_prompts

__all__ = [
    "FUNGALZSL_CLASSES",
    "FUNGALZSL_SPLITS",
    "SPLIT_ALIASES",
    "GENERATED_FILE",
    "read_split_file",
    "read_generated_captions",
    "read_jsonl_captions",
    "iter_jsonl",
]

#: The three classes of the FungalZSL data, in the paper's order.
FUNGALZSL_CLASSES: tuple[str, ...] = ("spore", "hyphae", "mycelium")
#: Split name -> file name inside a FungalZSL folder.
FUNGALZSL_SPLITS: dict[str, str] = {
    "train": "train_data.json",
    "val": "val_data.json",
    "test": "test_data.json",
}
#: Other names accepted for a split.
SPLIT_ALIASES: dict[str, str] = {"validation": "val", "valid": "val", "dev": "val"}
GENERATED_FILE = "generated_captions.json"


def _load_json_list(path: str | os.PathLike) -> tuple[pathlib.Path, list]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: caption file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return path, data


def _field(path, index: int, entry, name: str, *, classes: Sequence[str] | None = None) -> str:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if name not in entry:
        raise ValueError(f"{where}: missing field {name!r}")
    value = entry[name]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field {name!r} is blank")
    if classes is not None and value not in classes:
        raise ValueError(f"{where}: field {name!r} has unknown class {value!r} (known: {', '.join(classes)})")
    return value


def _finish(captions: list[Caption], path, *, strip_prompt: bool, prompts, min_fraction,
            drop_empty) -> list[Caption]:
    if strip_prompt or prompts is not None:
        captions = strip_prompts(captions, prompts=prompts, min_fraction=min_fraction,
                                 drop_empty=drop_empty, origin=str(path), _stacklevel=4)
    return captions


def read_split_file(path: str | os.PathLike, *, strip_prompt: bool = False,
                    prompts: Mapping[str, str] | None = None, min_fraction: float = 1.0,
                    drop_empty: bool = True, classes: Sequence[str] | None = FUNGALZSL_CLASSES,
                    source: str | None = None) -> list[Caption]:
    """Read a FungalZSL split file (``train_data.json`` and co.): a JSON list of
    ``{image_path, class_label, description, temperature}``.

    ``temperature`` is dropped here on purpose (it is constant per class: a leaked label; see the
    module docstring). ``strip_prompt`` removes each class's prompt prefix, detected per class
    (sentences shared by at least ``min_fraction`` of the class) unless ``prompts`` gives it;
    passing ``prompts`` implies stripping. ``classes`` is the set of allowed class labels
    (None: any). Raises ValueError naming the file, the entry index and the field on bad input.
    """
    path, data = _load_json_list(path)
    source = source or f"fungalzsl:{path.stem}"
    captions = []
    for i, entry in enumerate(data):
        cls = _field(path, i, entry, "class_label", classes=classes)
        text = _field(path, i, entry, "description")
        image = _field(path, i, entry, "image_path")
        # entry["temperature"] is deliberately never read: it encodes the class.
        captions.append(Caption(class_name=cls, text=text.strip(), source=source, image_path=image))
    return _finish(captions, path, strip_prompt=strip_prompt, prompts=prompts,
                   min_fraction=min_fraction, drop_empty=drop_empty)


def read_generated_captions(path: str | os.PathLike, *, strip_prompt: bool = False,
                            prompts: Mapping[str, str] | None = None, min_fraction: float = 1.0,
                            drop_empty: bool = True,
                            classes: Sequence[str] | None = FUNGALZSL_CLASSES,
                            source: str = "fungalzsl:generated") -> list[Caption]:
    """Read ``generated_captions.json``: a JSON list of ``{description, class_label}``.

    Options as for :func:`read_split_file`.
    """
    path, data = _load_json_list(path)
    captions = []
    for i, entry in enumerate(data):
        cls = _field(path, i, entry, "class_label", classes=classes)
        text = _field(path, i, entry, "description")
        captions.append(Caption(class_name=cls, text=text.strip(), source=source))
    return _finish(captions, path, strip_prompt=strip_prompt, prompts=prompts,
                   min_fraction=min_fraction, drop_empty=drop_empty)


def iter_jsonl(path: str | os.PathLike, *, allow_truncated_tail: bool = True
               ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (1-based numbers).

    A last line that has no newline and is not valid JSON is what an interrupted writer leaves
    behind; with ``allow_truncated_tail`` it is skipped with a warning. Any other bad line raises
    ValueError naming the file and line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: JSONL file not found")
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    complete_tail = raw.endswith(b"\n")
    for number, line in enumerate(lines, start=1):
        is_tail = number == len(lines)
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if is_tail and not complete_tail and allow_truncated_tail:
                warnings.warn(f"{path}: line {number}: ignoring truncated last line", stacklevel=2)
                return
            raise ValueError(f"{path}: line {number}: malformed JSON ({e})") from e
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(obj).__name__}")
        yield number, obj


def read_jsonl_captions(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                        source: str | None = None, allow_truncated_tail: bool = True
                        ) -> list[Caption]:
    """Read a JSONL file of ``{"class": ..., "text": ...}`` lines (extra keys are ignored).

    ``classes`` restricts the allowed class names (None: any non-blank name). Errors name the line.
    """
    path = pathlib.Path(path)
    source = source or f"jsonl:{path.name}"
    out = []
    for number, obj in iter_jsonl(path, allow_truncated_tail=allow_truncated_tail):
        where = f"{path}: line {number}"
        for key in ("class", "text"):
            if key not in obj:
                raise ValueError(f"{where}: missing field {key!r}")
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-blank string")
        cls = obj["class"].strip()
        if classes is not None and cls not in classes:
            raise ValueError(f"{where}: field 'class' has unknown class {cls!r} (known: {', '.join(classes)})")
        out.append(Caption(class_name=cls, text=obj["text"].strip(), source=source,
                           image_path=obj.get("image_path") if isinstance(obj.get("image_path"), str) else None))
    return out
