"""TFDS builder of rendered fungal growth-stage images: the training and test images of FungalZSL.

FungalZSL (Rani, Arroyo, Durdevic 2025, "FungalZSL: Zero-Shot Fungal Classification with Image
Captioning Using a Synthetic Data Approach", https://arxiv.org/abs/2502.19038) fine-tunes CLIP on
synthetic images of three growth stages (spore, hyphae, mycelium), 4,800 / 600 / 600 images for
train / val / test, each paired with an LLM-written description. This builder renders such
images with :mod:`fungizsl.data.synthetic` and writes them as ``array_record`` shards for the
Grain pipeline.

Every image is a pure function of ``(stage, index, seed, render config)``; the splits use
disjoint index ranges per stage (train ``[0, n_train)``, val after it, test after that), so the
three splits never share an image and any record can be re-rendered from its ``index``.

Every record carries its ``scene``: what the renderer drew (spore count and shape, germ tubes,
branching depth, colonies, coverage, background, magnification, focus, debris, ...) as the JSON of
a :class:`~fungizsl.data.scene_params.SceneParams`. The input pipeline writes per-image captions
from it (caption source ``scene``), a fresh phrasing every epoch, without a rebuild.

Captions are *not* copied into the shards by default: the input pipeline samples a caption per
example from a caption source (:func:`fungizsl.data.captions.get_caption_source`), so a run can
swap caption sources or draw a fresh caption every epoch without a rebuild. A config with
``caption_source`` set adds a ``caption`` feature holding one caption per image, drawn
deterministically, for experiments that want fixed image-text pairs (with ``scene``: a caption of
the image itself; with other sources: a caption of its class).

Record schema (every config)::

    image       uint8 [S, S, 3]   (stored as PNG or JPEG bytes, decoded on read)
    label       int64 ClassLabel over config.stages
    class_name  bytes             the stage name, e.g. b"hyphae"
    index       int64             render index of the image within its stage
    scene       bytes             SceneParams JSON of the image (since 1.1.0)
    caption     bytes             only when config.caption_source is set

Build with ``fungizsl build fungal_growth_stages --config realistic_224 --data-dir DIR``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import zlib

import numpy as np
import tensorflow_datasets as tfds

from fungizsl.data import synthetic
from fungizsl.data.builders._common import BuilderBase, encode_image
from fungizsl.data.captions import get_caption_source

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(eq=False)
class GrowthStagesConfig(tfds.core.BuilderConfig):
    """What to render and how much: sizes are images *per class* and split."""

    image_size: int = 224
    preset: str = "realistic"
    hyphae_mycelium_overlap: float = 0.3
    field_fraction: float = 0.0  # domain randomisation of scale (synthetic.RenderConfig)
    magnification: tuple[float, float] = synthetic.MAGNIFICATION  # per-image range (synthetic.RenderConfig)
    white_background: bool = False  # flat colour on white among the realistic backgrounds
    stages: tuple[str, ...] = synthetic.STAGES
    train_per_class: int = 1600  # the paper: 4,800 / 600 / 600 over three classes
    val_per_class: int = 200
    test_per_class: int = 200
    seed: int = 0
    encoding: str = "jpeg"  # "png" (lossless; right for the flat paper look) or "jpeg"
    jpeg_quality: int = 95
    caption_source: str | None = None  # a name for get_caption_source; None: no caption feature
    caption_kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.stages = tuple(self.stages)
        self.render_config()  # validates size, preset, overlap and stage names
        for name in ("train_per_class", "val_per_class", "test_per_class", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.encoding not in ("png", "jpeg"):
            raise ValueError(f"encoding must be 'png' or 'jpeg', got {self.encoding!r}")

    def render_config(self) -> synthetic.RenderConfig:
        return synthetic.RenderConfig(image_size=self.image_size, preset=self.preset,
                                      hyphae_mycelium_overlap=self.hyphae_mycelium_overlap, stages=self.stages,
                                      field_fraction=self.field_fraction, white_background=self.white_background,
                                      magnification=tuple(self.magnification))

    def per_class(self, split: str) -> int:
        return getattr(self, f"{split}_per_class")

    def first_index(self, split: str) -> int:
        """Render index of the first image of `split` (splits take consecutive index ranges)."""
        return sum(self.per_class(s) for s in SPLITS[: SPLITS.index(split)])


def _config(name: str, description: str, **kw) -> GrowthStagesConfig:
    return GrowthStagesConfig(name=name, description=description, **kw)


BUILDER_CONFIGS = [
    _config("realistic_224", "Realistic preset (colour independent of stage), 224 px, 1600/200/200 per class.",
            image_size=224, preset="realistic"),
    _config("paper_224", "The FungalZSL authors' generator (ten growth centres on white, colour by stage), 224 px, PNG.",
            image_size=224, preset="paper", encoding="png"),
    _config("realistic_336", "Realistic preset at 336 px for ViT-L/14@336.", image_size=336, preset="realistic"),
    _config("paper_336", "The FungalZSL authors' generator at 336 px for ViT-L/14@336, PNG.", image_size=336,
            preset="paper", encoding="png"),
    _config("realistic_224_randomised", "Realistic preset with scale and style randomised (synthetic.RANDOMISED, "
            "the main job's renders): magnification 0.3-3.2, 30 % of network images fields of 4-12 small "
            "colonies, flat colour on white among the backgrounds.", image_size=224, preset="realistic",
            **synthetic.RANDOMISED),
    _config("realistic_224_hard", "Realistic preset, hyphae and mycelium drawn from one distribution.",
            image_size=224, preset="realistic", hyphae_mycelium_overlap=1.0),
    _config("realistic_224_five_stages", "Realistic preset with the two extra stages (five classes).",
            image_size=224, preset="realistic", stages=synthetic.ALL_STAGES),
    _config("tiny", "32 px, 4/2/2 images per class, PNG: for tests.", image_size=32, preset="realistic",
            train_per_class=4, val_per_class=2, test_per_class=2, encoding="png"),
]


def _render_one(job: tuple[str, int], seed: int, render_config: synthetic.RenderConfig, encoding: str,
                quality: int) -> tuple[bytes, str]:
    stage, index = job
    image, scene = synthetic.render_scene(stage, index, seed, render_config)
    return encode_image(image, encoding, quality), scene.to_json()


class FungalGrowthStages(BuilderBase):
    """Synthetic spore / hyphae / mycelium images (FungalZSL), one config per size and look.

    ``workers`` > 0 renders in that many spawned processes (output is identical to ``workers=0``);
    a script that builds with workers must keep its top-level code under
    ``if __name__ == "__main__"``, since spawned workers re-import the main module.
    """

    VERSION = tfds.core.Version("1.4.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "Each record carries its scene parameters ('scene').",
                     "1.2.0": "paper_224 / paper_336 render the FungalZSL authors' generator (ten small growth "
                              "centres per field); the earlier single-colony look is the 'colony' preset.",
                     "1.3.0": "realistic_224_randomised (fields of small colonies, flat colour on white); each "
                              "record's scene gains 'layout'.",
                     "1.4.0": "realistic_224_randomised also draws magnification from 0.3-3.2 (was 0.6-1.7); "
                              "the magnification range is a config field (--magnification)."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_BUILDER_CONFIG_NAME = "realistic_224"

    def __init__(self, *, workers: int = 0, **kwargs):
        self.workers = int(workers)
        super().__init__(**kwargs)
        self._original_state = dict(self._original_state, workers=self.workers)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        features = {
            "image": tfds.features.Image(shape=(cfg.image_size, cfg.image_size, 3), encoding_format=cfg.encoding),
            "label": tfds.features.ClassLabel(names=list(cfg.stages)),
            "class_name": tfds.features.Text(),
            "index": tfds.features.Scalar(np.int64, doc="render index of the image within its stage"),
            "scene": tfds.features.Text(doc="SceneParams JSON: what the image shows"),
        }
        if cfg.caption_source:
            features["caption"] = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage="https://arxiv.org/abs/2502.19038",
            citation=CITATION,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is rendered
        return {split: self._generate_examples(split) for split in SPLITS if self.builder_config.per_class(split)}

    def _captions(self, split: str):
        """class -> texts of the configured caption source, or the source itself when it is per image."""
        cfg = self.builder_config
        if not cfg.caption_source:
            return None
        if cfg.caption_source == "scene":
            return get_caption_source("scene", classes=list(cfg.stages), **cfg.caption_kwargs)
        kwargs = dict(cfg.caption_kwargs)
        if cfg.caption_source == "fungalzsl_split" and "split" not in kwargs:
            kwargs["split"] = split  # train images get train captions, test images test captions
        by_class = get_caption_source(cfg.caption_source, **kwargs).by_class()
        missing = [s for s in cfg.stages if not by_class.get(s)]
        if missing:
            raise ValueError(f"caption source {cfg.caption_source!r} has no captions for {', '.join(missing)} "
                             f"(it has {', '.join(by_class) or 'none'})")
        return by_class

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        captions = self._captions(split)
        start = cfg.first_index(split)
        jobs = [(stage, start + i) for i in range(cfg.per_class(split)) for stage in cfg.stages]
        render = functools.partial(_render_one, seed=cfg.seed, render_config=cfg.render_config(),
                                   encoding=cfg.encoding, quality=cfg.jpeg_quality)
        if self.workers > 0:
            with multiprocessing.get_context("spawn").Pool(self.workers) as pool:
                yield from self._examples(jobs, pool.imap(render, jobs, chunksize=16), captions, split)
        else:
            yield from self._examples(jobs, map(render, jobs), captions, split)

    def _examples(self, jobs, images, captions, split):
        cfg = self.builder_config
        for (stage, index), (image, scene) in zip(jobs, images):
            example = {"image": image, "label": cfg.stages.index(stage), "class_name": stage, "index": index,
                       "scene": scene}
            if captions is not None:
                rng = np.random.default_rng([cfg.seed, zlib.crc32(split.encode()), zlib.crc32(stage.encode()), index])
                if getattr(captions, "per_image", False):
                    example["caption"] = captions.caption(scene, rng)
                else:
                    texts = captions[stage]
                    example["caption"] = texts[int(rng.integers(len(texts)))]
            yield f"{stage}/{index}", example


CITATION = """@article{rani2025fungalzsl,
  title   = {FungalZSL: Zero-Shot Fungal Classification with Image Captioning Using a Synthetic Data Approach},
  author  = {Rani, Anju and Arroyo, Daniel O. and Durdevic, Petar},
  journal = {arXiv preprint arXiv:2502.19038},
  year    = {2025}
}"""
