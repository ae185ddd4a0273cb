"""Labelled image sets for evaluation-only runs: a class folder, a TFDS split or a CSV of images.

An :class:`ImageSet` holds the class names, one label per image, a short description of where the
images came from, and a loader that decodes image ``i`` on demand (as an RGB PIL image), so that a
large set is never held in memory. :func:`make_image_set` builds the set that ``config.data.kind``
names ("folder", "tfds" or "csv"; see ``configs/evaluate.py``). Paths go through ``etils.epath``,
so a set on ``gs://`` reads the same. :class:`FolderSource` is the class-folder layout as a record
source for training (``config.data.kind="folders"`` of the FungalZSL trainer). A file that does not decode raises
:class:`fungizsl.data.augment.CorruptImageError` naming it when it is loaded.
"""

from __future__ import annotations

import csv as csv_lib
import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np
from etils import epath

from fungizsl.data import augment, builders
from fungizsl.data.builders.image_folder import IMAGE_EXTENSIONS, walk_files
from fungizsl.errors import ConfigError



@dataclasses.dataclass
class ImageSet:
    """Images to evaluate: a way to load each image, its label, and the class names."""

    class_names: list[str]
    labels: np.ndarray
    describe: str
    load: Callable[[int], Any]  # index -> PIL image (RGB)
    names: list[str]

    def __len__(self):
        return len(self.labels)


def _image_files(folder: epath.Path) -> list[epath.Path]:
    """Image files under `folder`, nested folders included, hidden entries skipped, sorted."""
    return [f for f in walk_files(folder) if f.suffix.lower() in IMAGE_EXTENSIONS]


def class_folders(root: epath.Path) -> dict[str, list[epath.Path]]:
    """class folder name -> its image files, for every class folder of `root` that holds images."""
    found = {d.name: list(_image_files(d)) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    return {k: v for k, v in found.items() if v}


def folder_images(root: str, class_names: Sequence[str] | None = None) -> ImageSet:
    """`root/<class>/<image>` (nested folders below a class are included; hidden files skipped)."""
    root_path = epath.Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"config.data.images={root!r} is not a folder")
    found = class_folders(root_path)
    names = list(class_names) if class_names else sorted(found)
    missing = [c for c in names if c not in found]
    if missing:
        raise FileNotFoundError(f"{root}: no images for classes {missing}; class folders found: {sorted(found)}")
    if not names:
        raise FileNotFoundError(f"{root}: no class folders with images ({', '.join(IMAGE_EXTENSIONS)})")
    paths = [p for c in names for p in found[c]]
    labels = np.asarray([k for k, c in enumerate(names) for _ in found[c]], np.int64)

    def load(i):
        return augment.load_image(paths[i].read_bytes(), where=os.fspath(paths[i]))

    return ImageSet(names, labels, f"folder:{root}", load, [os.fspath(p) for p in paths])


def tfds_images(builder: str, config: str, split: str, data_dir: str) -> ImageSet:
    """A split of a prepared TFDS builder of :mod:`fungizsl.data.builders` (labels from ``label``,
    else ``category_id``; class names from the label feature, else the label numbers)."""
    source = builders.data_source(builder, split, config=config or None, data_dir=data_dir)
    info = source.dataset_info.features
    label_key = "label" if "label" in info else "category_id"
    names = list(info[label_key].names) if hasattr(info[label_key], "names") else None
    records = [source[i] for i in range(len(source))]
    labels = np.asarray([int(r[label_key]) for r in records], np.int64)
    if names is None:
        names = [str(c) for c in range(int(labels.max()) + 1)]

    def load(i):
        return augment.load_image(records[i]["image"], where=f"{builder}/{config}:{split} record {i}")

    return ImageSet(names, labels, f"tfds:{builder}/{config}:{split}@{data_dir}", load,
                    [f"{split}[{i}]" for i in range(len(records))])


def csv_images(path: str, image_column: str, label_column: str, image_root: str = "",
               class_names: Sequence[str] | None = None) -> ImageSet:
    """Images listed in a CSV (Mushroom Observer's images.csv, FungiCLEF metadata): one row per
    image, `image_column` a path relative to `image_root` (default: `<csv folder>/images`),
    `label_column` the class name. A repeated column name refers to its first occurrence."""
    csv_path = epath.Path(path)
    with csv_path.open() as f:
        reader = csv_lib.reader(f)
        header = next(reader)
        rows = [dict(reversed(list(zip(header, values)))) for values in reader]
    for column in (image_column, label_column):
        if column not in header:
            raise KeyError(f"{path}: no column {column!r}; columns: {header}")
    root = epath.Path(image_root) if image_root else csv_path.parent / "images"
    rows = [r for r in rows if r[label_column].strip()]
    names = list(class_names) if class_names else sorted({r[label_column].strip() for r in rows})
    index = {c: k for k, c in enumerate(names)}
    rows = [r for r in rows if r[label_column].strip() in index]
    paths = [root / r[image_column] for r in rows]
    missing = [os.fspath(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} listed images are missing, e.g. {missing[:3]}")
    labels = np.asarray([index[r[label_column].strip()] for r in rows], np.int64)

    def load(i):
        return augment.load_image(paths[i].read_bytes(), where=os.fspath(paths[i]))

    return ImageSet(names, labels, f"csv:{path}", load, [os.fspath(p) for p in paths])


def make_image_set(data) -> ImageSet:
    """The image set of an evaluation config's ``data`` block."""
    class_names = list(data.get("class_names", ()) or ()) or None
    if data.kind == "folder":
        return folder_images(data.images, class_names)
    if data.kind == "tfds":
        return tfds_images(data.tfds_builder, data.tfds_config, data.split, data.tfds_dir)
    if data.kind == "csv":
        return csv_images(data.csv, data.image_column, data.label_column, data.image_root, class_names)
    raise ValueError(f"config.data.kind must be 'folder', 'tfds' or 'csv', got {data.kind!r}")


class FolderSource:
    """A training or evaluation split kept as class folders (``root/<class>/<image>``): a record
    source for the input pipeline, read on access (``{"image": encoded bytes, "label", "filename"}``).

    The training split fixes the class list (its folder names, sorted, unless `class_names` is
    given); an evaluation split is labelled by that list and may lack some classes (a few-shot
    val split rarely has them all), but a folder of a class the list does not know is an error
    naming it. A file that does not decode fails when its record is decoded, naming the file.
    """

    def __init__(self, root, class_names: Sequence[str] | None = None, what: str = "config.data.folders"):
        root = epath.Path(root)
        if not root.is_dir():
            raise ConfigError(f"{what}: {os.fspath(root)} is not a folder (class folders expected under it)")
        found = class_folders(root)
        if not found:
            raise ConfigError(f"{what}: {os.fspath(root)} has no class folders with images ({', '.join(IMAGE_EXTENSIONS)})")
        self.class_names = tuple(class_names) if class_names else tuple(sorted(found))
        unknown = sorted(set(found) - set(self.class_names))
        if unknown:
            raise ConfigError(f"{what}: {os.fspath(root)} has class folders the training split does not: {unknown[:5]}"
                              + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        self._items = [(path, k) for k, name in enumerate(self.class_names) for path in found.get(name, ())]
        self._root = root

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self._items[int(index)]
        return {"image": path.read_bytes(), "label": label, "filename": os.fspath(path)}

    def __repr__(self) -> str:
        return f"FolderSource({os.fspath(self._root)}: {len(self)} images, {len(self.class_names)} classes)"
