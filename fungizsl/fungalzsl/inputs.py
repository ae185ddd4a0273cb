"""The inputs of a FungalZSL run: its images, captions and iterators, as the config names them.

:class:`FungalZSLData` is what the trainer (:mod:`fungizsl.fungalzsl.trainer`) reads from.

Images come from the growth-stage renderer (`data.kind="rendered"`: rendered on access, or once
into memory with `data.cache_in_memory`), from prepared TFDS shards (`"tfds"`: any builder in
`fungizsl.data.builders`, e.g. `fungal_growth_stages` or `image_folder` for DeFungi), or from class
folders kept as they are (`"folders"`: `<data.folders>/{train,val,test}/<class>/<image>`, the
classes named by the train split's folders). The three
splits never share an image: rendered splits use different seeds.

Captions come from a named source (`fungizsl.data.captions`). For the paper's per-split captions
(`fungalzsl_split`) each split draws from its own split's texts (training from train, the val
evaluation from val, the final test from test); other sources (generated captions, templates, a
user JSONL) have one pool, used for every split. The `scene` source is per image: each rendered
record carries its scene, and every image gets a caption of itself
(`fungizsl.data.scene_pipeline`); its zero-shot prompts are `scene_heldout`, written with phrasings
kept out of training.

Robustness splits (`test_paper`, `test_gray`, `test_zoom_out`, `test_zoom_in`, `test_size64`, ...;
`fungizsl.data.robustness`) are the test scenes rendered again under a shifted condition, for
evaluation only, whatever `data.kind` is; `data.robustness_per_class` images per class. The
`test_unseen*` splits come from the independent, evaluation-only generator instead.

Seeds: `config.data_seed` fixes the data set itself (the rendered images of every split, and the
caption drawn for each training position and each val/test image), so the test set never moves
when the training seed does. `config.seed` drives training: initialisation, dropout, and the
training stream's shuffle order and augmentation.
"""

import os
import sys

from tqdm import tqdm

from fungizsl.data import builders, image_sets, pipeline, robustness, scene_pipeline, synthetic
from fungizsl.data import captions as caption_lib
from fungizsl.data.caption_text import Caption
from fungizsl.errors import ConfigError

SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}
VAL_PREFIX = "val_"


def validation_condition(split: str) -> str | None:
    """The condition of a shifted *validation* split ``val_<condition>`` (e.g. ``val_paper``), or None.

    It renders the val split's scenes under a robustness condition of the training renderer or the
    authors' generator (:mod:`fungizsl.data.robustness`), with the val seed: a shifted split to
    choose on, so that the ``test_<condition>`` numbers are looked at once. The independent
    generator (``unseen``) has no validation split: it is never used for a decision.
    """
    if not split.startswith(VAL_PREFIX):
        return None
    condition = robustness.check_condition(split[len(VAL_PREFIX):])
    if robustness.is_unseen(condition):
        raise ValueError(f"split {split!r}: the unseen generator is for evaluation only, it has no validation split")
    return condition


def check_data(config) -> None:
    """What can be checked of the data before anything is rendered or written: the class folders of
    `data.kind="folders"` (one-line :class:`ConfigError` naming the folder)."""
    d = config.data
    if d.kind == "folders":
        if not d.get("folders", ""):
            raise ConfigError("config.data.kind='folders' needs config.data.folders=DIR "
                              "(DIR/train/<class>/<image>, DIR/val/..., DIR/test/...)")
        image_sets.FolderSource(os.path.join(d.folders, "train"), what="config.data.folders (train split)")


class FungalZSLData:
    def __init__(self, config):
        self.config = config
        self.data = config.data
        self.data_seed = config.get("data_seed", 0)
        self._sources = {}
        self._captions = {}
        self.class_names = self._class_names()
        self.train_captions = self.captions(self.data.captions, split="train")

    # -- images ---------------------------------------------------------------------------------

    def _class_names(self):
        if self.data.kind == "rendered":
            return tuple(self.data.stages)
        if self.data.kind in ("tfds", "folders"):
            return self._source_class_names(self.source("train"))
        raise ValueError(f"config.data.kind must be 'rendered', 'tfds' or 'folders', got {self.data.kind!r}")

    def source(self, split: str):
        if split not in self._sources:
            self._sources[split] = self._make_source(split)
        return self._sources[split]

    def _make_source(self, split: str):
        source = self._open_source(split)
        if not self.data.get("cache_in_memory", False):
            return source
        # Decoded once, kept in memory: the local job's wall-time split showed the input pipeline
        # (array_record reads and image decoding, repeated every epoch) at 16 % of its wall time.
        keys = ("image", "label", "scene")
        records = [{k: r[k] for k in keys if k in r}
                   for r in tqdm((source[i] for i in range(len(source))), total=len(source),
                                 desc=f"load {split} images", leave=False,
                                 disable=not sys.stderr.isatty())]
        return pipeline.InMemorySource(records, class_names=self._source_class_names(source))

    def _open_source(self, split: str):
        d = self.data
        shifted = validation_condition(split)
        if robustness.is_robustness_split(split) or shifted:  # rendered for evaluation, whatever data.kind is
            condition, seed_of = (shifted, "val") if shifted else (robustness.condition_of(split), "test")
            # a zoom shift draws every image at its magnification: no fields of small colonies
            fields = {} if condition not in ("zoom_out", "zoom_in") else {"field_fraction": 0.0}
            base = synthetic.RenderConfig(image_size=d.image_size, preset="realistic",
                                          hyphae_mycelium_overlap=d.overlap, stages=tuple(self.class_names), **fields)
            return robustness.ShiftedSource(condition, self.class_names, d.get("robustness_per_class", 100),
                                            seed=self.data_seed + SPLIT_SEED_OFFSET[seed_of], base=base)
        if d.kind == "folders":  # <data.folders>/<split>/<class>/<image>; the train split names the classes
            check_data(self.config)
            return image_sets.FolderSource(os.path.join(d.folders, split),
                                           class_names=None if split == "train" else self.class_names,
                                           what=f"config.data.folders ({split} split)")
        if d.kind == "tfds":
            if not d.tfds_dir or not d.tfds_config:
                raise ValueError("config.data.kind='tfds' needs config.data.tfds_dir and config.data.tfds_config")
            return builders.data_source(d.get("tfds_builder", "fungal_growth_stages"), split,
                                        config=d.tfds_config, data_dir=d.tfds_dir)
        randomised = synthetic.RANDOMISED if d.get("randomised", False) and d.preset == "realistic" else {}
        render = synthetic.RenderConfig(image_size=d.image_size, preset=d.preset,
                                        hyphae_mycelium_overlap=d.overlap, stages=tuple(d.stages), **randomised)
        return pipeline.RenderedSource(tuple(d.stages), d.per_class[split],
                                       seed=self.data_seed + SPLIT_SEED_OFFSET[split], render_config=render)

    @staticmethod
    def _source_class_names(source):
        names = getattr(source, "class_names", None)
        if names is None and hasattr(source, "dataset_info"):
            names = source.dataset_info.features["label"].names
        return None if names is None else tuple(names)

    # -- captions -------------------------------------------------------------------------------

    def captions(self, name: str, split: str) -> dict:
        """class name -> texts of caption source `name` (for `fungalzsl_split`: of `split`; a
        robustness split `test_<condition>` uses the test split's)."""
        split = "test" if robustness.is_robustness_split(split) else "val" if validation_condition(split) else split
        if (name, split) not in self._captions:
            self._captions[name, split] = self._read_captions(name, split)
        return self._captions[name, split]

    def _read_captions(self, name: str, split: str) -> dict:
        d = self.data
        if name in ("fungalzsl_split", "fungalzsl_generated"):
            what = ("folder with train_data.json, val_data.json and test_data.json" if name == "fungalzsl_split"
                    else "generated_captions.json or the folder holding it")
            if not d.captions_dir or not os.path.exists(d.captions_dir):
                raise ConfigError(f"caption source {name!r} needs the FungalZSL caption files: set "
                                  f"--config.data.captions_dir=PATH ({what}); "
                                  + (f"{d.captions_dir!r} does not exist" if d.captions_dir else "it is empty")
                                  + ", or use --config.data.captions=scene (the default, no files needed)")
        if name == "fungalzsl_split":
            source = caption_lib.get_caption_source(name, root=d.captions_dir, split=split,
                                                    strip_prompt=d.strip_prompt)
        elif name == "fungalzsl_generated":
            source = caption_lib.get_caption_source(name, path=d.captions_dir, strip_prompt=d.strip_prompt)
        elif name == "class_descriptions":  # written into the config itself
            given = dict(d.get("class_descriptions") or {})
            source = caption_lib.ListSource([Caption(c, t, name) for c, texts in given.items()
                                             for t in texts], name=name)
        elif name in ("templates", "scene", "scene_heldout"):
            source = caption_lib.get_caption_source(name, classes=list(self.class_names))
        elif name.endswith(".jsonl") or os.path.isfile(name):
            source = caption_lib.get_caption_source("jsonl", path=name)
        else:
            raise ValueError(f"config.data.captions={name!r}: use scene, fungalzsl_split, fungalzsl_generated, "
                             f"templates, class_descriptions or the path of a JSONL file")
        by_class = source.by_class()
        missing = [c for c in self.class_names if not by_class.get(c)]
        if missing:
            raise ValueError(f"caption source {name!r} has no captions for class(es) {missing}")
        return {c: list(by_class[c]) for c in self.class_names}

    @staticmethod
    def source_label(name: str) -> str:
        return os.path.splitext(os.path.basename(name))[0]

    @property
    def per_image_captions(self) -> bool:
        """Whether every image gets a caption of its own scene (caption source `scene`)."""
        return self.data.captions == "scene"

    def tokenizer_corpus(self) -> list[str]:
        """Texts a from-scratch BPE is trained on: the training captions and the class names."""
        if self.per_image_captions:
            texts = scene_pipeline.sample_captions(self.source("train"), seed=self.data_seed)
        else:
            texts = [t for c in self.class_names for t in self.train_captions[c]]
        return texts + [c.replace("_", " ") for c in self.class_names]

    def _caption_args(self, split: str, tokenizer) -> dict:
        if self.per_image_captions:
            return {"record_captions": scene_pipeline.SceneCaptions(tokenizer, source_name=f"{split} split")}
        return {"captions_by_class": self.captions(self.data.captions, split), "class_names": self.class_names,
                "tokenizer": tokenizer}

    # -- iterators ------------------------------------------------------------------------------

    def train_iterator(self, tokenizer):
        return pipeline.make_train_iterator(
            self.source("train"), global_batch_size=self.config.batch_size, seed=self.config.seed,
            caption_seed=self.data_seed, image_size=self.data.image_size, augment=self.data.augment,
            worker_count=self.data.worker_count, **self._caption_args("train", tokenizer))

    def eval_iterator(self, split: str, batch_size: int, tokenizer):
        return pipeline.make_eval_iterator(
            self.source(split), global_batch_size=batch_size, image_size=self.data.image_size,
            seed=self.data_seed, **self._caption_args(split, tokenizer))

