"""TFDS builder of class-folder image sets (``root/<class>/<file>``) with leak-free, grouped splits.

Made for DeFungi (Sopo, Hajati, Gheisari 2021, "DeFungi: Direct Mycological Examination of
Microscopic Fungi Images", https://arxiv.org/abs/2109.07322; CC BY 4.0): microscopy patches in
five class folders, where all patches cut from one source slide share the name stem
``H<k>_<source>`` (``H2_102a_1.jpg``, ``H2_102b_3.jpg``, ...). Splitting such a set by file puts
patches of one slide into both train and test, which inflates test accuracy; this builder splits
by *group* instead: a regex on the file name picks the group (DeFungi: ``^(H\\d+_\\d+)``) and
every file of a group lands in the same split. It works for any class-folder set (the
``by_file`` config makes every file its own group).

Splits are deterministic functions of (file names, fractions, seed):

* ``split_method="shuffle"`` (default): per class (a group's class is the class of most of its
  files), the groups are shuffled with a seeded generator and cut where the running image count
  crosses the fractions, so the split sizes follow the fractions closely;
* ``split_method="hash"``: a group goes to the split its SHA-256 (with the seed) falls in; a
  group's split never changes when files or groups are added, at the price of noisier sizes.

Images are stored as found when they decode and are RGB JPEG or PNG, otherwise converted to RGB
PNG; files that do not decode are skipped and named in a warning, and the list is stored in the
dataset's ``metadata.json`` under ``"skipped"``, next to the root it was built from. A config
name stands for one root: give each other folder its own config name (``--name``) or data_dir,
or TFDS will reuse the earlier build. Unlike ``tfds.ImageFolder`` (which reads files in place,
one split per folder), this writes array_record shards for Grain.

Record schema::

    image       uint8 [H, W, 3]
    label       int64 ClassLabel over the class folder names (sorted, or config.class_names)
    class_name  bytes  the class folder name
    filename    bytes  path relative to the root, e.g. b"BASH/H2_102a_1.jpg"
    group       bytes  the file's split group, e.g. b"H2_102"
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import re
import zlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from fungizsl.data.builders._common import BadImage, BuilderBase, SkipLog, read_image_file, set_metadata

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DEFUNGI_GROUP_REGEX = r"^(H\d+_\d+)"
DEFAULT_FRACTIONS = (("train", 0.7), ("val", 0.15), ("test", 0.15))
SPLIT_METHODS = ("shuffle", "hash")


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """How files are grouped and split.

    ``group_regex`` is searched in the file name (not the path); its first capture group (or the
    whole match) is the group. ``None``: every file is its own group. A file the regex does not
    match is its own group (with a warning).
    """

    group_regex: str | None = DEFUNGI_GROUP_REGEX
    fractions: tuple[tuple[str, float], ...] = DEFAULT_FRACTIONS
    split_method: str = "shuffle"
    seed: int = 0
    class_names: tuple[str, ...] | None = None  # None: every sub-folder that holds images, sorted
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    def __post_init__(self):
        self.fractions = tuple((str(name), float(frac)) for name, frac in self.fractions)
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
        self.extensions = tuple(e.lower() for e in self.extensions)
        names = [name for name, _ in self.fractions]
        if not names or len(set(names)) != len(names) or not all(re.fullmatch(r"[\w-]+", n) for n in names):
            raise ValueError(f"fractions need distinct split names of letters, digits, _ or -: {self.fractions}")
        if any(frac < 0 for _, frac in self.fractions) or sum(frac for _, frac in self.fractions) <= 0:
            raise ValueError(f"fractions must be >= 0 with a positive sum: {self.fractions}")
        if self.split_method not in SPLIT_METHODS:
            raise ValueError(f"split_method must be one of {', '.join(SPLIT_METHODS)}, got {self.split_method!r}")
        if self.group_regex is not None:
            re.compile(self.group_regex)

    def group_of(self, file_name: str) -> str | None:
        """The group of one file name, or None when the regex does not match it."""
        if self.group_regex is None:
            return file_name
        match = re.search(self.group_regex, file_name)
        if not match:
            return None
        return match.group(1) if match.re.groups else match.group(0)


BUILDER_CONFIGS = [
    ImageFolderConfig(name="defungi", description="Groups by source slide H<k>_<source>; 70/15/15 per class."),
    ImageFolderConfig(name="by_file", description="Every file its own group; 70/15/15 per class.", group_regex=None),
]


@dataclasses.dataclass(frozen=True)
class Item:
    path: str  # relative to the root, '/'-separated
    label: int
    group: str


def walk_files(folder: epath.Path):
    """Every file under folder (recursively, hidden entries skipped), in sorted order."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from walk_files(entry)
        elif entry.is_file():
            yield entry


def list_classes(root: epath.Path, extensions: tuple[str, ...]) -> list[str]:
    """Sub-folders of root that hold at least one image file, sorted."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist")
    classes = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(f.suffix.lower() in extensions for f in walk_files(folder)):
            classes.append(folder.name)
    if not classes:
        raise FileNotFoundError(f"no class folders with images ({', '.join(extensions)}) under {root}")
    return classes


def list_items(root: epath.Path, config: ImageFolderConfig, classes: list[str]) -> list[Item]:
    """Every image file of every class, with its group; sorted by path."""
    items, unmatched = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {folder} does not exist")
        for f in walk_files(folder):
            if f.suffix.lower() not in config.extensions:
                continue
            rel = f"{name}/{f.relative_to(folder).as_posix()}"
            group = config.group_of(f.name)
            if group is None:
                unmatched.append(rel)
                group = f"{name}/{f.stem}"
            items.append(Item(rel, label, group))
    if unmatched:
        logger.warning("%d file(s) do not match group_regex %r and form groups of their own, e.g. %s",
                       len(unmatched), config.group_regex, ", ".join(unmatched[:5]))
    return items


def _hash_unit(seed: int, group: str) -> float:
    digest = hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def assign_splits(items: list[Item], config: ImageFolderConfig, classes: list[str]) -> dict[str, list[Item]]:
    """split name -> items; every group lands in exactly one split."""
    names = [name for name, _ in config.fractions]
    fracs = np.array([frac for _, frac in config.fractions], dtype=np.float64)
    bounds = np.cumsum(fracs / fracs.sum())
    bounds[-1] = 1.0 + 1e-9

    by_group: dict[str, list[Item]] = collections.defaultdict(list)
    for item in items:
        by_group[item.group].append(item)

    split_of: dict[str, str] = {}
    if config.split_method == "hash":
        for group in by_group:
            split_of[group] = names[int(np.searchsorted(bounds, _hash_unit(config.seed, group), side="right"))]
    else:
        by_class: dict[int, list[str]] = collections.defaultdict(list)
        for group, members in sorted(by_group.items()):
            counts = collections.Counter(m.label for m in members)
            by_class[min(counts, key=lambda c: (-counts[c], c))].append(group)
        for label, groups in sorted(by_class.items()):
            rng = np.random.default_rng([config.seed, zlib.crc32(classes[label].encode())])
            order = [groups[i] for i in rng.permutation(len(groups))]
            total = sum(len(by_group[g]) for g in order)
            done = 0
            for group in order:
                size = len(by_group[group])
                position = (done + size / 2) / total  # where the group's middle falls
                split_of[group] = names[int(np.searchsorted(bounds, position, side="right"))]
                done += size
    splits: dict[str, list[Item]] = {name: [] for name in names}
    for group, members in by_group.items():
        splits[split_of[group]].extend(members)
    return {name: sorted(members, key=lambda m: m.path) for name, members in splits.items()}


class ImageFolder(BuilderBase):
    """Class-folder image sets with group-aware splits; ``manual_dir`` is the root of class folders."""

    name = "image_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_BUILDER_CONFIG_NAME = "defungi"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Pass the root folder of the class folders (root/<class>/<image>) as manual_dir, e.g. the
    unpacked DeFungi folder with BASH/, BBH/, GMA/, SHC/ and TSH/.
    """

    def _class_names(self) -> list[str] | None:
        cfg = self.builder_config
        if cfg.class_names is not None:
            return list(cfg.class_names)
        if self.manual_dir is not None and self.manual_dir.is_dir():
            return list_classes(self.manual_dir, cfg.extensions)
        return None  # names come from the prepared dataset, or are set when it is generated

    def _info(self) -> tfds.core.DatasetInfo:
        names = self._class_names()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=names) if names else tfds.features.ClassLabel(),
                "class_name": tfds.features.Text(),
                "filename": tfds.features.Text(),
                "group": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            citation=CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root = epath.Path(dl_manager.manual_dir)
        classes = list(cfg.class_names) if cfg.class_names is not None else list_classes(root, cfg.extensions)
        label_feature = self.info.features["label"]
        if label_feature.num_classes is None:
            label_feature.names = classes
        elif label_feature.names != classes:
            raise ValueError(f"class folders {classes} differ from the label names {label_feature.names}")
        items = list_items(root, cfg, classes)
        splits = assign_splits(items, cfg, classes)
        summary = {name: {"files": len(members), "groups": len({m.group for m in members})}
                   for name, members in splits.items()}
        logger.info("%s/%s: %s", self.name, cfg.name,
                    "; ".join(f"{n}: {s['files']} files in {s['groups']} groups" for n, s in summary.items()))
        set_metadata(self.info, "root", str(root))
        set_metadata(self.info, "splits", summary)
        set_metadata(self.info, "skipped", {})
        empty = [name for name, members in splits.items() if not members]
        for name in empty:
            logger.warning("%s/%s: split %r gets no files (too few groups for its fraction); it is left out",
                           self.name, cfg.name, name)
        return {name: self._generate_examples(name, root, members, classes)
                for name, members in splits.items() if members}

    def _generate_examples(self, split: str, root: epath.Path, items: list[Item], classes: list[str]):
        log = SkipLog(f"{self.name}/{self.builder_config.name}", split)
        for item in items:
            try:
                image, _ = read_image_file(root / item.path, reencode="png")
            except BadImage as err:
                log.skip(item.path, str(err))
                continue
            log.written += 1
            yield item.path, {"image": image, "label": item.label, "class_name": classes[item.label],
                              "filename": item.path, "group": item.group}
        log.log_summary()
        skipped = dict(self.info.metadata.get("skipped", {}))
        skipped[split] = log.as_json()
        set_metadata(self.info, "skipped", skipped)


CITATION = """@article{sopo2021defungi,
  title   = {{DeFungi}: Direct Mycological Examination of Microscopic Fungi Images},
  author  = {Sopo, Camilo Javier Pineda and Hajati, Farshid and Gheisari, Soheila},
  journal = {arXiv preprint arXiv:2109.07322},
  year    = {2021}
}"""
